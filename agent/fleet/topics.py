"""The fleet topics under a root (``fleet.topic``, default ``fleet``).

Groups and agents get their own levels so a group may share a name with an agent.
"""

from __future__ import annotations


def group_desired(root: str, group: str) -> str:
    return f"{root}/group/{group}/desired"


def agent_desired(root: str, agent: str) -> str:
    return f"{root}/agent/{agent}/desired"


def reported(root: str, agent: str) -> str:
    return f"{root}/agent/{agent}/reported"


def blob(root: str, sha256: str, index: int) -> str:
    return f"{root}/blob/{sha256}/{index}"


def blob_filter(root: str, sha256: str) -> str:
    return f"{root}/blob/{sha256}/+"


def parse_blob(root: str, topic: str) -> tuple[str, int] | None:
    """(sha256, index) of a chunk topic, or None."""
    parts = topic[len(root) + 1 :].split("/") if topic.startswith(root + "/") else []
    if len(parts) == 3 and parts[0] == "blob" and parts[2].isdigit():
        return parts[1], int(parts[2])
    return None

"""The figures the README claims, read from its tables so tests check what users are told."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_FIGURE = re.compile(r"([A-Za-z][\w-]*) (\d+\.\d+(?: / \d+\.\d+)*)")


class Claim:
    """A printed figure: its value and the half unit in its last printed place (the rounding
    a measured value must fall within to print as the same figure)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.value = float(text)
        self.tolerance = 0.5 * 10 ** -len(text.partition(".")[2])

    def holds(self, measured: float) -> bool:
        return abs(measured - self.value) <= self.tolerance + 1e-12

    def __repr__(self) -> str:
        return f"{self.text} (+-{self.tolerance:g})"


def table_result(section: str, command: str) -> dict[str, Claim | list[Claim]]:
    """The result cell of the row whose command cell is ``command`` in the table under the
    README heading ``## {section}``, as ``{"F1": Claim, "changepoint": [Claim, ...], ...}``."""
    text = README.read_text().split(f"\n## {section}", 1)[-1].split("\n## ", 1)[0]
    cell = f"| `{command}` |"
    rows = [line for line in text.splitlines() if cell in line]
    if len(rows) != 1:
        raise LookupError(f"README.md ## {section}: {len(rows)} rows measured by `{command}`")
    result = rows[0].split(cell, 1)[1].rstrip(" |")
    out: dict[str, Claim | list[Claim]] = {}
    for name, figures in _FIGURE.findall(result):
        claims = [Claim(f) for f in figures.split(" / ")]
        out[name] = claims if len(claims) > 1 else claims[0]
    return out

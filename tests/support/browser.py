"""The browser tests' use of :mod:`agent.testing.browser`: skip locally without Chromium,
fail in CI (``CI`` set), where the README's test command installs it; screenshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.testing.browser import chromium, missing

__all__ = ["chromium", "require", "save_screenshot"]


def require() -> None:
    """Skip (or, in CI, fail) when Chromium, chromedriver or Selenium is missing."""
    reason = missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"browser tests need {reason}")
    pytest.skip(reason)


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Save a PNG of the page in ``tmp_path``; also in ``$CONSOLE_SCREENSHOTS`` when set (how
    the docs' pictures are made: ``CONSOLE_SCREENSHOTS=docs/images pytest ...``)."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), f"screenshot {name} failed"
    out = os.environ.get("CONSOLE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)
    return path

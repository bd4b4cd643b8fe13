"""Screenshots of the browser tier, listed at the end of the run (conftest's terminal summary)."""

from __future__ import annotations

from pathlib import Path

import pytest

SCREENSHOTS = pytest.StashKey[list[Path]]()


def screenshot(page, request: pytest.FixtureRequest, path: Path) -> Path:
    """Save what the participant's screen shows now."""
    page.screenshot(path=str(path))
    request.config.stash.setdefault(SCREENSHOTS, []).append(path)
    return path

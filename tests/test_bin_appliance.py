"""bin/appliance runs this checkout's package, whatever folder it is started from: an
`appliance/` folder in the current directory (where `python -m appliance` would look first)
never runs, not even with an inherited PYTHONPATH that names the current folder."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

TOOL_VENV = REPO_ROOT / ".venv" / ".appliance-tools"


@pytest.mark.skipif(not TOOL_VENV.exists(), reason="the tool venv is not installed (bin/install-test-deps)")
@pytest.mark.parametrize("pythonpath", [None, "", ":", "."])
def test_a_package_in_the_current_folder_never_runs(tmp_path, pythonpath):
    shadow = tmp_path / "appliance"
    shadow.mkdir()
    ran = tmp_path / "shadow-ran"
    for name in ("__init__.py", "__main__.py", "cli.py"):
        (shadow / name).write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run([str(REPO_ROOT / "bin" / "appliance"), "thumbdrive", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: appliance thumbdrive")
    assert not ran.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["appliance"]  # nothing written here
    assert sorted(p.name for p in shadow.iterdir()) == ["__init__.py", "__main__.py", "cli.py"]

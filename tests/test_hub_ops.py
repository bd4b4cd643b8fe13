"""The organizer's day-of commands (`appliance hub status|restart|collect`) before they touch a
server: bad input is one line, exit 2; the server-side collector packs what participants wrote
and nothing else. Against a real hub they run in the hub tier (tests/vm/test_hub.py)."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

from appliance.hub.ops import format_status
from appliance.hub.server_ops import collect


def _workshop(workdir: Path) -> Path:
    (workdir / "people.csv").write_text("alice\nbob\n")
    config = workdir / "w.yml"
    config.write_text('name: opstest\nversion: "1"\nhub:\n  roster: people.csv\n  url: https://hub.example.org/\n')
    (workdir / "inventory").write_text("hub ansible_host=192.0.2.1\n")
    return config


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(["status", "--inventory", "nowhere"], "--inventory nowhere: no such file", id="status-no-inventory"),
    pytest.param(["restart", "Alice Smith", "--inventory", "inventory"], "is not a safe user name", id="restart-bad-name"),
    pytest.param(["restart", "root", "--inventory", "inventory"], "system account name", id="restart-system"),
    pytest.param(["collect", "--inventory", "inventory", "--out", "kept.tar.gz"], "exists; name a new file",
                 id="collect-exists"),
    pytest.param(["collect", "--inventory", "inventory", "--out", "x.zip"], "name a .tar.gz file", id="collect-zip"),
])
def test_day_of_commands_refuse_bad_input(appliance_cli, workdir: Path, args: list[str], expected: str) -> None:
    config = _workshop(workdir)
    (workdir / "kept.tar.gz").write_bytes(b"an earlier collection")
    result = appliance_cli("hub", *args, "--config", str(config), cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (workdir / "kept.tar.gz").read_bytes() == b"an earlier collection"
    assert "ansible" not in result.stdout


def test_collect_packs_what_participants_wrote(tmp_path: Path) -> None:
    homes = tmp_path / "home"
    for user in ("alice", "bob"):
        notebooks = homes / user / "notebooks"
        (notebooks / ".ipynb_checkpoints").mkdir(parents=True)
        (notebooks / "00.ipynb").write_text(f'{{"by": "{user}"}}')
        (notebooks / ".ipynb_checkpoints" / "00-checkpoint.ipynb").write_text("{}")
        (notebooks / "sub" / "__pycache__").mkdir(parents=True)
        (notebooks / "sub" / "mine.py").write_text("x = 1\n")
        (notebooks / "sub" / "__pycache__" / "mine.cpython-313.pyc").write_bytes(b"\0")
    (homes / "alice" / "notebooks" / "secrets").symlink_to("/etc")  # a link could point anywhere
    (homes / "alice" / ".ssh").mkdir()
    (homes / "alice" / ".ssh" / "id_ed25519").write_text("not collected")
    out = tmp_path / "collected.tar.gz"
    said = collect(["alice", "bob", "carol"], homes, "notebooks", out)
    assert said.startswith("2 of 3 participants' notebooks/")  # carol never started
    with tarfile.open(out) as archive:
        names = sorted(archive.getnames())
        owners = {(m.uid, m.gid) for m in archive.getmembers()}
    assert names == ["alice/notebooks", "alice/notebooks/00.ipynb", "alice/notebooks/sub", "alice/notebooks/sub/mine.py",
                     "bob/notebooks", "bob/notebooks/00.ipynb", "bob/notebooks/sub", "bob/notebooks/sub/mine.py"]
    assert owners == {(0, 0)}
    assert out.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.partial"))


def test_status_table_names_each_server_and_the_hub() -> None:
    status = {"users": [
        {"name": "alice", "admin": True, "server": "ready", "memory_bytes": 150_000_000, "memory_max_bytes": 2**30,
         "last_activity": "2026-12-03T10:00:00Z"},
        {"name": "bob", "admin": False, "server": "stopped", "memory_bytes": None, "memory_max_bytes": None,
         "last_activity": None},
    ], "hub_memory_bytes": 90_000_000}
    text = format_status(status)
    lines = text.splitlines()
    assert lines[2].split() == ["alice", "admin", "ready", "150.0", "MB", "1.1", "GB", "2026-12-03T10:00:00Z"]
    assert lines[3].split() == ["bob", "stopped", "-", "-", "never"]
    assert lines[-1] == "1 of 2 servers running; the hub and its proxy use 90.0 MB"

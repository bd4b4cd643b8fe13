"""`appliance deploy --mode hub` before it touches a host: the play parses, and what is missing on
the controller is one line, exit 2 (the real deploy is the hub tier, tests/vm/test_hub.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_hub_play_syntax(repo_root: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
         "-e", json.dumps({"workshop_config": str(repo_root / "workshop.yml")}), "hub.yml"],
        cwd=repo_root / "provision", env=dict(os.environ, ANSIBLE_CONFIG=str(repo_root / "provision" / "ansible.cfg")),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _workshop(workdir: Path) -> Path:
    (workdir / "people.csv").write_text("alice\nbob\n")
    config = workdir / "w.yml"
    config.write_text('name: deptest\nversion: "1"\nhub:\n  roster: people.csv\n  url: https://hub.example.org/\n')
    (workdir / "inventory").write_text("hub ansible_host=192.0.2.1\n")
    return config


@pytest.mark.parametrize(("prepare", "args", "expected"), [
    pytest.param(None, ["--inventory", "nowhere"], "--inventory nowhere: no such file", id="no-inventory"),
    pytest.param(None, ["--inventory", "inventory"], "no hub passwords yet", id="no-slips"),
    pytest.param("slips+roster", ["--inventory", "inventory"], "the roster changed since the last", id="roster-changed"),
    pytest.param("slips", ["--inventory", "inventory"], "the hub's wheels or proxy are not in", id="no-hub-cache"),
    pytest.param(None, ["--inventory", "inventory", "--mode", "laptop"], "invalid choice: 'laptop'", id="mode"),
])
def test_deploy_refuses_before_touching_a_host(appliance_cli, workdir: Path, prepare: str | None, args: list[str],
                                               expected: str) -> None:
    config = _workshop(workdir)
    if prepare:
        assert appliance_cli("hub", "slips", "--config", "w.yml", cwd=workdir).returncode == 0
        if prepare == "slips+roster":
            (workdir / "people.csv").write_text("alice\nbob\ncarol\n")
    mode = [] if "--mode" in args else ["--mode", "hub"]
    result = appliance_cli("deploy", *mode, "--config", str(config), *args, cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "ansible:" not in result.stdout  # no play started

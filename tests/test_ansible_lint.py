"""ansible-lint (production profile) and a syntax check pass on provision/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing; install the tool venv with `pip install -e .[vm]` (bin/install-test-deps)")
    return found


def test_ansible_lint_passes(repo_root):
    result = subprocess.run(
        [tool("ansible-lint"), "--profile", "production", "--nocolor"],
        cwd=repo_root / "provision",
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_playbook_syntax(repo_root):
    result = subprocess.run(
        [tool("ansible-playbook"), "--syntax-check", "-i", "localhost,",
         "-e", json.dumps({"workshop_config": str(repo_root / "workshop.yml")}), "site.yml"],
        cwd=repo_root / "provision",
        env=dict(os.environ, ANSIBLE_CONFIG=str(repo_root / "provision" / "ansible.cfg")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

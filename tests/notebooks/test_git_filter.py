"""The nbstripout git filter: bin/setup-git-filters installs it, committed notebooks lose their
outputs, and a notebook whose metadata says "keep_output": true keeps them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def notebook_with_output(keep: bool) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('hello')", execution_count=3,
                                          outputs=[nbformat.v4.new_output("stream", text="hello\n")])]
    if keep:
        nb.metadata["keep_output"] = True
    return nb


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_committed_notebooks_are_stripped_unless_marked_keep_output(tmp_path):
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "test")
    shutil.copy(REPO_ROOT / ".gitattributes", tmp_path / ".gitattributes")
    subprocess.run([str(REPO_ROOT / "bin" / "setup-git-filters"), str(tmp_path)], check=True,
                   capture_output=True, text=True)
    assert "nbstripout" in git(tmp_path, "config", "--get", "filter.nbstripout.clean")

    nbformat.write(notebook_with_output(keep=False), tmp_path / "lesson.ipynb")
    nbformat.write(notebook_with_output(keep=True), tmp_path / "gallery.ipynb")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "notebooks")

    stripped = json.loads(git(tmp_path, "show", "HEAD:lesson.ipynb"))
    kept = json.loads(git(tmp_path, "show", "HEAD:gallery.ipynb"))
    assert stripped["cells"][0]["outputs"] == [] and stripped["cells"][0]["execution_count"] is None
    assert "".join(kept["cells"][0]["outputs"][0]["text"]) == "hello\n"
    # the working copy keeps its outputs: only what is committed is stripped
    assert nbformat.read(tmp_path / "lesson.ipynb", as_version=4).cells[0].outputs


def test_repository_notebooks_are_committed_without_outputs():
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if nb.metadata.get("keep_output"):
            continue
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
        tags = [cell.metadata.get("tags", []) for cell in nb.cells]
        assert any("parameters" in t for t in tags), f"{path.name} has no parameters cell"

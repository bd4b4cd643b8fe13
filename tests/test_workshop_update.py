"""workshop-update against an organizer's git repository served on loopback (git daemon): edits
survive, new notebooks arrive, conflicts keep the participant's copy with the new one beside it,
and a second run changes nothing. Runs appliance/update.py with the workshop env's Python (where
nbgitpuller is), as the VM and local mode do."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from freeports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
UPDATE = REPO_ROOT / "appliance" / "update.py"
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "organizer", "GIT_AUTHOR_EMAIL": "o@example.org",
           "GIT_COMMITTER_NAME": "organizer", "GIT_COMMITTER_EMAIL": "o@example.org"}

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def notebook(text: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(text, id="cell-1"))  # a fixed id: equal text, equal file
    nb.metadata["kernelspec"] = {"name": "workshop", "display_name": "Python 3 (workshop)", "language": "python"}
    return nbformat.writes(nb)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


class Organizer:
    """The organizer's working copy, pushing to a bare repository the daemon serves."""

    def __init__(self, root: Path, url: str):
        self.work = root / "organizer"
        self.bare = root / "served" / "notebooks.git"
        self.url = url
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=root)
        git("init", "--quiet", "--initial-branch=main", str(self.work), cwd=root)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    def publish(self, files: dict[str, str], message: str) -> None:
        for name, text in files.items():
            (self.work / name).write_text(text)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "-m", message, cwd=self.work)
        git("push", "--quiet", "origin", "main", cwd=self.work)


@pytest.fixture
def organizer(tmp_path: Path) -> Iterator[Organizer]:
    port = free_port()
    served = tmp_path / "served"
    served.mkdir()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", f"--port={port}",
                               f"--base-path={served}", str(served)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert daemon.poll() is None and time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.1)
        yield Organizer(tmp_path, f"git://127.0.0.1:{port}/notebooks.git")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def update(python: Path, source: str, notebooks: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-P", str(UPDATE), "--from", source, "--notebooks", str(notebooks), *extra],
                          capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(folder).parts}


def test_edits_survive_new_notebooks_arrive_and_a_second_run_changes_nothing(
        organizer: Organizer, workshop_python: Path, tmp_path: Path):
    v1 = {"a.ipynb": notebook("a = 1"), "b.ipynb": notebook("b = 1")}
    organizer.publish(v1, "day one")
    # as shipped: the VM's (and local mode's) copy is a plain folder next to a pristine copy
    pristine, mine = tmp_path / "pristine", tmp_path / "participant"
    for folder in (pristine, mine):
        folder.mkdir()
        for name, text in v1.items():
            (folder / name).write_text(text)
    (mine / "a.ipynb").write_text(notebook("a = 'my answer'"))
    (mine / "results").mkdir()
    (mine / "results" / "mine.json").write_text("{}")

    v2 = {"a.ipynb": notebook("a = 2"), "b.ipynb": notebook("b = 2"), "c.ipynb": notebook("c = 2")}
    organizer.publish(v2, "after the day")
    first = update(workshop_python, organizer.url, mine, "--pristine", str(pristine))
    assert first.returncode == 0, first.stderr
    assert (mine / "a.ipynb").read_text() == notebook("a = 'my answer'")  # the edit survives
    assert (mine / "a-updated.ipynb").read_text() == v2["a.ipynb"]  # the organizer's version beside it
    assert (mine / "b.ipynb").read_text() == v2["b.ipynb"]  # unedited: updated
    assert (mine / "c.ipynb").read_text() == v2["c.ipynb"]  # new: arrived
    assert (mine / "results" / "mine.json").read_text() == "{}"
    assert "new: c.ipynb" in first.stdout and "a.ipynb -> a-updated.ipynb" in first.stdout

    before = snapshot(mine)
    again = update(workshop_python, organizer.url, mine)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    assert snapshot(mine) == before

    # later updates go through nbgitpuller's merge in the (now git) folder; this time from the
    # repository folder itself, as from a new thumb drive
    (mine / "b.ipynb").write_text(notebook("b = 'mine too'"))
    (mine / "c.ipynb").write_text(notebook("c = 'edited'"))
    organizer.publish({"b.ipynb": notebook("b = 3"), "d.ipynb": notebook("d = 3")}, "a week later")
    third = update(workshop_python, str(organizer.bare), mine)
    assert third.returncode == 0, third.stderr
    assert (mine / "b.ipynb").read_text() == notebook("b = 'mine too'")
    assert (mine / "b-updated.ipynb").read_text() == notebook("b = 3")
    assert (mine / "c.ipynb").read_text() == notebook("c = 'edited'")  # only the participant changed it
    assert not (mine / "c-updated.ipynb").exists()
    assert (mine / "d.ipynb").read_text() == notebook("d = 3")
    assert (mine / "a.ipynb").read_text() == notebook("a = 'my answer'")

    before = snapshot(mine)
    fourth = update(workshop_python, str(organizer.bare), mine)
    assert fourth.returncode == 0 and "up to date" in fourth.stdout, fourth.stdout + fourth.stderr
    assert snapshot(mine) == before


def test_a_folder_that_is_no_repository_is_refused_in_one_line(workshop_python: Path, tmp_path: Path):
    result = update(workshop_python, str(tmp_path), tmp_path / "participant")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "is not a git repository; give the folder that holds the organizer's notebooks repository "
        "(it has a .git folder, or is a bare repository)")
    assert not (tmp_path / "participant").exists()


def test_local_mode_without_a_git_url_says_what_to_pass(workshop_python: Path):
    result = subprocess.run(["bash", str(REPO_ROOT / "local" / "workshop-update.bash")], capture_output=True,
                            text=True, timeout=600, cwd="/")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "workshop-update.bash: workshop.yml names no updates.git_url; pass --from with the organizer's git URL "
        "or the thumb drive's notebooks folder")

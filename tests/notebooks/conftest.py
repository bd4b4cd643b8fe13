"""Harness for the notebook tier: run a workshop notebook top to bottom in quick mode with
nbclient, in a kernel of the workshop python, against fake assets at the real places.

Fixtures
- `notebook_env` (session): a temporary copy of notebooks/, a fake KERAS_HOME, a kernelspec
  for the workshop python; `.fake_asset(name)` makes an asset at its manifest place,
  `.results(stem)` reads results/<stem>.json that a notebook wrote via workshop_utils.
- `execute_notebook` (session): `execute_notebook(path, params=None, *, assets=None)` ->
  the executed nbformat.NotebookNode. `path` is a file name in notebooks/ (or a path);
  `params` override the parameters cell (papermill style, `quick=True` unless given);
  assets named in the notebook's source (or in `assets`) are faked first.
Helpers for assertions: `cell_text(nb)` (all printed text), `error_outputs(nb)`.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_assets  # noqa: E402
from harness import (  # noqa: E402,F401  (re-exported for the test files)
    MANIFEST, NOTEBOOKS, assets_mentioned, asset_file, cell_text, error_outputs, execute, images,
    inject_parameters, kernel_environment, write_kernelspec,
)

# Cells allowed to print to stderr, by notebook file and cell id, each with the reason. Anything
# else on stderr fails the notebook's test: a participant sees it as a pink (error-like) box.
STDERR_ALLOWED: dict[str, dict[str, str]] = {
}

# Sizes for the generated assets: small, so quick mode stays quick.
FAKE_SIZES: dict[str, int] = {"mnist.npz": 3000, "shakespeare.txt": 60_000}


@dataclass
class NotebookEnv:
    python: Path
    root: Path
    notebooks_dir: Path
    keras_home: Path
    kernel_dirs: Path
    executed_dir: Path
    made: set[str] = field(default_factory=set)

    def asset_file(self, name: str) -> Path:
        return asset_file(name, self.keras_home, self.notebooks_dir)

    def fake_asset(self, name: str) -> Path:
        """Generate asset `name` (once per session) at its real place."""
        path = self.asset_file(name)
        if name not in self.made:
            fake_assets.generate_asset(name, path, self.python, size=FAKE_SIZES.get(name))
            self.made.add(name)
        return path

    def results(self, stem: str) -> dict[str, Any]:
        path = self.notebooks_dir / "results" / f"{stem}.json"
        assert path.is_file(), f"the notebook wrote no results file {path}"
        return json.loads(path.read_text())


@pytest.fixture(scope="session")
def notebook_env(workshop_python: Path, tmp_path_factory: pytest.TempPathFactory) -> NotebookEnv:
    root = tmp_path_factory.mktemp("notebook-env")
    notebooks_dir = root / "notebooks"
    shutil.copytree(NOTEBOOKS, notebooks_dir,
                    ignore=shutil.ignore_patterns("results", "logs", ".ipynb_checkpoints", "__pycache__"))
    keras_home = root / "keras"
    keras_home.mkdir()
    kernel_dirs = write_kernelspec(root / "kernels", workshop_python, kernel_environment(root, keras_home))
    executed_dir = root / "executed"
    executed_dir.mkdir()
    return NotebookEnv(python=workshop_python, root=root, notebooks_dir=notebooks_dir, keras_home=keras_home,
                       kernel_dirs=kernel_dirs, executed_dir=executed_dir)


def run_notebook(env: NotebookEnv, path: str | Path, params: dict[str, Any] | None = None, *,
                 assets: Iterable[str] | None = None, timeout: int = 900) -> nbformat.NotebookNode:
    source = Path(path)
    if not source.is_absolute():
        source = env.notebooks_dir / source
    nb = nbformat.read(source, as_version=4)
    for name in set(assets or ()) | assets_mentioned(nb):
        env.fake_asset(name)
    inject_parameters(nb, {"quick": True, **(params or {})})
    try:
        execute(nb, source.parent, env.kernel_dirs, timeout=timeout,
                name=f"{source.name} (executed copy in {env.executed_dir})",
                stderr_allowed=set(STDERR_ALLOWED.get(source.name, {})))
    finally:
        nbformat.write(nb, env.executed_dir / source.name)
    return nb


@pytest.fixture(scope="session")
def execute_notebook(notebook_env: NotebookEnv) -> Callable[..., nbformat.NotebookNode]:
    def run(path: str | Path, params: dict[str, Any] | None = None, **options: Any) -> nbformat.NotebookNode:
        return run_notebook(notebook_env, path, params, **options)

    return run

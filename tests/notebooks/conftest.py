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
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO_ROOT / "notebooks"
MANIFEST = REPO_ROOT / "assets.yml"
KERNEL_NAME = "workshop-test"

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(NOTEBOOKS))
import fake_assets  # noqa: E402
import workshop_utils  # noqa: E402  (same place rules as the notebooks use)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Helper calls that read an asset whose name does not appear in the notebook's source.
_HELPER_ASSETS = {"load_mnist(": "mnist.npz"}
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
        place = workshop_utils.asset_places(MANIFEST)[name]
        top, _, rest = place.partition("/")
        return {"keras": self.keras_home, "notebooks": self.notebooks_dir}[top] / rest

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


def _write_kernelspec(directory: Path, python: Path, env: dict[str, str]) -> None:
    spec_dir = directory / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Workshop (test)",
        "language": "python",
        "env": env,
    }))


@pytest.fixture(scope="session")
def notebook_env(workshop_python: Path, tmp_path_factory: pytest.TempPathFactory) -> NotebookEnv:
    root = tmp_path_factory.mktemp("notebook-env")
    notebooks_dir = root / "notebooks"
    shutil.copytree(NOTEBOOKS, notebooks_dir,
                    ignore=shutil.ignore_patterns("results", "logs", ".ipynb_checkpoints", "__pycache__"))
    keras_home = root / "keras"
    keras_home.mkdir()
    kernel_dirs = root / "kernels"
    _write_kernelspec(kernel_dirs, workshop_python, {
        "KERAS_BACKEND": "tensorflow",
        "KERAS_HOME": str(keras_home),
        "WORKSHOP_ASSETS_MANIFEST": str(MANIFEST),
        "WORKSHOP_LOGDIR": str(root / "logs"),
        "MPLBACKEND": "Agg",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONHASHSEED": "0",
        # Notebook 08-X starts subprocesses with its own thread settings; don't pin them here.
        "PYTENSOR_FLAGS": f"base_compiledir={root / 'pytensor'}",
    })
    executed_dir = root / "executed"
    executed_dir.mkdir()
    return NotebookEnv(python=workshop_python, root=root, notebooks_dir=notebooks_dir, keras_home=keras_home,
                       kernel_dirs=kernel_dirs, executed_dir=executed_dir)


def inject_parameters(nb: nbformat.NotebookNode, params: dict[str, Any]) -> None:
    """Papermill's convention: a cell tagged `injected-parameters` right after the cell
    tagged `parameters`, assigning the overrides."""
    index = next((i for i, cell in enumerate(nb.cells)
                  if "parameters" in cell.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise AssertionError("the notebook has no cell tagged 'parameters'")
    source = "# Parameters injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def assets_mentioned(nb: nbformat.NotebookNode) -> set[str]:
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    known = workshop_utils.asset_places(MANIFEST)
    found = {name for name in known if name in text}
    found |= {asset for call, asset in _HELPER_ASSETS.items() if call in text}
    return found


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{out.get('ename')}: {out.get('evalue')}" for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def cell_text(nb: nbformat.NotebookNode) -> str:
    """Every stream / text/plain output, joined: for asserting on what a notebook printed."""
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def run_notebook(env: NotebookEnv, path: str | Path, params: dict[str, Any] | None = None, *,
                 assets: Iterable[str] | None = None, timeout: int = 900) -> nbformat.NotebookNode:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = Path(path)
    if not source.is_absolute():
        source = env.notebooks_dir / source
    nb = nbformat.read(source, as_version=4)
    for name in set(assets or ()) | assets_mentioned(nb):
        env.fake_asset(name)
    inject_parameters(nb, {"quick": True, **(params or {})})
    km = KernelManager(kernel_name=KERNEL_NAME,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(env.kernel_dirs)]))
    client = NotebookClient(nb, km=km, kernel_name=KERNEL_NAME, timeout=timeout,
                            resources={"metadata": {"path": str(source.parent)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        message = _ANSI.sub("", str(exc))
        raise AssertionError(f"{source.name} failed (executed copy in {env.executed_dir}):\n{message}") from None
    finally:
        nbformat.write(nb, env.executed_dir / source.name)
    errors = error_outputs(nb)
    assert not errors, f"{source.name} has error cells: {errors}"
    return nb


@pytest.fixture(scope="session")
def execute_notebook(notebook_env: NotebookEnv) -> Callable[..., nbformat.NotebookNode]:
    def execute(path: str | Path, params: dict[str, Any] | None = None, **options: Any) -> nbformat.NotebookNode:
        return run_notebook(notebook_env, path, params, **options)

    return execute

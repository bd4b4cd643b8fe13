"""Running a workshop notebook with nbclient in a kernel of the workshop python: shared by
the notebook tests (conftest.py) and bench/notebooks.py. No pytest here."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO_ROOT / "notebooks"
MANIFEST = REPO_ROOT / "assets.yml"
KERNEL_NAME = "workshop-test"

sys.path.insert(0, str(NOTEBOOKS))
import workshop_utils  # noqa: E402  (the same asset-place rules the notebooks use)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Helper calls that read an asset whose name does not appear in the notebook's source.
_HELPER_ASSETS = {"load_mnist(": "mnist.npz"}


class NotebookFailed(AssertionError):
    pass


def asset_file(name: str, keras_home: Path, notebooks_dir: Path) -> Path:
    """Where asset `name` goes, by its manifest place."""
    place = workshop_utils.asset_places(MANIFEST)[name]
    top, _, rest = place.partition("/")
    return {"keras": keras_home, "notebooks": notebooks_dir}[top] / rest


# The workshop kernel's own environment (local mode and the VM install it): the tests run the
# notebooks as quietly as a participant's kernel does, no quieter.
WORKSHOP_KERNEL_ENV = REPO_ROOT / "local" / "jupyter" / "kernel-env.json"


def kernel_environment(root: Path, keras_home: Path) -> dict[str, str]:
    return {
        **json.loads(WORKSHOP_KERNEL_ENV.read_text()),
        "KERAS_BACKEND": "tensorflow",
        "KERAS_HOME": str(keras_home),
        "WORKSHOP_ASSETS_MANIFEST": str(MANIFEST),
        "WORKSHOP_LOGDIR": str(root / "logs"),
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONHASHSEED": "0",
        "PYTENSOR_FLAGS": f"base_compiledir={root / 'pytensor'}",
    }


def write_kernelspec(directory: Path, python: Path, env: dict[str, str]) -> Path:
    spec_dir = directory / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Workshop (test)",
        "language": "python",
        "env": env,
    }))
    return directory


def inject_parameters(nb: nbformat.NotebookNode, params: dict[str, Any]) -> None:
    """Papermill's convention: a cell tagged `injected-parameters` right after the cell
    tagged `parameters`, assigning the overrides."""
    index = next((i for i, cell in enumerate(nb.cells)
                  if "parameters" in cell.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise NotebookFailed("the notebook has no cell tagged 'parameters'")
    source = "# Parameters injected\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))


def assets_mentioned(nb: nbformat.NotebookNode) -> set[str]:
    """Manifest assets a notebook reads: named in its code, or through a helper."""
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    found = {name for name in workshop_utils.asset_places(MANIFEST) if name in text}
    return found | {asset for call, asset in _HELPER_ASSETS.items() if call in text}


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{out.get('ename')}: {out.get('evalue')}" for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def stderr_outputs(nb: nbformat.NotebookNode, allowed: Collection[str] = ()) -> list[str]:
    """What cells printed to stderr (a pink box in the browser), except cells whose id is allowed."""
    return [f"cell {cell.get('id')}: {out.get('text', '')[:500]}" for cell in nb.cells
            if cell.cell_type == "code" and cell.get("id") not in allowed
            for out in cell.get("outputs", []) if out.get("output_type") == "stream" and out.get("name") == "stderr"]


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


def execute(nb: nbformat.NotebookNode, cwd: Path, kernel_dirs: Path, *, timeout: int = 900,
            on_kernel_start: Callable[[int], None] | None = None, name: str = "notebook",
            stderr_allowed: Collection[str] | None = None) -> None:
    """Execute `nb` in place (outputs filled in); raise NotebookFailed on an error cell, and on
    stderr output of a cell whose id is not in `stderr_allowed` (None: stderr is not checked).
    `on_kernel_start(pid)` is called once the kernel process runs (the benchmark watches it)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    km = KernelManager(kernel_name=KERNEL_NAME,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dirs)]))
    client = NotebookClient(nb, km=km, kernel_name=KERNEL_NAME, timeout=timeout,
                            resources={"metadata": {"path": str(cwd)}})
    client.reset_execution_trackers()
    try:
        # we pass our own kernel manager, so nbclient would leave the kernel running: ask it not to
        with client.setup_kernel(cleanup_kc=True):
            if on_kernel_start is not None:
                on_kernel_start(km.provisioner.pid)
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
    except CellExecutionError as exc:
        raise NotebookFailed(f"{name} failed:\n{_ANSI.sub('', str(exc))}") from None
    errors = error_outputs(nb)
    if errors:
        raise NotebookFailed(f"{name} has error cells: {errors}")
    if stderr_allowed is not None:
        noise = stderr_outputs(nb, stderr_allowed)
        if noise:
            raise NotebookFailed(f"{name} printed to stderr (a participant sees a pink box; fix it at the source, "
                                 f"or allow the cell in tests/notebooks/conftest.py STDERR_ALLOWED): {noise}")


def images(nb: nbformat.NotebookNode) -> int:
    """How many images (plots) the executed notebook shows."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
               if "image/png" in out.get("data", {}))

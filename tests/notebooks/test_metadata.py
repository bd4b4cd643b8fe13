"""Every notebook opens with the one workshop kernel, the kernel local mode and the VM install
and the only one their Jupyter offers (no TensorFlow needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "local"))
import workshop_jupyter  # noqa: E402

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 10


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_names_the_workshop_kernel(path: Path):
    spec = json.loads(path.read_text(encoding="utf-8"))["metadata"]["kernelspec"]
    assert spec == {"name": "workshop", "display_name": workshop_jupyter.KERNEL_DISPLAY_NAME, "language": "python"}


def test_the_server_offers_only_that_kernel():
    server = json.loads((REPO_ROOT / "local" / "jupyter" / "server.json").read_text())
    assert server["KernelSpecManager"] == {"ensure_native_kernel": False, "allowed_kernelspecs": ["workshop"]}
    assert server["MappingKernelManager"]["default_kernel_name"] == workshop_jupyter.KERNEL_NAME == "workshop"


def test_installed_kernel_is_quiet_and_uses_the_env(tmp_path: Path):
    workshop_jupyter.install(tmp_path, "tensorflow", tmp_path / "keras")
    spec = json.loads((tmp_path / "share/jupyter/kernels/workshop/kernel.json").read_text())
    assert spec["display_name"] == workshop_jupyter.KERNEL_DISPLAY_NAME
    assert spec["argv"][0] == str(tmp_path / "bin" / "python")
    assert spec["env"]["TF_CPP_MIN_LOG_LEVEL"] == "2"  # no C++ INFO/WARNING lines (oneDNN, cpu_feature_guard)
    assert spec["env"]["KERAS_HOME"] == str(tmp_path / "keras")
    overrides = json.loads((tmp_path / "share/jupyter/lab/settings/overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    page = json.loads((tmp_path / "etc/jupyter/labconfig/page_config.json").read_text())
    assert page["disabledExtensions"]["@jupyterlab/apputils-extension:announcements"] is True

"""Where things live in a checkout; every function takes the root so tests can use a copy."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_NAME = "workshop.yml"


def config_path(root: Path = REPO_ROOT) -> Path:
    return root / DEFAULT_CONFIG_NAME


def cache_dir(root: Path = REPO_ROOT) -> Path:
    """Downloaded assets, verified by sha256; wheels under cache/wheels."""
    return root / "cache"


def wheels_dir(root: Path = REPO_ROOT) -> Path:
    return cache_dir(root) / "wheels"


def dist_dir(root: Path = REPO_ROOT) -> Path:
    return root / "dist"


def requirements_dir(root: Path = REPO_ROOT) -> Path:
    return root / "requirements"


def lock_file(root: Path = REPO_ROOT) -> Path:
    return requirements_dir(root) / "workshop.lock"


def hub_lock_file(root: Path = REPO_ROOT) -> Path:
    """The class JupyterHub's own environment (requirements/hub.in), Linux x86_64, CPython 3.13."""
    return requirements_dir(root) / "hub.lock"



def gpu_lock_file(root: Path = REPO_ROOT) -> Path:
    """The workshop environment on GPU servers (tensorflow[and-cuda]), Linux x86_64, CPython 3.13."""
    return requirements_dir(root) / "workshop-gpu.lock"

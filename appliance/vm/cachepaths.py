"""Where the VM build keeps its files (all under cache/vm, gitignored): keys, images, tokens."""

from __future__ import annotations

from pathlib import Path

from appliance.config import LoadedConfig
from appliance.paths import cache_dir


def vm_cache(config: LoadedConfig) -> Path:
    return cache_dir(config.root) / "vm"


def workshop_state(config: LoadedConfig) -> Path:
    """Per-workshop state: the Jupyter token, the built disk, logs."""
    return vm_cache(config) / config.workshop.artifact_name


def jupyter_token_path(config: LoadedConfig) -> Path:
    """The token the jupyter role makes at the first build (kept on the controller, never in the repo)."""
    return workshop_state(config) / "jupyter-token"


def build_record_path(config: LoadedConfig) -> Path:
    """build.json: what the qemu provider built (OS and version), read by `appliance export`."""
    return workshop_state(config) / "build.json"

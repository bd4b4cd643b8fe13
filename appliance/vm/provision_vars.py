"""The variables every play reads: workshop.yml as validated (every default filled in) and
the assets that go into the VM, already selected from the manifest.

Ansible never parses workshop.yml or assets.yml itself: a workshop.yml that leaves a key to
its default, or an `include` list, means exactly what `appliance config check` says it
means, in the VM too."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from appliance.config import LoadedConfig
from appliance.vm.cachepaths import workshop_state

VARS_FILE_NAME = "workshop-vars.json"


def provision_vars(config: LoadedConfig) -> dict[str, Any]:
    vm_assets = [asset for asset in config.included_assets() if asset.place and asset.kind != "installer"]
    return {
        "workshop": config.workshop.model_dump(mode="json"),
        "workshop_assets": [
            {"name": asset.name, "kind": asset.kind, "place": asset.place, "hash": asset.hash, "size": asset.size}
            for asset in vm_assets
        ],
    }


def vars_file_path(config: LoadedConfig) -> Path:
    return workshop_state(config) / VARS_FILE_NAME


def write_provision_vars(config: LoadedConfig) -> Path:
    """Render the vars file next to the build state (where the Vagrantfile looks for it)."""
    path = vars_file_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(provision_vars(config), indent=2) + "\n")
    os.replace(partial, path)
    return path

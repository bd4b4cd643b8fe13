"""What Ansible reads: workshop.yml as validated (defaults filled in) and the assets chosen
for the VM, rendered by `appliance`; and the assets role run on this machine with it, for
an empty selection and a real one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from appliance.config import load_config
from appliance.vm.provision_vars import provision_vars

REPO_ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))


def _checkout(root: Path, workshop: dict, assets: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "notebooks").mkdir(exist_ok=True)
    (root / "assets.yml").write_text(yaml.safe_dump({"assets": assets}))
    (root / "workshop.yml").write_text(yaml.safe_dump(workshop))
    return root / "workshop.yml"


def _asset(name: str, place: str | None, data: bytes = b"", kind: str = "model", algorithm: str = "sha256") -> dict:
    digest = hashlib.new(algorithm, data).hexdigest()
    return {"name": name, "kind": kind, "urls": [f"https://example.org/{name}"], "hash": f"{algorithm}:{digest}",
            "place": place}


def test_defaults_are_filled_in(tmp_path):
    # the smallest valid workshop.yml: everything else from the schema's defaults
    config = load_config(_checkout(tmp_path, {"name": "tiny", "version": "1"}, [_asset("a.h5", "keras/models/a.h5")]))
    rendered = provision_vars(config)["workshop"]
    assert rendered["ports"] == {"host_address": "127.0.0.1", "jupyter": 8888, "tensorboard": 6006, "ssh": 2222}
    assert rendered["vm"]["os"] == "fedora" and rendered["vm"]["memory_mb"] == 4096
    assert rendered["jupyter"] == {"password_hash": None, "root": "notebooks"}
    assert rendered["keras_backend"] == "tensorflow" and rendered["title"] == "Deep Learning Workshop"


def test_vm_assets_are_the_included_ones_minus_installers(tmp_path):
    assets = [
        _asset("a.h5", "keras/models/a.h5"),
        _asset("b.txt", "notebooks/data/b.txt", kind="text", algorithm="md5"),
        {**_asset("Setup.exe", None, kind="installer"), "platform": "windows"},
    ]
    everything = load_config(_checkout(tmp_path / "all", {"name": "w", "version": "1"}, assets))
    assert [a["name"] for a in provision_vars(everything)["workshop_assets"]] == ["a.h5", "b.txt"]
    some = {"name": "w", "version": "1", "assets": {"include": ["b.txt", "Setup.exe"]}}
    chosen = provision_vars(load_config(_checkout(tmp_path / "some", some, assets)))["workshop_assets"]
    assert chosen == [{"name": "b.txt", "kind": "text", "place": "notebooks/data/b.txt", "hash": assets[1]["hash"],
                       "size": None}]
    none = {"name": "w", "version": "1", "assets": {"include": []}}
    assert provision_vars(load_config(_checkout(tmp_path / "none", none, assets)))["workshop_assets"] == []


def test_config_render_writes_the_file_the_vagrantfile_reads(tmp_path, appliance_cli):
    path = _checkout(tmp_path, {"name": "tiny", "version": "2"}, [_asset("a.h5", "keras/models/a.h5")])
    result = appliance_cli("config", "render", str(path))
    assert result.returncode == 0, result.stderr
    written = tmp_path / "cache" / "vm" / "tiny-2" / "workshop-vars.json"
    assert result.stdout.strip() == f"wrote {written}"
    assert json.loads(written.read_text())["workshop"]["name"] == "tiny"
    assert not list(written.parent.glob("*.partial"))


def _run_assets_role(root: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """The product's assets role on this machine (local connection), as the playbook runs it."""
    vars_path = root / "vars.json"
    vars_path.write_text(json.dumps(provision_vars(load_config(root / "workshop.yml"))))
    play = root / "play.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Place the assets", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars_files": [str(vars_path)], "roles": ["assets"],
    }]))
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    extra = {"workshop_cache": str(root / "cache"), "workshop_user": user,
             "workshop_keras_home": str(home / ".keras"), "workshop_notebooks": str(home / "notebooks"),
             "ansible_python_interpreter": sys.executable}
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "provision" / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    env.pop("APPLIANCE_ANSIBLE_REPORT", None)
    return subprocess.run([ANSIBLE_PLAYBOOK, "-i", "localhost,", str(play), "-e", json.dumps(extra)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="ansible-playbook is not installed (pip install -e .[vm])")
def test_assets_role_places_verifies_and_copes_with_nothing(tmp_path):
    weights, text = os.urandom(5000), b"To be, or not to be\n" * 50
    assets = [_asset("w.h5", "keras/models/w.h5", weights),
              _asset("t.txt", "notebooks/data/t.txt", text, kind="text", algorithm="md5")]

    empty = tmp_path / "empty"
    _checkout(empty, {"name": "w", "version": "1", "assets": {"include": []}}, assets)
    result = _run_assets_role(empty, tmp_path / "home-empty")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "changed=0" in result.stdout and not (tmp_path / "home-empty").exists()

    full = tmp_path / "full"
    _checkout(full, {"name": "w", "version": "1"}, assets)
    (full / "cache").mkdir()
    (full / "cache" / "w.h5").write_bytes(weights)
    (full / "cache" / "t.txt").write_bytes(text)
    home = tmp_path / "home"
    result = _run_assets_role(full, home)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (home / ".keras" / "models" / "w.h5").read_bytes() == weights
    assert (home / "notebooks" / "data" / "t.txt").read_bytes() == text
    again = _run_assets_role(full, home)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]

    # an asset in place as the manifest says is not read from the cache again...
    (full / "cache" / "w.h5").write_bytes(b"x" + weights[1:])
    kept = _run_assets_role(full, home)
    assert kept.returncode == 0 and "changed=0" in kept.stdout, kept.stdout[-3000:]
    # ...but one that must be placed from a cache file not matching the manifest is caught
    (home / ".keras" / "models" / "w.h5").unlink()
    broken = _run_assets_role(full, home)
    assert broken.returncode != 0
    assert "w.h5 has" in broken.stdout and assets[0]["hash"] in broken.stdout, broken.stdout[-3000:]

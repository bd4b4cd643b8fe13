"""Run provision/personal.yml against the organizer's inventory (hosts reachable by ssh): the VM's
Jupyter and TensorBoard on each host, HTTPS only, behind the password `appliance personal
password` set."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.gpu import check_gpu_ready, python_env_vars
from appliance.errors import UsageError
from appliance.personal.password import load_hash, password_path
from appliance.vm.cachepaths import workshop_state
from appliance.vm.playbook import PROVISION_DIR, PlaybookReport, playbook_command, run_ansible
from appliance.vm.provision_vars import write_provision_vars

PERSONAL_PLAYBOOK = PROVISION_DIR / "personal.yml"
# Where the play leaves each host's certificate on the controller (personal.yml fetches it):
# the organizer hands it, or its fingerprint, to the user.
CERTS_DIR = "personal-certs"


@dataclass(frozen=True)
class HostCertificate:
    host: str
    path: Path
    sha256: str  # AB:CD:... as browsers and `openssl x509 -fingerprint -sha256` show it


def check_ready(config: LoadedConfig, inventory: Path) -> Path:
    """Everything the play needs on the controller, checked before any host is touched."""
    if not inventory.is_file():
        raise UsageError(f"--inventory {inventory}: no such file; write an Ansible inventory naming the remote machine")
    password = password_path(config)
    if load_hash(password) is None:
        raise UsageError(f"no password for the personal Jupyter yet ({password}); run `appliance personal password` first")
    if not any((config.root / "cache" / "wheels").glob("*.whl")):
        raise UsageError(f"the wheelhouse {config.root / 'cache' / 'wheels'} is empty; run `appliance fetch --wheels`")
    check_gpu_ready(config)
    return password


def certs_dir(config: LoadedConfig) -> Path:
    return workshop_state(config) / CERTS_DIR


def deploy_command(config: LoadedConfig, inventory: Path, password: Path, vars_path: Path, check: bool) -> list[str]:
    command = playbook_command(inventory.resolve(), config.path, vars_path, PERSONAL_PLAYBOOK)
    # on GPU servers (servers.gpu) python_env installs the GPU lock from its own wheelhouse
    extra = {"personal_password_file": str(password.resolve()), "personal_certs_dir": str(certs_dir(config).resolve()),
             **python_env_vars(config)}
    command[1:1] = ["--extra-vars", json.dumps(extra)]
    return command + (["--check", "--diff"] if check else [])


def fingerprint(pem: str) -> str:
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def host_certificates(config: LoadedConfig) -> list[HostCertificate]:
    """The certificates the last deploy brought back, one per host."""
    return [HostCertificate(path.stem, path, fingerprint(path.read_text()))
            for path in sorted(certs_dir(config).glob("*.pem"))]


def deploy_personal(config: LoadedConfig, inventory: Path, check: bool = False,
                    log: Callable[[str], None] = print) -> PlaybookReport:
    password = check_ready(config, inventory)
    state = workshop_state(config)
    state.mkdir(parents=True, exist_ok=True)
    certs_dir(config).mkdir(mode=0o700, exist_ok=True)
    command = deploy_command(config, inventory, password, write_provision_vars(config), check)
    return run_ansible(command, state / "personal-ansible-report.json", "the personal deploy", log)

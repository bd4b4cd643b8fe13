"""Zero to JupyterHub values from workshop.yml: the single-user image, per-user resources, the idle
culler, who may log in, home storage, notebook updates, GPUs and HTTPS.

The organizer configures a class once: admins, roster, memory_mb, cpus and idle_minutes come from
`hub:` (they mean the same on one server and on a cluster); `kubernetes:` adds only what a cluster
needs. No secret is ever written: an OAuth client secret reaches the hub from a Kubernetes Secret
the organizer creates (`oauth_secret_command`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from appliance.config import LoadedConfig
from appliance.errors import UsageError
from appliance.k8s.chart import CHART_VERSION, helm_command
from appliance.k8s.image import IMAGE_HOME, IMAGE_UID

# The first line of every file this module writes: only such a file is replaced without --force.
MARKER = "# Written by `appliance k8s values` from workshop.yml"
# OAuthenticator reads its client secret from this variable when the config does not set one.
OAUTH_SECRET_ENV = "OAUTH_CLIENT_SECRET"
AUTHENTICATORS = {
    "native": ("nativeauthenticator.NativeAuthenticator", "NativeAuthenticator"),
    "github": ("github", "GitHubOAuthenticator"),
    "oauth": ("generic-oauth", "GenericOAuthenticator"),
}
# NativeAuthenticator ships its sign-up pages as templates; the hub must find them first.
NATIVE_TEMPLATES = (
    "import os, nativeauthenticator\n"
    "c.JupyterHub.template_paths.insert(0, os.path.join(os.path.dirname(nativeauthenticator.__file__), 'templates'))\n"
)


def oauth_secret_name(config: LoadedConfig) -> str:
    return f"{config.workshop.name.replace('_', '-').replace('.', '-')}-oauth"


def oauth_secret_command(config: LoadedConfig, namespace: str) -> str:
    return (f"kubectl create secret generic {oauth_secret_name(config)} --namespace {namespace} "
            "--from-file=client-secret=FILE   # FILE: the OAuth app's client secret, no trailing newline")


def _people(config: LoadedConfig) -> tuple[list[str], list[str]]:
    from appliance.hub.accounts import hub_people

    allowed = [person.name for person in hub_people(config)]
    return allowed, list(config.workshop.hub.admins)


def _auth(config: LoadedConfig) -> dict[str, Any]:
    k8s = config.workshop.kubernetes
    allowed, admins = _people(config)
    authenticator_class, section = AUTHENTICATORS[k8s.auth]
    hub: dict[str, Any] = {"config": {
        "JupyterHub": {"authenticator_class": authenticator_class},
        "Authenticator": {"allowed_users": allowed, "admin_users": admins},
    }}
    if k8s.auth == "native":
        # A sign-up waits for an admin's approval: a stranger who claims a roster name first gets no
        # server unless an admin approves them, and the real participant's failed sign-up shows it.
        hub["config"][section] = {
            "open_signup": False, "check_common_password": True, "minimum_password_length": 10,
            "allowed_failed_logins": 5, "seconds_before_next_try": 300,
        }
        hub["extraConfig"] = {"10-native-templates": NATIVE_TEMPLATES}
        return hub
    settings: dict[str, Any] = {
        "client_id": k8s.oauth_client_id,
        "oauth_callback_url": f"https://{k8s.host}/hub/oauth_callback",
    }
    if k8s.auth == "oauth":
        settings.update(authorize_url=k8s.oauth_authorize_url, token_url=k8s.oauth_token_url,
                        userdata_url=k8s.oauth_userdata_url, username_claim=k8s.oauth_username_claim,
                        scope=["openid", "profile", "email"])
    hub["config"][section] = settings
    hub["extraEnv"] = {OAUTH_SECRET_ENV: {"valueFrom": {"secretKeyRef": {
        "name": oauth_secret_name(config), "key": "client-secret"}}}}
    return hub


def _updates(config: LoadedConfig) -> dict[str, Any]:
    """nbgitpuller at every server start: the organizer's repository into ~/<name>, participants'
    edits kept. A failed pull (no network, no git) must not stop the server: Kubernetes kills a
    container whose postStart hook fails."""
    updates = config.workshop.updates
    if updates.git_url is None:
        return {}
    script = ('gitpuller "$0" "$1" "$HOME/$2" > "$HOME/.gitpuller.log" 2>&1 '
              '|| echo "nbgitpuller failed; see ~/.gitpuller.log" >&2')
    return {"lifecycleHooks": {"postStart": {"exec": {"command": [
        "sh", "-c", script, updates.git_url, updates.branch, config.workshop.name]}}}}


def build_values(config: LoadedConfig) -> dict[str, Any]:
    """The chart values for this workshop, as plain data (the test checks every key and type)."""
    workshop = config.workshop
    hub, k8s = workshop.hub, workshop.kubernetes
    guarantee_mb = k8s.memory_guarantee_mb if k8s.memory_guarantee_mb is not None else hub.memory_mb
    timeout = hub.idle_minutes * 60
    singleuser: dict[str, Any] = {
        "image": {"name": k8s.image, "tag": workshop.version, "pullPolicy": "IfNotPresent"},
        # KubeSpawner reads "M" as MiB, the unit hub.memory_mb has on one server (systemd).
        "memory": {"limit": f"{hub.memory_mb}M", "guarantee": f"{guarantee_mb}M"},
        "cpu": {"limit": float(hub.cpus), "guarantee": float(k8s.cpu_guarantee)},
        # The image's account (the VM's): its home is the volume, its group owns the volume's files.
        "uid": IMAGE_UID,
        "fsGid": IMAGE_UID,
        "storage": {"capacity": f"{k8s.storage_gb}Gi", "homeMountPath": IMAGE_HOME},
        "defaultUrl": "/lab",
        **_updates(config),
    }
    if k8s.gpu:
        singleuser["extraResource"] = {"limits": {"nvidia.com/gpu": "1"}}
        singleuser["nodeSelector"] = dict(k8s.gpu_node_selector)
        singleuser["extraTolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if k8s.host is not None:
        https: dict[str, Any] = {"enabled": True, "type": "letsencrypt", "hosts": [k8s.host],
                                 "letsencrypt": {"contactEmail": k8s.contact_email}}
    else:
        https = {"enabled": False}  # the cluster's ingress terminates TLS
    return {
        "hub": _auth(config),
        "proxy": {"https": https},
        "singleuser": singleuser,
        # An idle server is stopped (its home volume stays), as on the one-server hub.
        "cull": {"enabled": True, "timeout": timeout, "every": max(60, min(600, timeout // 4))},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the hub's extra config) as literal blocks, readable in the file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def render(config: LoadedConfig, path: Path, release: str, namespace: str) -> str:
    workshop = config.workshop
    header = [
        f"{MARKER} ({workshop.name} {workshop.version}): edit workshop.yml, not this file.",
        f"# Zero to JupyterHub chart {CHART_VERSION}; checked against that version's values schema.",
        f"# {helm_command(path, release, namespace)}",
    ]
    body = yaml.dump(build_values(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body


def write_values(path: Path, text: str, force: bool) -> None:
    """Temporary name, then rename: a file this command did not write is kept unless force."""
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; give a file name")
    if path.exists() and not force:
        try:
            first = path.read_text(encoding="utf-8", errors="replace").partition("\n")[0]
        except OSError as exc:
            raise UsageError(f"--output {path}: cannot read it ({exc.strerror or exc}); name another file") from None
        if not first.startswith(MARKER):
            raise UsageError(f"--output {path} exists and was not written by `appliance k8s values`; "
                             "name another file or add --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        # mkstemp makes 0600; the values hold no secret, so the file gets the usual mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        if yaml.safe_load(Path(temporary).read_text(encoding="utf-8")) is None:
            raise UsageError(f"writing {path} failed: the file came out empty")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

"""`appliance k8s values` and `k8s size`: the Zero to JupyterHub values written from workshop.yml are
checked against the facts of the chart's values schema for the pinned chart version; the CLI
writes the file safely and refuses bad input with one line; sizing numbers for a few classes.

No cluster and no network: the facts below were read once from the chart's own schema and are
recorded here (not a copied file), so the test fails when the generator writes a key or a type
the chart would refuse.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from appliance.config import load_config
from appliance.errors import ApplianceError, UsageError
from appliance.k8s import sizing
from appliance.k8s.chart import CHART_VERSION
from appliance.k8s.values import MARKER, build_values

REPO_ROOT = Path(__file__).resolve().parent.parent

# --- the chart's values schema: recorded facts ------------------------------------------------
# Chart: jupyterhub (Zero to JupyterHub) 4.4.0, https://hub.jupyter.org/helm-chart/.
# Read from the values.schema.json the chart build generates from jupyterhub/schema.yaml
# (jupyterhub/zero-to-jupyterhub-k8s), as packaged for the 4.0 line (4.0.0-beta.3; stored copy:
# manics/zero-to-jupyterhub-k8s-chart-expanded@ca7ab7e1, 4.0.0-beta.3/values.schema.json), and
# the chart's changelog through 4.4.0 (docs/source/changelog.md @0202b918): no 4.x release
# changes the type, closedness or required keys of any path below. Helm validates the values
# *merged over the chart's defaults* (values.yaml), so required keys the defaults supply hold.
RECORDED_FOR_CHART = "4.4.0"

NULL = "null"


def closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with additionalProperties: false (only the recorded keys; the chart has these and more)."""
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


OPEN_OBJECT = {"type": "object", "additionalProperties": True}
IMAGE = closed({
    "name": {"type": "string"}, "tag": {"type": "string"},
    "pullPolicy": {"enum": [None, "", "IfNotPresent", "Always", "Never"]}, "pullSecrets": {"type": "array"},
}, required=("name", "tag"))
CHART_SCHEMA: dict[str, Any] = closed({
    "imagePullSecrets": {"type": "array"},
    "hub": closed({
        "baseUrl": {"type": "string"},
        "config": OPEN_OBJECT,
        "extraConfig": OPEN_OBJECT,
        "extraEnv": {"type": ["object", "array"], "additionalProperties": True},
    }, required=("baseUrl",)),
    "proxy": closed({
        "https": closed({
            "enabled": {"type": ["boolean", NULL]},
            "type": {"enum": [None, "", "letsencrypt", "manual", "offload", "secret"]},
            "hosts": {"type": "array"},
            "letsencrypt": closed({"contactEmail": {"type": ["string", NULL]}, "acmeServer": {"type": ["string", NULL]}}),
        }),
    }),
    "singleuser": closed({
        "image": IMAGE,
        "cpu": closed({"limit": {"type": ["number", NULL]}, "guarantee": {"type": ["number", NULL]}}),
        "memory": closed({"limit": {"type": ["number", "string", NULL]}, "guarantee": {"type": ["number", "string", NULL]}}),
        "storage": closed({
            "type": {"enum": ["dynamic", "static", "none"]}, "homeMountPath": {"type": "string"},
            "capacity": {"type": ["string", NULL]},
        }, required=("type", "homeMountPath")),
        "defaultUrl": {"type": ["string", NULL]},
        "uid": {"type": ["integer", NULL]},
        "fsGid": {"type": ["integer", NULL]},
        "lifecycleHooks": closed({"postStart": OPEN_OBJECT, "preStop": OPEN_OBJECT}),
        "extraResource": closed({"limits": OPEN_OBJECT, "guarantees": OPEN_OBJECT}),
        "nodeSelector": OPEN_OBJECT,
        "extraTolerations": {"type": "array"},
    }),
    "ingress": closed({"enabled": {"type": "boolean"}}, required=("enabled",)),
    "prePuller": closed({
        "hook": closed({"enabled": {"type": "boolean"}}, required=("enabled",)),
        "continuous": closed({"enabled": {"type": "boolean"}}, required=("enabled",)),
    }, required=("hook", "continuous")),
    "custom": OPEN_OBJECT,
    "cull": closed({
        "enabled": {"type": "boolean"}, "timeout": {"type": ["integer", NULL]}, "every": {"type": ["integer", NULL]},
        "users": {"type": ["boolean", NULL]}, "adminUsers": {"type": ["boolean", NULL]},
        "removeNamedServers": {"type": ["boolean", NULL]}, "concurrency": {"type": ["integer", NULL]},
        "maxAge": {"type": ["integer", NULL]},
    }, required=("enabled",)),
    "debug": closed({"enabled": {"type": "boolean"}}, required=("enabled",)),
    "rbac": closed({"create": {"type": "boolean"}}, required=("create",)),
    "global": OPEN_OBJECT,
}, required=("imagePullSecrets", "hub", "proxy", "singleuser", "ingress", "prePuller", "custom", "cull", "debug",
             "rbac", "global"))
# The chart's values.yaml defaults for every required key above (what Helm merges under ours).
CHART_DEFAULTS: dict[str, Any] = {
    "imagePullSecrets": [], "hub": {"baseUrl": "/"}, "proxy": {"https": {"enabled": False, "type": "letsencrypt"}},
    "singleuser": {"image": {"name": "quay.io/jupyterhub/k8s-singleuser-sample", "tag": CHART_VERSION},
                   "storage": {"type": "dynamic", "homeMountPath": "/home/jovyan", "capacity": "10Gi"}},
    "ingress": {"enabled": False}, "prePuller": {"hook": {"enabled": True}, "continuous": {"enabled": True}},
    "custom": {}, "cull": {"enabled": True, "timeout": 3600, "every": 600}, "debug": {"enabled": False},
    "rbac": {"create": True}, "global": {},
}
# hub.config: since 4.3.0 the hub refuses top-level keys that are not configurable classes; the
# traits the values set, per class (JupyterHub 5, NativeAuthenticator 1.3, OAuthenticator 17).
HUB_CONFIG_TRAITS = {
    "JupyterHub": {"authenticator_class"},
    "Authenticator": {"allowed_users", "admin_users"},
    "NativeAuthenticator": {"open_signup", "check_common_password", "minimum_password_length",
                            "allowed_failed_logins", "seconds_before_next_try"},
    "GitHubOAuthenticator": {"client_id", "oauth_callback_url"},
    "GenericOAuthenticator": {"client_id", "oauth_callback_url", "authorize_url", "token_url", "userdata_url",
                              "username_claim", "scope"},
}


def helm_merge(defaults: Any, values: Any) -> Any:
    """Helm's coalescing of user values over chart defaults: maps merge, anything else replaces,
    and a null deletes the default."""
    if not isinstance(defaults, dict) or not isinstance(values, dict):
        return copy.deepcopy(values)
    merged = copy.deepcopy(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(merged.get(key), value)
    return merged


def check_against_chart(values: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (or AssertionError for hub.config) where the chart would refuse."""
    jsonschema.validate(helm_merge(CHART_DEFAULTS, values), CHART_SCHEMA)
    for section, settings in values.get("hub", {}).get("config", {}).items():
        assert section in HUB_CONFIG_TRAITS, f"hub.config.{section} is not a class the values may configure"
        unknown = set(settings) - HUB_CONFIG_TRAITS[section]
        assert not unknown, f"hub.config.{section}: unknown traits {sorted(unknown)}"


def test_the_recorded_facts_are_for_the_pinned_chart() -> None:
    assert CHART_VERSION == RECORDED_FOR_CHART
    jsonschema.Draft7Validator.check_schema(CHART_SCHEMA)
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"--version {CHART_VERSION}" in readme


# --- workshops to write values from -----------------------------------------------------------

def make_workshop(folder: Path, roster: bool = True, **kubernetes: Any) -> Path:
    """The repository's workshop.yml (and its notebooks) with people, updates and any kubernetes: changes."""
    workshop = yaml.safe_load((REPO_ROOT / "workshop.yml").read_text())
    shutil.copytree(REPO_ROOT / "notebooks", folder / "notebooks",
                    ignore=shutil.ignore_patterns("results", "logs", ".ipynb_checkpoints", "__pycache__", "data"))
    shutil.copy(REPO_ROOT / "assets.yml", folder / "assets.yml")
    workshop["hub"]["admins"] = ["teacher"]
    if roster:
        (folder / "people.csv").write_text("user,email\nada,ada@example.org\nbob\n")
        workshop["hub"]["roster"] = "people.csv"
    workshop["updates"]["git_url"] = "https://git.example.org/dl-workshop.git"
    workshop["kubernetes"].update(kubernetes)
    (folder / "workshop.yml").write_text(yaml.safe_dump(workshop, sort_keys=False))
    return folder / "workshop.yml"


HTTPS = {"host": "hub.example.org", "contact_email": "team@example.org"}
VARIANTS = {
    "repository": {},
    "https": HTTPS,
    "no-roster": {"roster": False},
    "github": {**HTTPS, "auth": "github", "oauth_client_id": "Iv1.0123456789abcdef"},
    "oauth": {**HTTPS, "auth": "oauth", "oauth_client_id": "workshop", "oauth_username_claim": "preferred_username",
              "oauth_authorize_url": "https://id.example.org/auth", "oauth_token_url": "https://id.example.org/token",
              "oauth_userdata_url": "https://id.example.org/userinfo"},
    "gpu": {"gpu": True, "gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}},
    "guarantees": {"memory_guarantee_mb": 1536, "cpu_guarantee": 1.0, "storage_gb": 20},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_values_pass_the_chart_schema(tmp_path: Path, variant: str) -> None:
    options = dict(VARIANTS[variant])
    roster = options.pop("roster", True)
    config = load_config(make_workshop(tmp_path, roster=roster, **options))
    values = build_values(config)
    check_against_chart(values)

    workshop = config.workshop
    single = values["singleuser"]
    assert single["image"] == {"name": workshop.kubernetes.image, "tag": workshop.version, "pullPolicy": "IfNotPresent"}
    assert single["memory"]["limit"] == f"{workshop.hub.memory_mb}M"
    assert single["cpu"]["limit"] == workshop.hub.cpus
    assert values["cull"]["timeout"] == workshop.hub.idle_minutes * 60
    auth = values["hub"]["config"]["Authenticator"]
    assert auth["admin_users"] == ["teacher"]
    assert auth["allowed_users"] == (["ada", "bob", "teacher"] if roster else ["teacher"])
    # nbgitpuller pulls the organizer's repository; a failed pull never fails the hook
    command = single["lifecycleHooks"]["postStart"]["exec"]["command"]
    assert command[3:] == ["https://git.example.org/dl-workshop.git", "main", workshop.name]
    assert command[2].endswith('>&2') and "||" in command[2]
    text = yaml.safe_dump(values)
    assert "secret" not in text.lower() or "secretKeyRef" in text  # never a secret value, at most a reference
    assert ("nvidia.com/gpu" in text) == (variant == "gpu")
    assert values["proxy"]["https"]["enabled"] is ("host" in options)


def test_gpu_values_ask_for_one_gpu_on_the_gpu_nodes(tmp_path: Path) -> None:
    config = load_config(make_workshop(tmp_path, **VARIANTS["gpu"]))
    single = build_values(config)["singleuser"]
    assert single["extraResource"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert single["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert single["extraTolerations"][0]["key"] == "nvidia.com/gpu"


def test_oauth_secret_comes_from_a_kubernetes_secret(tmp_path: Path) -> None:
    config = load_config(make_workshop(tmp_path, **VARIANTS["github"]))
    hub = build_values(config)["hub"]
    assert hub["config"]["JupyterHub"]["authenticator_class"] == "github"
    assert hub["config"]["GitHubOAuthenticator"]["oauth_callback_url"] == "https://hub.example.org/hub/oauth_callback"
    assert "client_secret" not in hub["config"]["GitHubOAuthenticator"]
    ref = hub["extraEnv"]["OAUTH_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "dl-workshop-oauth", "key": "client-secret"}


# Each change makes the values something the chart refuses: the check must catch it.
def _set(path: str, value: Any) -> Any:
    def change(values: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return change


BAD_VALUES = {
    "unknown-singleuser-key": _set("singleuser.memroy", {"limit": "1G"}),
    "unknown-top-level-key": _set("auth", {"type": "dummy"}),
    "unknown-https-key": _set("proxy.https.letsencrypt.email", "team@example.org"),
    "cpu-as-text": _set("singleuser.cpu.limit", "1"),
    "memory-as-list": _set("singleuser.memory.limit", ["2G"]),
    "timeout-as-text": _set("cull.timeout", "3600"),
    "cull-enabled-deleted": _set("cull.enabled", None),
    "image-tag-deleted": _set("singleuser.image.tag", None),  # null deletes the chart default: required fails
    "storage-home-deleted": _set("singleuser.storage.homeMountPath", None),
    "tag-as-number": _set("singleuser.image.tag", 2026.11),
    "https-type": _set("proxy.https.type", "acme"),
    "storage-type": _set("singleuser.storage.type", "nfs"),
    "hooks-unknown": _set("singleuser.lifecycleHooks.onStart", {}),
    "hub-config-section": _set("hub.config.PAMAuthentcator", {"open_sessions": False}),
    "hub-config-trait": _set("hub.config.NativeAuthenticator.opensignup", True),
}


@pytest.mark.parametrize("change", BAD_VALUES)
def test_values_the_chart_refuses_fail_the_check(tmp_path: Path, change: str) -> None:
    values = build_values(load_config(make_workshop(tmp_path)))
    check_against_chart(values)
    BAD_VALUES[change](values)
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        check_against_chart(values)


# --- the command ------------------------------------------------------------------------------

TOOL_VENV = REPO_ROOT / ".venv" / ".appliance-tools"
needs_tools = pytest.mark.skipif(not TOOL_VENV.exists(), reason="the tool venv is not installed (bin/install-test-deps)")


def appliance(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([str(REPO_ROOT / "bin" / "appliance"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def one_line_refusal(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


@needs_tools
def test_cli_writes_the_values_and_keeps_other_files(tmp_path: Path) -> None:
    config = make_workshop(tmp_path / "w", **HTTPS)
    out = tmp_path / "out" / "values.yaml"
    result = appliance("k8s", "values", "--config", str(config), "--output", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"--version {CHART_VERSION}" in result.stdout and f"--values {out}" in result.stdout
    text = out.read_text()
    assert text.startswith(MARKER)
    check_against_chart(yaml.safe_load(text))
    assert sorted(p.name for p in out.parent.iterdir()) == ["values.yaml"]  # no temporary file left

    # its own file is replaced; anyone else's is kept unless --force
    again = appliance("k8s", "values", "--config", str(config), "--output", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    mine = tmp_path / "mine.yaml"
    mine.write_text("singleuser: {}\n")
    refused = appliance("k8s", "values", "--config", str(config), "--output", str(mine), cwd=tmp_path)
    one_line_refusal(refused, r"mine\.yaml exists and was not written by `appliance k8s values`.*--force")
    assert mine.read_text() == "singleuser: {}\n"
    forced = appliance("k8s", "values", "--config", str(config), "--output", str(mine), "--force", cwd=tmp_path)
    assert forced.returncode == 0 and mine.read_text().startswith(MARKER)


@needs_tools
def test_cli_refuses_a_workshop_without_people(tmp_path: Path) -> None:
    """The repository's workshop.yml as shipped names no admins and no roster: no one could log in."""
    result = appliance("k8s", "values", "--output", str(tmp_path / "v.yaml"), cwd=tmp_path)
    one_line_refusal(result, r"workshop\.yml: hub: no users; set hub\.roster .* or list hub\.admins")
    assert not (tmp_path / "v.yaml").exists()


@needs_tools
@pytest.mark.parametrize(("args", "pattern"), [
    (["--participants", "0"], r"--participants 0: give the number of participants, 1 or more"),
    (["--participants", "-5"], r"--participants -5"),
    (["--participants", "10", "--node-memory-gb", "2", "--node-cpus", "2"], r"holds no participant.*give a bigger node"),
    (["--participants", "10", "--node-cpus", "0"], r"give a node's size, both above 0"),
    (["--participants", "many"], r"invalid int value"),
])
def test_cli_size_refuses_bad_input(tmp_path: Path, args: list[str], pattern: str) -> None:
    one_line_refusal_or_usage = appliance("k8s", "size", *args, cwd=tmp_path)
    if "invalid int" in pattern:  # argparse's own refusal: usage line and error line, exit 2
        assert one_line_refusal_or_usage.returncode == 2 and re.search(pattern, one_line_refusal_or_usage.stderr)
        return
    one_line_refusal(one_line_refusal_or_usage, pattern)


@needs_tools
def test_cli_size_prints_nodes(tmp_path: Path) -> None:
    result = appliance("k8s", "size", "--participants", "120", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the limit hub.memory_mb dominates" in result.stdout
    assert re.search(r"nodes: \d+ x 32 GB / 8 CPUs for 120 participants", result.stdout)


# --- sizing -----------------------------------------------------------------------------------

def test_the_measured_busy_participant_is_recorded() -> None:
    assert sizing.MEASURED_KERNEL_PEAK_MB > 300 and sizing.MEASURED_PEAK_NOTEBOOK.endswith(".ipynb")
    assert sizing.MEASURED_BUSY_USER_MB == sizing.MEASURED_KERNEL_PEAK_MB + sizing.MEASURED_SERVER_MB


def test_allocatable_follows_the_reservation_bands() -> None:
    memory_mb, cpus = sizing.allocatable(32, 8)
    # 32 GB: 1 + 0.8 + 0.8 + 0.96 GB reserved (3.56 GB), eviction 100 MB, daemon sets 256 MB
    assert memory_mb == pytest.approx(32 * 1024 - 3.56 * 1024 - 356)
    assert cpus == pytest.approx(8 - (0.06 + 0.01 + 0.01 + 0.01) - 0.1)


@pytest.mark.parametrize(("participants", "node_gb", "cpus", "per_node", "nodes", "bound"), [
    (120, 32, 8, 14, 9, "memory"),    # 2048 MB limit: 28.1 GB / 2 GB
    (14, 32, 8, 14, 1, "memory"),     # exactly one full node
    (15, 32, 8, 14, 2, "memory"),
    (100, 64, 4, 7, 15, "CPU"),       # 0.5 CPU each: 3.8 CPUs hold 7
    (1, 4, 2, 1, 1, "memory"),        # 4 GB node: 2.7 GB for pods, one participant
])
def test_sizing_numbers(tmp_path: Path, participants: int, node_gb: float, cpus: float, per_node: int, nodes: int,
                        bound: str) -> None:
    workshop = load_config(make_workshop(tmp_path)).workshop
    result = sizing.size(workshop, participants, node_gb, cpus, measured_mb=1000)
    assert (result.per_node, result.nodes, result.bound_by) == (per_node, nodes, bound)
    assert result.per_user_mb == 2048 and result.dominant == "the limit hub.memory_mb"


def test_a_measured_peak_above_the_limit_dominates_and_warns(tmp_path: Path) -> None:
    workshop = load_config(make_workshop(tmp_path)).workshop
    result = sizing.size(workshop, 50, 32, 8, measured_mb=3000)
    assert result.per_user_mb == 3000 and result.dominant == "the measured busy peak"
    assert result.per_node == int(sizing.allocatable(32, 8)[0] // 3000)
    assert any(line.startswith("warning: hub.memory_mb") for line in sizing.describe(result))


def test_gpu_classes_are_bound_by_the_gpus_of_a_node(tmp_path: Path) -> None:
    workshop = load_config(make_workshop(tmp_path, gpu=True)).workshop
    result = sizing.size(workshop, 10, 64, 16, measured_mb=1000, node_gpus=4)
    assert (result.per_node, result.nodes, result.bound_by) == (4, 3, "GPU")
    with pytest.raises(UsageError, match="--node-gpus 0: kubernetes.gpu is true"):
        sizing.size(workshop, 10, 64, 16, measured_mb=1000)


@pytest.mark.parametrize(("participants", "node_gb", "cpus"), [(0, 32, 8), (-1, 32, 8), (10, 2, 2), (10, 32, 0.3)])
def test_sizing_refuses(tmp_path: Path, participants: int, node_gb: float, cpus: float) -> None:
    workshop = load_config(make_workshop(tmp_path)).workshop
    with pytest.raises(UsageError):
        sizing.size(workshop, participants, node_gb, cpus, measured_mb=1000)


def test_errors_are_appliance_errors() -> None:
    assert issubclass(UsageError, ApplianceError) and UsageError.exit_code == 2


def test_the_pods_run_the_image_as_its_own_account(tmp_path: Path) -> None:
    """The values and the image agree: the image's user, and its home as the participant's volume."""
    from appliance.k8s.image import IMAGE_HOME, IMAGE_UID
    from appliance.k8s.values import build_values

    singleuser = build_values(load_config(make_workshop(tmp_path)))["singleuser"]
    assert (singleuser["uid"], singleuser["fsGid"]) == (IMAGE_UID, IMAGE_UID)
    assert singleuser["storage"]["homeMountPath"] == IMAGE_HOME == "/home/workshop"

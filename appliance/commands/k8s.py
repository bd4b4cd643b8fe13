"""`appliance k8s values` and `appliance k8s size`: the class on Kubernetes (Zero to JupyterHub)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.config import load_config
from appliance.errors import UsageError
from appliance.paths import config_path, dist_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    k8s = subparsers.add_parser("k8s", help="the class on Kubernetes: Zero to JupyterHub values and node sizing")
    actions = k8s.add_subparsers(dest="k8s_command", metavar="ACTION", required=True)

    values = actions.add_parser(
        "values", help="write the Zero to JupyterHub chart values from workshop.yml",
        description="Writes the values for the pinned chart version: the single-user image, memory and CPU, the idle "
        "culler, who may log in, home storage, nbgitpuller updates, GPUs and HTTPS. No secret is written.",
    )
    values.add_argument("--config", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    values.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="default: dist/<name>-<version>-z2jh-values.yaml")
    values.add_argument("--force", action="store_true", help="replace FILE even if this command did not write it")
    values.add_argument("--release", default=None, help="the Helm release name in the printed command (default: the workshop name)")
    values.add_argument("--namespace", default=None, help="the Kubernetes namespace in the printed command (default: the workshop name)")
    values.set_defaults(run=run_values)

    size = actions.add_parser(
        "size", help="how many nodes a class needs, from the per-user limits and the measured busy participant",
    )
    size.add_argument("--config", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    size.add_argument("--participants", type=int, required=True, metavar="N")
    size.add_argument("--node-memory-gb", type=float, default=32.0, metavar="G", help="memory of one node (default 32)")
    size.add_argument("--node-cpus", type=float, default=8.0, metavar="C", help="CPUs of one node (default 8)")
    size.add_argument("--node-gpus", type=int, default=0, metavar="N", help="GPUs of one node (with kubernetes.gpu: true)")
    size.set_defaults(run=run_size)


def _kubernetes_name(value: str, flag: str) -> str:
    import re

    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,51}[a-z0-9])?", value):
        raise UsageError(f"{flag} {value!r}: use lower-case letters, digits and '-' (a Kubernetes name)")
    return value


def run_values(args: argparse.Namespace) -> int:
    from appliance.k8s.chart import CHART_VERSION, helm_command
    from appliance.k8s.values import oauth_secret_command, render, write_values

    config = load_config(args.config)
    workshop = config.workshop
    default_name = workshop.name.replace("_", "-").replace(".", "-")
    release = _kubernetes_name(args.release or default_name, "--release")
    namespace = _kubernetes_name(args.namespace or default_name, "--namespace")
    output = args.output or dist_dir(config.root) / f"{workshop.artifact_name}-z2jh-values.yaml"
    write_values(output, render(config, output, release, namespace), args.force)
    k8s = workshop.kubernetes
    print(f"wrote {output} (Zero to JupyterHub chart {CHART_VERSION})")
    print(f"image: {k8s.image}:{workshop.version} (push the image there first)")
    if k8s.auth == "native":
        print("login: roster users sign up at https://HOST/hub/signup with a password of their own and an admin "
              "approves each at /hub/authorize; sign up every admin before sharing the address (an admin's name "
              "is approved at once, whoever claims it first)")
    else:
        print(f"login: {k8s.auth} OAuth for the roster's names; first create the client secret (never in workshop.yml):")
        print(f"  {oauth_secret_command(config, namespace)}")
    if k8s.host is None:
        print("HTTPS: no kubernetes.host: the cluster's ingress must terminate TLS in front of the proxy-public service")
    else:
        print(f"HTTPS: Let's Encrypt for {k8s.host} (point its DNS at the proxy-public service's address)")
    if workshop.updates.git_url:
        print(f"updates: every server start pulls {workshop.updates.git_url} into ~/{workshop.name} (nbgitpuller)")
    print(helm_command(output, release, namespace))
    return 0


def run_size(args: argparse.Namespace) -> int:
    from appliance.k8s.sizing import MEASURED_ON, describe, size

    config = load_config(args.config)
    result = size(config.workshop, args.participants, args.node_memory_gb, args.node_cpus, node_gpus=args.node_gpus)
    for line in describe(result):
        stream = sys.stderr if line.startswith("warning:") else sys.stdout
        print(line if stream is sys.stdout else f"appliance: {line}", file=stream)
    print(f"(measured busy participant: bench/user_memory.py, {MEASURED_ON})")
    return 0

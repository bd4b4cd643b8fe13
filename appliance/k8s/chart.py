"""The one Zero to JupyterHub chart version the values are written for and checked against
(tests/test_k8s_values.py records that version's schema facts)."""

from __future__ import annotations

import shlex
from pathlib import Path

CHART_NAME = "jupyterhub"
CHART_REPO = "https://hub.jupyter.org/helm-chart/"
# 4.4.0 (2026-06-10): the latest stable 4.x, JupyterHub 5.5.0; 4.3.3-4.4.0 are security releases.
CHART_VERSION = "4.4.0"


def helm_command(values: Path, release: str, namespace: str) -> str:
    """The organizer's install/upgrade line for this chart version and values file."""
    return (f"helm upgrade --install {shlex.quote(release)} {CHART_NAME} --repo {CHART_REPO} "
            f"--version {CHART_VERSION} --namespace {shlex.quote(namespace)} --create-namespace "
            f"--values {shlex.quote(str(values))}")

"""The Zero to JupyterHub single-user image: its names, the checks before a build, and the
line that pushes it. What the image holds and how it is built is in image_build.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import UsageError
from appliance.paths import cache_dir, dist_dir, hub_lock_file, lock_file, REPO_ROOT

# docker-stacks' convention, which Zero to JupyterHub's defaults (fsGid, uid) assume.
IMAGE_UID = 1000
IMAGE_USER = "workshop"  # the VM's participant account (provision/group_vars/all.yml workshop_user)
IMAGE_HOME = f"/home/{IMAGE_USER}"
IMAGE_PORT = 8888
REQUIRED_TOOLS = ("buildah", "tar", "chroot", "mount", "umount")
# The build's peak (measured with the repository's lock): the container's root (2.7 GB with the
# wheelhouse copy it installs from), the committed layer (2.7 GB), buildah's scratch copy while it
# writes the archive and the archive itself (0.9 GB each): about 7.5 GB; a larger lock grows it.
SPACE_FACTOR = 8.0
MIN_FREE_BYTES = 10 * 1024**3


def image_cache(config: LoadedConfig) -> Path:
    """buildah's private storage and the build's scratch folder (nothing in the system's storage)."""
    return cache_dir(config.root) / "image"


def archive_path(config: LoadedConfig, out: Path | None = None) -> Path:
    return (out or dist_dir(config.root)) / f"{config.workshop.artifact_name}-singleuser.oci.tar"


def image_reference(config: LoadedConfig) -> str:
    """The name and tag inside the archive: the workshop's name, lower case (an OCI reference)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", config.workshop.name.lower()).strip("._-") or "workshop"
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", str(config.workshop.version))[:128] or "latest"
    return f"{name}-singleuser:{tag}"


def push_command(archive: Path, reference: str, registry: str = "REGISTRY") -> str:
    """The one line an organizer runs to put the archive into their registry."""
    return shlex.join(["skopeo", "copy", f"oci-archive:{archive}", f"docker://{registry}/{reference}"])


def hub_wheelhouse(config: LoadedConfig) -> Path:
    return cache_dir(config.root) / "wheels" / "hub"


def check_build_inputs(config: LoadedConfig) -> None:
    """Everything a build needs, checked before it starts: one line each (exit 2)."""
    if os.geteuid() != 0:
        raise UsageError("`appliance image build` needs root (buildah's storage, the chroot); run it as root")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise UsageError(f"`appliance image build` needs {', '.join(missing)}; install them "
                         "(apt-get install buildah; bin/install-test-deps does)")
    wheels = cache_dir(config.root) / "wheels"
    if not any(wheels.glob("*.whl")):
        raise UsageError(f"no wheelhouse at {wheels}; run `appliance fetch --wheels` first")
    if not any(hub_wheelhouse(config).glob("jupyterhub-*.whl")):
        raise UsageError(f"no JupyterHub wheels at {hub_wheelhouse(config)} (jupyterhub-singleuser comes from "
                         "the hub's lock); run `appliance fetch --wheels` first")
    for lock in (lock_file(config.root), hub_lock_file(REPO_ROOT)):
        if not lock.is_file():
            raise UsageError(f"{lock} is missing; the image installs exactly that lock")
    needed = max(MIN_FREE_BYTES, int(SPACE_FACTOR * _folder_bytes(wheels)))
    folder = image_cache(config)
    probe = folder if folder.exists() else cache_dir(config.root)
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise UsageError(f"building the image needs about {needed / 1024**3:.0f} GB free under {probe}, which has "
                         f"{free / 1024**3:.1f} GB; free some space there and run it again")


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*.whl") if path.is_file())

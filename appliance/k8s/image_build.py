"""`appliance image build`: the Zero to JupyterHub single-user image as an OCI archive.

The qemu provider's cached Debian 13 root file system is unpacked into a buildah container
FROM scratch; provision/image.yml (the VM's roles) runs on it over the chroot connection;
what a container does not use (kernel, modules, firmware, the wheelhouse) goes. Three layers:
the OS with the environment; the datasets and models (root-owned, read-only to the user);
the notebooks and the start script. Every layer is committed with timestamp 0, so the same
inputs make the same layers where the tools allow (the notebook layer is checked at each
build). The archive is written under a temporary name and renamed; buildah's private storage
under cache/image is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError
from appliance.k8s.image import (
    IMAGE_HOME, IMAGE_PORT, IMAGE_UID, IMAGE_USER, archive_path, check_build_inputs, hub_wheelhouse, image_cache,
    image_reference, push_command,
)
from appliance.lockfile import parse_lock
from appliance.paths import REPO_ROOT, cache_dir, hub_lock_file, lock_file
from appliance.placement import NOT_PLACED, place_assets
from appliance.vm.cachepaths import vm_cache
from appliance.vm.chroot import chroot_session
from appliance.vm.image import ensure_rootfs_tarball
from appliance.vm.playbook import PROVISION_DIR, ChrootConnection, run_playbook

IMAGE_PLAYBOOK = PROVISION_DIR / "image.yml"
START_SCRIPT = Path(__file__).with_name("start-singleuser.sh")
PREFIX = "/opt/workshop"
VENV = f"{PREFIX}/venv"
# What a container never uses: the kernel, its modules and firmware, the boot loader's files.
KERNEL_PACKAGES = ("linux-image-*", "initramfs-tools", "initramfs-tools-core", "udev")
DROPPED = (
    "boot/*", "usr/lib/modules", "usr/lib/firmware", "vmlinuz*", "initrd.img*",
    f"{PREFIX.lstrip('/')}/wheels", f"{PREFIX.lstrip('/')}/tools",  # the wheelhouse and uv: installed already
    "var/lib/apt/lists/*", "var/cache/apt/*", "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "var/log/*",
    "root/.ansible", "root/.cache", f"home/{IMAGE_USER}/notebooks", f"home/{IMAGE_USER}/logs", f"home/{IMAGE_USER}/.keras",
    "tmp/*", "var/tmp/*", "etc/ssh/ssh_host_*",
)
TIMESTAMP = "0"


@dataclass(frozen=True)
class ImageBuild:
    archive: Path
    reference: str
    push_line: str
    layers: list[str]  # diff ids, base first: OS + environment, assets, notebooks
    notebook_layer_reproduced: bool  # the notebook layer committed twice gave the same digest
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


class Buildah:
    """buildah with a private storage root (nothing lands in the system's container storage)."""

    def __init__(self, storage: Path) -> None:
        driver = os.environ.get("APPLIANCE_IMAGE_STORAGE_DRIVER", "overlay")
        # buildah's scratch copies of layers (gigabytes) go under the storage, removed with it
        self.tmp = storage / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.base = ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
                     "--storage-driver", driver]

    def __call__(self, *args: str) -> str:
        result = subprocess.run([*self.base, *args], capture_output=True, text=True,
                                env={**os.environ, "TMPDIR": str(self.tmp)})
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise ApplianceError(f"buildah {args[0]} failed (exit {result.returncode}): {detail}")
        return result.stdout.strip()

    def new(self, base: str) -> tuple[str, Path]:
        container = self("from", "--quiet", "--pull-never", base) if base != "scratch" else self("from", "scratch")
        return container, Path(self("mount", container))

    def commit(self, container: str, name: str) -> str:
        return self("commit", "--quiet", "--timestamp", TIMESTAMP, "--format", "oci", "--rm", container, name)

    def diff_ids(self, image: str) -> list[str]:
        data = json.loads(self("inspect", "--type", "image", image))
        return list(data["OCIv1"]["rootfs"]["diff_ids"])


def _run(command: list[str], what: str, **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ApplianceError(f"{what} failed (exit {result.returncode}): {detail}")
    return result.stdout


def singleuser_requirements(workshop_lock: Path, hub_lock: Path) -> str:
    """jupyterhub-singleuser for the workshop's environment: the hub lock's pins of what the
    workshop lock lacks (JupyterHub and its own dependencies), hash-checked, installed without
    resolving (both locks pin the same Jupyter server and JupyterLab; `uv pip check` confirms)."""
    have = {pin.name for pin in parse_lock(workshop_lock)}
    extra = [pin.requirement for pin in parse_lock(hub_lock) if pin.name not in have]
    return "\n".join(extra) + "\n"


def _prepare_user(root: Path) -> None:
    """The participant's account with uid 1000 before the play, so the base role finds it
    (docker-stacks' and Zero to JupyterHub's default uid; the VM's first user has it too)."""
    passwd = (root / "etc" / "passwd").read_text()
    if any(line.split(":")[2] == str(IMAGE_UID) for line in passwd.splitlines() if line.count(":") >= 3):
        raise ApplianceError(f"the root file system already has a user with uid {IMAGE_UID}; the image needs it for "
                             f"{IMAGE_USER}")
    _run(["chroot", str(root), "useradd", "--uid", str(IMAGE_UID), "--user-group", "--create-home",
          "--shell", "/bin/bash", IMAGE_USER], "useradd")


def _install_singleuser(root: Path, config: LoadedConfig) -> None:
    uv = sorted(root.glob(f"{PREFIX.lstrip('/')}/tools/uv-*/uv-*.data/scripts/uv"))
    if not uv:
        raise ApplianceError("uv is not in the image's root after the play (python_env role)")
    scratch = root / "tmp" / "singleuser"
    scratch.mkdir(parents=True)
    (scratch / "requirements.txt").write_text(singleuser_requirements(lock_file(config.root), hub_lock_file(REPO_ROOT)))
    for wheel in hub_wheelhouse(config).glob("*.whl"):
        shutil.copyfile(wheel, scratch / wheel.name)
    inside = "/" + str(uv[-1].relative_to(root))
    _run(["chroot", str(root), inside, "pip", "install", "--quiet", f"--python={VENV}/bin/python", "--no-index",
          "--find-links=/tmp/singleuser", "--require-hashes", "--no-deps", "--only-binary=:all:", "--no-cache",
          "--compile-bytecode", "--requirements=/tmp/singleuser/requirements.txt"], "installing jupyterhub-singleuser")
    _run(["chroot", str(root), inside, "pip", "check", f"--python={VENV}/bin/python"], "uv pip check in the image")
    shutil.rmtree(scratch)


def _slim(root: Path) -> None:
    """Drop what a container never uses; dpkg forgets the kernel so its database stays true."""
    query = subprocess.run(["chroot", str(root), "dpkg-query", "--show", "--showformat=${Package} ${db:Status-Status}\\n",
                            *KERNEL_PACKAGES], capture_output=True, text=True)  # exit 1: a pattern matched nothing
    installed = [line.split()[0] for line in query.stdout.splitlines() if line.endswith(" installed")]
    if installed:
        _run(["chroot", str(root), "dpkg", "--purge", "--force-depends", *installed], "removing the kernel packages")
    for pattern in DROPPED:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _tar_into(source: Path, dest: Path, mode: str = "u+rwX,go=rX,go-w") -> None:
    """Copy a folder into a layer owned by root, not writable by anyone else, in name order."""
    dest.mkdir(parents=True, exist_ok=True)
    packer = subprocess.Popen(
        ["tar", "-C", str(source), "--create", "--file=-", "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
         f"--mode={mode}", "--hard-dereference", "."],
        stdout=subprocess.PIPE,
    )
    try:
        _run(["tar", "-C", str(dest), "--extract", "--file=-", "--same-owner", "--preserve-permissions"], "tar",
             stdin=packer.stdout)
    finally:
        assert packer.stdout is not None
        packer.stdout.close()
        if packer.wait() != 0:
            raise ApplianceError(f"tar of {source} failed (exit {packer.returncode})")


def _stage_assets(config: LoadedConfig, stage: Path) -> int:
    """The datasets and models where the image's Keras (KERAS_HOME) and notebooks read them."""
    assets = [asset for asset in config.included_assets() if asset.place and asset.kind != "installer"]
    results = place_assets(assets, cache_dir(config.root), stage / "keras", stage / "data" / "notebooks")
    failed = [f"{r.name} ({r.note})" for r in results if r.status == NOT_PLACED]
    if failed:
        raise ApplianceError(f"assets not in the cache: {', '.join(failed)}; run `appliance fetch` first")
    shutil.copyfile(config.manifest_path, stage / "assets.yml")
    return len(results)


def _image_config(config: LoadedConfig) -> list[str]:
    workshop = config.workshop
    env = {
        "HOME": IMAGE_HOME, "USER": IMAGE_USER, "SHELL": "/bin/bash", "LANG": "C.UTF-8",
        "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "KERAS_HOME": f"{PREFIX}/keras", "KERAS_BACKEND": workshop.keras_backend,
        "WORKSHOP_ASSETS_MANIFEST": f"{PREFIX}/assets.yml", "WORKSHOP_LOGDIR": f"{IMAGE_HOME}/logs",
    }
    args = ["--user", f"{IMAGE_UID}:{IMAGE_UID}", "--workingdir", IMAGE_HOME, "--port", str(IMAGE_PORT),
            "--entrypoint", json.dumps(["/usr/local/bin/workshop-start"]), "--cmd", "[]",
            "--label", f"org.opencontainers.image.title={workshop.title}",
            "--label", f"org.opencontainers.image.version={workshop.version}",
            "--label", "org.opencontainers.image.description=Zero to JupyterHub single-user image of the workshop"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return args


def _notebook_layer(buildah: Buildah, base: str, stage: Path, config: LoadedConfig, name: str) -> str:
    container, mount = buildah.new(base)
    _tar_into(stage, mount / PREFIX.lstrip("/") / "notebooks-pristine")
    bin_dir = mount / "usr" / "local" / "bin"
    shutil.copyfile(START_SCRIPT, bin_dir / "workshop-start")
    (bin_dir / "workshop-start").chmod(0o755)
    buildah("config", *_image_config(config), container)
    return buildah.commit(container, name)


@contextmanager
def _host_tmpdir_unset() -> Iterator[None]:
    """A TMPDIR of the build host names no folder inside the chroot (uv and pip there would fail)."""
    saved = os.environ.pop("TMPDIR", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TMPDIR"] = saved


@contextmanager
def _storage(folder: Path) -> Iterator[Buildah]:
    """A fresh private storage, removed afterwards with every container and image in it."""
    _remove_storage(folder)
    folder.mkdir(parents=True)
    buildah = Buildah(folder)
    try:
        yield buildah
    finally:
        _remove_storage(folder, buildah)


def _remove_storage(folder: Path, buildah: Buildah | None = None) -> None:
    if not folder.exists():
        return
    buildah = buildah or Buildah(folder)
    for args in (("rm", "--all"), ("rmi", "--all", "--force")):
        subprocess.run([*buildah.base, *args], capture_output=True)
    below = str(folder.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(below)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def build_image(config: LoadedConfig, out: Path | None = None, log: Callable[[str], None] = print) -> ImageBuild:
    check_build_inputs(config)
    started = time.monotonic()
    stages: dict[str, float] = {}
    final = archive_path(config, out)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".partial")
    work = image_cache(config) / config.workshop.artifact_name
    tarball = ensure_rootfs_tarball(vm_cache(config), log)
    reference = image_reference(config)
    _remove_storage(work)
    work.mkdir(parents=True)
    try:
        with _storage(work / "storage") as buildah:
            mark = time.monotonic()
            container, root = buildah.new("scratch")
            _run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball)],
                 "unpacking the root file system")
            _prepare_user(root)
            log(f"image: root file system unpacked in {time.monotonic() - mark:.0f} s; provisioning it over the chroot "
                "connection (the workshop environment from the wheelhouse)")
            mark = time.monotonic()
            with chroot_session(root), _host_tmpdir_unset():
                report = run_playbook(ChrootConnection(root), config, _quiet(log), IMAGE_PLAYBOOK)
                _install_singleuser(root, config)
            stages["provision"] = time.monotonic() - mark
            log(f"image: provisioned in {stages['provision']:.0f} s ({report.changed} tasks changed); committing the "
                "OS and environment layer")
            mark = time.monotonic()
            notebooks_stage = work / "notebooks"
            shutil.move(root / PREFIX.lstrip("/") / "notebooks-pristine", notebooks_stage)
            _slim(root)
            base = buildah.commit(container, "workshop-base")
            stages["base layer"] = time.monotonic() - mark
            mark = time.monotonic()
            assets_stage = work / "assets"
            count = _stage_assets(config, assets_stage)
            container, mount = buildah.new(base)
            _tar_into(assets_stage, mount / PREFIX.lstrip("/"))
            with_assets = buildah.commit(container, "workshop-assets")
            stages["assets layer"] = time.monotonic() - mark
            log(f"image: {count} assets committed as a read-only layer in {stages['assets layer']:.0f} s")
            image = _notebook_layer(buildah, with_assets, notebooks_stage, config, reference)
            again = _notebook_layer(buildah, with_assets, notebooks_stage, config, "workshop-reproduced")
            layers = buildah.diff_ids(image)
            reproduced = layers[-1] == buildah.diff_ids(again)[-1]
            if not reproduced:
                log("image: warning: the notebook layer differed when committed twice (not reproducible)")
            mark = time.monotonic()
            log(f"image: writing {final.name} (compressing the layers)")
            partial.unlink(missing_ok=True)
            buildah("push", "--quiet", "--format", "oci", image, f"oci-archive:{partial}:{reference}")
            os.replace(partial, final)
            stages["archive"] = time.monotonic() - mark
    finally:
        partial.unlink(missing_ok=True)
        _remove_storage(work)
    seconds = time.monotonic() - started
    log(f"image: {final} ({final.stat().st_size / 1024**3:.2f} GB) in {seconds:.0f} s")
    return ImageBuild(archive=final, reference=reference, push_line=push_command(final, reference), layers=layers,
                      notebook_layer_reproduced=reproduced, seconds=seconds, stage_seconds=stages)


def _quiet(log: Callable[[str], None]) -> Callable[[str], None]:
    """Ansible's task lines only when something goes wrong: the build says what it does itself."""
    def filtered(line: str) -> None:
        if line.startswith(("fatal:", "failed:", "ERROR", "[ERROR]", "An exception")) or "FAILED" in line:
            log(line)
    return filtered

"""workshop.yml: the single source of truth, validated.

The Vagrantfile (Ruby YAML) and Ansible (vars file) read the same file; this schema is
what they may rely on.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from appliance.errors import ConfigError
from appliance.manifest import Manifest, load_manifest
from appliance.validation import fail_at, validate
from appliance.values import check_password_hash, check_ssh_public_key, control_character, one_line
from appliance.yamlfile import load_yaml

MIN_MEMORY_MB = 2048
MAX_MEMORY_MB = 262144  # 256 GiB: more than any laptop; a bigger number is a typo
MAX_LICENSE_BYTES = 64 * 1024
# Names end up in file names (OVA, thumb drive), so they stay FAT-safe and portable.
_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SAFE_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]*")


def _ip_address(value: str, use: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address; use {use}") from None
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Boxes(Strict):
    """The Vagrant box for each provider."""

    virtualbox: StrictStr
    libvirt: StrictStr


def _default_boxes() -> dict[str, Boxes]:
    return {
        "fedora": Boxes(virtualbox="fedora/42-cloud-base", libvirt="fedora/42-cloud-base"),
        "debian": Boxes(virtualbox="debian/trixie64", libvirt="debian/trixie64"),
    }


class VM(Strict):
    os: Literal["fedora", "debian"] = "fedora"
    boxes: dict[Literal["fedora", "debian"], Boxes] = Field(default_factory=_default_boxes)
    memory_mb: StrictInt = Field(default=4096, ge=MIN_MEMORY_MB, le=MAX_MEMORY_MB)
    cpus: StrictInt = Field(default=2, ge=1, le=64)
    video_memory_mb: StrictInt = Field(default=16, ge=16, le=256)
    disk_gb: StrictInt = Field(default=20, ge=8, le=2048)
    # An instructor's ssh public key ("ssh-ed25519 AAAA... name"). Only when it is given does the
    # exported appliance forward an ssh port and authorize this key; otherwise no one logs in over ssh.
    instructor_ssh_key: StrictStr | None = None

    @field_validator("instructor_ssh_key")
    @classmethod
    def _a_public_key(cls, value: str | None) -> str | None:
        return None if value is None else check_ssh_public_key(value.strip())

    @model_validator(mode="after")
    def _box_for_os(self) -> "VM":
        if self.os not in self.boxes:
            raise ValueError(f"no box is given for os {self.os!r}; add vm.boxes.{self.os}")
        return self

    @property
    def box(self) -> Boxes:
        return self.boxes[self.os]


class Ports(Strict):
    host_address: StrictStr = "127.0.0.1"
    jupyter: StrictInt = Field(default=8888, ge=1, le=65535)
    tensorboard: StrictInt = Field(default=6006, ge=1, le=65535)
    ssh: StrictInt = Field(default=2222, ge=1, le=65535)

    @field_validator("host_address")
    @classmethod
    def _an_ip_address(cls, value: str) -> str:
        return _ip_address(value, "127.0.0.1 (this host only) or 0.0.0.0")

    @model_validator(mode="after")
    def _no_clash(self) -> "Ports":
        seen: dict[int, str] = {}
        for name in ("jupyter", "tensorboard", "ssh"):
            port = getattr(self, name)
            if port in seen:
                raise ValueError(f"ports.{name} and ports.{seen[port]} are both {port}; give each its own port")
            seen[port] = name
        return self


class Jupyter(Strict):
    """Jupyter always asks for a secret. With no password hash, a random token is made at
    build (or run) time and printed in the guide: no secret is ever kept in the repo."""

    password_hash: StrictStr | None = None
    root: StrictStr = "notebooks"

    @field_validator("password_hash")
    @classmethod
    def _a_hash_not_a_password(cls, value: str | None) -> str | None:
        return None if value is None else check_password_hash(value)


class Assets(Strict):
    manifest: StrictStr = "assets.yml"
    # null means every asset the manifest lists (installers only go on the thumb drive)
    include: list[StrictStr] | None = None


class Updates(Strict):
    """Where `workshop-update` gets the organizer's newer notebooks after the day: a git URL
    (null: participants give a folder, e.g. a new thumb drive's, with --from)."""

    git_url: StrictStr | None = None
    branch: StrictStr = "main"


# --- the thumb drive's local mode (owned by the thumb-drive code; kept in one place here) ---
# Platforms as appliance/wheels.py names them; each gets wheels, uv and a CPython on the drive.
DRIVE_PLATFORMS = ("win_amd64", "macosx_arm64", "linux_x86_64", "linux_aarch64")


class Drive(Strict):
    """What the thumb drive carries so participants run the workshop without a VM or an install:
    the wheels, uv and a standalone CPython `python` for each of `platforms`. `platforms: []`
    makes a VM-only drive (its guide then offers no local mode)."""

    # No macosx_x86_64: TensorFlow publishes no wheels for Intel Macs (they use the VM).
    platforms: list[Literal["win_amd64", "macosx_arm64", "linux_x86_64", "linux_aarch64"]] = \
        Field(default_factory=lambda: list(DRIVE_PLATFORMS))
    python: Literal["3.11", "3.12", "3.13"] = "3.13"


# Safe POSIX account names (useradd's own rule, without the trailing '$' of machine accounts):
# they name hub users' accounts and home folders.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def check_user_name(value: str) -> str:
    if not USER_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a safe user name; use lower-case letters, digits, '_' or '-', "
            "starting with a letter or '_', at most 32 characters"
        )
    return value


class Hub(Strict):
    """The class JupyterHub (`appliance deploy --mode hub`): who may log in and what each
    participant's server may use. Passwords are never here: `appliance hub slips` makes them."""

    # Roster users who are also hub admins (they get their own password slip like everyone).
    admins: list[StrictStr] = Field(default_factory=list)
    # CSV inside the workshop folder: user name, optional e-mail; null: the admins only.
    roster: StrictStr | None = None
    # The address participants open (printed on the slips); null: https://<the inventory host>/
    url: StrictStr | None = None
    # Where the hub listens on the server: HTTPS, and plain HTTP that only redirects to it.
    bind_address: StrictStr = "0.0.0.0"
    port: StrictInt = Field(default=443, ge=1, le=65535)
    http_port: StrictInt = Field(default=80, ge=1, le=65535)
    memory_mb: StrictInt = Field(default=2048, ge=256, le=MAX_MEMORY_MB)
    cpus: float = Field(default=1.0, gt=0, le=64, strict=True)  # strict: a quoted "2" is a typo
    idle_minutes: StrictInt = Field(default=60, ge=5, le=7 * 24 * 60)
    # How long a participant's server may take to start before the hub calls it failed. Raise it for
    # a slow or small server where the whole class logs in at once (measured: 20 at once in an
    # emulated guest need well over 300 s).
    spawn_timeout_seconds: StrictInt = Field(default=300, ge=30, le=3600)
    # A certificate and its key on the organizer's machine (PEM; absolute, or inside the workshop
    # folder); both null: the server makes a self-signed one.
    tls_cert: StrictStr | None = None
    tls_key: StrictStr | None = None

    @field_validator("admins")
    @classmethod
    def _safe_admins(cls, value: list[str]) -> list[str]:
        for name in value:
            check_user_name(name)
        return value

    @field_validator("bind_address")
    @classmethod
    def _bind_ip(cls, value: str) -> str:
        return _ip_address(value, "0.0.0.0 (every interface) or one of the server's")

    @field_validator("url")
    @classmethod
    def _https_url(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("https://") or any(c.isspace() for c in value)):
            raise ValueError(f"{value!r} is not an https:// address; the hub only serves HTTPS")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Hub":
        if self.port == self.http_port:
            raise ValueError(f"hub.port and hub.http_port are both {self.port}; give each its own port")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both hub.tls_cert and hub.tls_key, or neither (a self-signed certificate is made)")
        return self


class Servers(Strict):
    """The machines `appliance deploy` targets (a class hub, or a personal Jupyter): what they have
    that the VM and the laptops do not. The kubernetes: section has its own `gpu` for its nodes."""

    # true: NVIDIA GPU servers: the deploy installs requirements/workshop-gpu.lock (tensorflow[and-cuda])
    # from cache/wheels/gpu and first checks that the server's NVIDIA driver is loaded and new enough.
    gpu: bool = Field(default=False, strict=True)


# DNS names (RFC 1123): the hub's public host name goes into the proxy's certificate and OAuth callbacks.
_HOST_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+")


# --- the personal mode (`appliance deploy --mode personal`): one user's Jupyter on a remote machine ---
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class Acme(Strict):
    """A certificate from Let's Encrypt (the distribution's certbot, HTTP-01 challenge) for a host
    with a public DNS name; certbot's timer renews it."""

    # The host's public DNS name (its A/AAAA record points at the server; port 80 reachable from
    # the internet while certbot asks for or renews the certificate).
    domain: StrictStr
    # Let's Encrypt's contact for expiry notices.
    email: StrictStr
    # Let's Encrypt's staging CA (untrusted certificates, generous rate limits): for a trial run.
    staging: bool = Field(default=False, strict=True)

    @field_validator("domain")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not _HOST_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a DNS name; write the host's name like gpu1.example.org (no https://, no port)")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.fullmatch(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value


class Personal(Strict):
    """One user's Jupyter (and TensorBoard through it) on a remote machine, HTTPS only, with the
    password `appliance personal password` sets (only its hash is kept, on the organizer's machine)."""

    # Where Jupyter listens on the server. Every interface is fine here: it serves HTTPS only
    # and asks for the password; there is no plain-HTTP port.
    bind_address: StrictStr = "0.0.0.0"
    port: StrictInt = Field(default=8888, ge=1, le=65535)
    # A certificate and its key on the organizer's machine (PEM; absolute, or inside the workshop
    # folder); both null (and no acme): the server makes a self-signed one.
    tls_cert: StrictStr | None = None
    tls_key: StrictStr | None = None
    # Let's Encrypt for a host with a public DNS name (null: given or self-signed certificate).
    acme: Acme | None = None

    @field_validator("bind_address")
    @classmethod
    def _bind_ip(cls, value: str) -> str:
        return _ip_address(value, "0.0.0.0 (every interface) or one of the server's")

    @model_validator(mode="after")
    def _consistent(self) -> "Personal":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both personal.tls_cert and personal.tls_key, or neither (a self-signed certificate is made)")
        if self.acme is not None and self.tls_cert is not None:
            raise ValueError("personal.acme and personal.tls_cert both name a certificate; keep one")
        return self

# An image reference without tag or digest: [registry[:port]/]path, lower case (the OCI rule).
_IMAGE_NAME = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*")
_LABEL_KEY = re.compile(r"([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")


class Kubernetes(Strict):
    """The class on Kubernetes through the Zero to JupyterHub chart (`appliance k8s values`, `k8s size`).
    Who may log in and each participant's memory_mb, cpus and idle_minutes come from `hub:`; only
    what Kubernetes adds is here. No secret is ever here: an OAuth client secret goes to Helm."""

    # The single-user image in the organizer's registry, without a tag (the tag is `version`).
    image: StrictStr = "registry.example.org/dl-workshop/singleuser"
    # Memory the scheduler reserves per participant; null: the limit (hub.memory_mb), so a class
    # running the same cell at the same minute never overcommits a node.
    memory_guarantee_mb: StrictInt | None = Field(default=None, ge=256, le=MAX_MEMORY_MB)
    cpu_guarantee: float = Field(default=0.5, gt=0, le=64, strict=True)
    storage_gb: StrictInt = Field(default=10, ge=1, le=1024)  # each participant's home volume
    # The hub's public DNS name. With it the chart's proxy gets a Let's Encrypt certificate for it;
    # null: the cluster's own ingress terminates TLS in front of the hub.
    host: StrictStr | None = None
    contact_email: StrictStr | None = None  # Let's Encrypt's contact (needed with host)
    # native: roster users sign up with a password of their own and an admin approves each one;
    # github or oauth (any OpenID/OAuth2 provider): the organizer's OAuth app, roster names = provider logins.
    auth: Literal["native", "github", "oauth"] = "native"
    oauth_client_id: StrictStr | None = None
    oauth_authorize_url: StrictStr | None = None  # auth: oauth only: the provider's three endpoints
    oauth_token_url: StrictStr | None = None
    oauth_userdata_url: StrictStr | None = None
    oauth_username_claim: StrictStr = "preferred_username"
    gpu: bool = Field(default=False, strict=True)  # one GPU per participant (needs an image with GPU wheels)
    gpu_node_selector: dict[StrictStr, StrictStr] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})

    @field_validator("image")
    @classmethod
    def _image_name(cls, value: str) -> str:
        if not _IMAGE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an image name; write registry.example.org/path/name, lower case, without :tag")
        return value

    @field_validator("host")
    @classmethod
    def _host_name(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a DNS name; write the hub's name like hub.example.org (no https://, no path)")
        return value

    @field_validator("contact_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @field_validator("oauth_authorize_url", "oauth_token_url", "oauth_userdata_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("https://") or any(c.isspace() for c in value)):
            raise ValueError(f"{value!r} is not an https:// address")
        return value

    @field_validator("oauth_client_id", "oauth_username_claim")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return None if value is None else one_line(value)

    @field_validator("gpu_node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(label):
                raise ValueError(f"{key}: {label!r} is not a Kubernetes node label; use the label your GPU nodes carry")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Kubernetes":
        if self.host is not None and self.contact_email is None:
            raise ValueError("kubernetes.host needs kubernetes.contact_email (Let's Encrypt's contact for the certificate)")
        if self.auth != "native":
            if self.oauth_client_id is None:
                raise ValueError(f"auth {self.auth} needs kubernetes.oauth_client_id (the secret is given to Helm, never here)")
            if self.host is None:
                raise ValueError(f"auth {self.auth} needs kubernetes.host: the OAuth callback is https://HOST/hub/oauth_callback")
        if self.auth == "oauth":
            for key in ("oauth_authorize_url", "oauth_token_url", "oauth_userdata_url"):
                if getattr(self, key) is None:
                    raise ValueError(f"auth oauth needs kubernetes.{key} (the provider's endpoint)")
        return self


class Workshop(Strict):
    name: StrictStr
    version: StrictStr
    title: StrictStr = "Deep Learning Workshop"
    description: StrictStr = ""
    vendor: StrictStr = ""
    url: StrictStr = ""
    vm: VM = Field(default_factory=VM)
    ports: Ports = Field(default_factory=Ports)
    keras_backend: Literal["tensorflow", "jax", "torch"] = "tensorflow"
    jupyter: Jupyter = Field(default_factory=Jupyter)
    notebooks: list[StrictStr] = Field(default_factory=list)
    assets: Assets = Field(default_factory=Assets)
    updates: Updates = Field(default_factory=Updates)
    # A licence text file (inside the repository) participants must accept on import; the OVA
    # carries a EulaSection only when this is given (VBoxManage then needs `--vsys 0 --eula accept`).
    license_file: StrictStr | None = None
    drive: Drive = Field(default_factory=Drive)
    hub: Hub = Field(default_factory=Hub)
    personal: Personal = Field(default_factory=Personal)
    kubernetes: Kubernetes = Field(default_factory=Kubernetes)
    servers: Servers = Field(default_factory=Servers)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _SAFE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} must be lower-case letters, digits, '.', '-' or '_' (it names files)")
        return value

    @field_validator("version")
    @classmethod
    def _safe_version(cls, value: str) -> str:
        if not _SAFE_VERSION.fullmatch(value):
            raise ValueError(f"{value!r} must be letters, digits, '.', '-' or '_' (it names files)")
        return value

    @field_validator("title", "description", "vendor", "url")
    @classmethod
    def _single_line(cls, value: str) -> str:
        return one_line(value)

    @field_validator("url")
    @classmethod
    def _web_address(cls, value: str) -> str:
        if value and (not value.startswith(("https://", "http://")) or any(c.isspace() for c in value)):
            raise ValueError(f"{value!r} is not a web address; write https://... or leave it empty")
        return value

    @property
    def artifact_name(self) -> str:
        """The stem of the OVA and the thumb-drive image: FAT-safe by construction."""
        return f"{self.name}-{self.version}"


class LoadedConfig(BaseModel):
    """A validated workshop.yml with the files it names resolved."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    path: Path
    root: Path
    workshop: Workshop
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / self.workshop.assets.manifest

    @property
    def notebooks_dir(self) -> Path:
        return self.root / self.workshop.jupyter.root

    @property
    def license_path(self) -> Path | None:
        return None if self.workshop.license_file is None else self.root / self.workshop.license_file

    @property
    def roster_path(self) -> Path | None:
        return None if self.workshop.hub.roster is None else self.root / self.workshop.hub.roster

    def hub_tls_paths(self) -> tuple[Path, Path] | None:
        """The organizer's certificate and key (absolute, or relative to the workshop folder)."""
        hub = self.workshop.hub
        if hub.tls_cert is None or hub.tls_key is None:
            return None
        return self.root / hub.tls_cert, self.root / hub.tls_key

    def included_assets(self) -> list:
        return self.manifest.select(self.workshop.assets.include)


def _outside(base: Path, relative: str, inside: str) -> str | None:
    """Why `relative` does not name a place inside `base` (None when it does). Symlinks count
    where they lead: a link out of the repository is refused like a `..`."""
    if "\\" in relative or relative[1:2] == ":":
        return f"{relative!r} is not a relative path with '/'; give a path inside {inside}"
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        return f"{relative!r} is an absolute path; give a path inside {inside}"
    if ".." in pure.parts:
        return f"{relative!r} goes up with '..'; give a path inside {inside}"
    target = (base / relative).resolve()
    if not target.is_relative_to(base.resolve()):
        return f"{relative!r} leads to {target} (a symbolic link) outside {inside}; give a path inside it"
    return None


def _check_license(path: Path, lines: dict, root: Path, relative: str) -> None:
    loc = ("license_file",)
    problem = _outside(root, relative, f"the repository {root}")
    if problem:
        raise fail_at(path, lines, loc, problem)
    licence = root / relative
    if not licence.is_file():
        raise fail_at(path, lines, loc, f"{licence} does not exist; fix the path or add the licence text")
    size = licence.stat().st_size
    if size > MAX_LICENSE_BYTES:
        raise fail_at(path, lines, loc, f"{licence} has {size} bytes, more than {MAX_LICENSE_BYTES // 1024} KiB; shorten it")
    try:
        text = licence.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise fail_at(path, lines, loc, f"{licence} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise fail_at(path, lines, loc, f"cannot read {licence}: {exc.strerror or exc}") from None
    if any(control_character(char) for char in text if char not in "\t\n\r\f"):
        raise fail_at(path, lines, loc, f"{licence} holds binary or control characters; give a plain text file")


def _check_hub(path: Path, lines: dict, root: Path, hub: Hub) -> None:
    if hub.roster is not None:
        problem = _outside(root, hub.roster, f"the workshop folder {root}")
        if problem:
            raise fail_at(path, lines, ("hub", "roster"), problem)
    _check_tls_files(path, lines, root, "hub", hub)


def _check_tls_files(path: Path, lines: dict, root: Path, section: str, settings: Hub | Personal) -> None:
    """hub.tls_cert / personal.tls_cert and their keys: files on the organizer's machine."""
    for key in ("tls_cert", "tls_key"):
        given = getattr(settings, key)
        if given is None:
            continue
        # The key is a secret that belongs outside the repository, so an absolute path is fine here.
        if control_character(given):
            raise fail_at(path, lines, (section, key), "must be one line: the path of a PEM file")
        if not (root / given).is_file():
            raise fail_at(path, lines, (section, key), f"{root / given} does not exist; fix the path or set both tls_cert and tls_key to null")


def _check_kubernetes(path: Path, lines: dict, workshop: Workshop) -> None:
    """Guarantees are what the scheduler reserves: never more than the limits in hub:."""
    k8s, hub = workshop.kubernetes, workshop.hub
    if k8s.memory_guarantee_mb is not None and k8s.memory_guarantee_mb > hub.memory_mb:
        raise fail_at(path, lines, ("kubernetes", "memory_guarantee_mb"),
                      f"{k8s.memory_guarantee_mb} is above the limit hub.memory_mb ({hub.memory_mb}); lower it or raise the limit")
    if k8s.cpu_guarantee > hub.cpus:
        raise fail_at(path, lines, ("kubernetes", "cpu_guarantee"),
                      f"{k8s.cpu_guarantee} is above the limit hub.cpus ({hub.cpus}); lower it or raise the limit")


def network_warnings(workshop: Workshop) -> list[str]:
    """Settings that are valid but expose the appliance beyond this computer."""
    address = workshop.ports.host_address
    if ipaddress.ip_address(address).is_loopback:
        return []
    return [
        f"ports.host_address is {address}: the forwarded Jupyter, TensorBoard and ssh ports are open to other "
        "machines on the network (anyone who has the token can run code); set it to 127.0.0.1 to keep them on this computer"
    ]


def load_config(path: Path) -> LoadedConfig:
    """Read and check workshop.yml and the files it names; raise ConfigError on the first problem."""
    path = Path(path)
    data, lines = load_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the file must be a mapping of keys (name: ..., version: ...)")
    workshop = validate(Workshop, data, path, lines)
    root = path.resolve().parent
    repository = f"the repository {root}"

    for loc, relative in ((("assets", "manifest"), workshop.assets.manifest), (("jupyter", "root"), workshop.jupyter.root)):
        problem = _outside(root, relative, repository)
        if problem:
            raise fail_at(path, lines, loc, problem)
    if workshop.license_file is not None:
        _check_license(path, lines, root, workshop.license_file)

    _check_hub(path, lines, root, workshop.hub)
    _check_tls_files(path, lines, root, "personal", workshop.personal)
    _check_kubernetes(path, lines, workshop)

    manifest_path = root / workshop.assets.manifest
    if not manifest_path.is_file():
        raise fail_at(path, lines, ("assets", "manifest"), f"{manifest_path} does not exist; fix the path")
    manifest = load_manifest(manifest_path)

    known = manifest.by_name()
    for index, name in enumerate(workshop.assets.include or []):
        if name not in known:
            raise fail_at(
                path, lines, ("assets", "include", index), f"{name!r} is not in {workshop.assets.manifest}; add it there or remove it here"
            )

    notebooks_dir = root / workshop.jupyter.root
    for index, notebook in enumerate(workshop.notebooks):
        problem = _outside(notebooks_dir, notebook, f"jupyter.root ({notebooks_dir})")
        if problem:
            raise fail_at(path, lines, ("notebooks", index), problem)
        if not (notebooks_dir / notebook).is_file():
            raise fail_at(
                path, lines, ("notebooks", index), f"{notebooks_dir / notebook} does not exist; fix the name or add the notebook"
            )
    return LoadedConfig(path=path, root=root, workshop=workshop, manifest=manifest)

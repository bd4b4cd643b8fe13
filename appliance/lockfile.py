"""Read requirements/workshop.lock (a `uv pip compile --generate-hashes` file) into pins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

from appliance.errors import ApplianceError


@dataclass(frozen=True)
class Pin:
    """One `name==version ; marker` line of the lock with its allowed sha256 hashes."""

    name: str  # canonical (PEP 503) name
    version: str
    marker: Marker | None
    hashes: frozenset[str]  # hex sha256 digests

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)

    @property
    def requirement(self) -> str:
        """The pin as a hashed requirement line without marker (pip evaluates no markers then)."""
        hashes = " ".join(f"--hash=sha256:{h}" for h in sorted(self.hashes))
        return f"{self.name}=={self.version} {hashes}"


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations and drop comments, as pip reads a requirements file."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_lock(path: Path) -> list[Pin]:
    """Every pin of the lock; a line without `==` or without a hash is an error."""
    if not path.is_file():
        raise ApplianceError(f"{path}: lock file missing; regenerate it with the command in requirements/workshop.in")
    pins: list[Pin] = []
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        if line.startswith("-"):
            continue  # options such as --index-url
        parts = line.split()
        hashes = frozenset(p.split(":", 1)[1] for p in parts if p.startswith("--hash=sha256:"))
        spec = " ".join(p for p in parts if not p.startswith("--hash="))
        requirement, _, marker_text = spec.partition(";")
        name, sep, version = requirement.strip().partition("==")
        if not sep or not hashes:
            raise ApplianceError(f"{path}: '{requirement.strip()}' is not pinned with hashes; regenerate the lock")
        marker = Marker(marker_text.strip()) if marker_text.strip() else None
        pins.append(Pin(canonicalize_name(name), version.strip(), marker, hashes))
    return pins

"""The asset manifest: every file that comes from the internet, with its hash and its place."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.validation import validate
from appliance.yamlfile import load_yaml

# Where an asset is placed inside the workshop environment. The first part of `place`
# names a root: Keras's cache (~/.keras), or the notebooks folder.
PLACE_ROOTS = ("keras", "notebooks")

_HASH = re.compile(r"(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32})")
# An asset's name is its file name in cache/ and on the thumb drive (FAT): plain characters,
# no leading dot (those are the cache's own temp and stamp files), no trailing dot.
_SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+~-]{0,199}(?<!\.)")
# Folders cache/ holds besides the assets (compared ignoring case, as FAT does).
CACHE_FOLDERS = frozenset({"wheels", "vm", "test-fakes", "uv", "python"})
# Names Windows refuses for any file, whatever the extension.
_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)


class Asset(BaseModel):
    """One downloaded file. `hash` is pooch's form: "sha256:<hex>" or, where only the
    framework's published md5 exists, "md5:<hex>"; null until `appliance fetch --pin`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Literal["dataset", "model", "text", "metadata", "image", "installer"]
    urls: list[str] = Field(min_length=1)
    hash: str | None
    size: int | None = Field(default=None, ge=0)
    place: str | None = None
    platform: str | None = None
    description: str = ""

    @field_validator("name")
    @classmethod
    def _fat_safe_name(cls, name: str) -> str:
        if not _SAFE_FILE_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a plain file name; use letters, digits and . _ - + ~ "
                "(not starting or ending with a dot), as the file is called in cache/"
            )
        if name.lower() in CACHE_FOLDERS or _WINDOWS_RESERVED.fullmatch(name):
            raise ValueError(f"{name!r} is a name cache/ or Windows keeps for itself; rename the asset")
        return name

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"{url!r} is not an http(s) URL; give the full download URL")
        return urls

    @field_validator("hash")
    @classmethod
    def _hash_form(cls, value: str | None) -> str | None:
        if value is not None and not _HASH.fullmatch(value):
            raise ValueError(
                f"{value!r} is not 'sha256:<64 hex>' or 'md5:<32 hex>'; run `appliance fetch --pin` to record it"
            )
        return value

    @field_validator("place")
    @classmethod
    def _place_under_known_root(cls, place: str | None) -> str | None:
        if place is None:
            return None
        parts = PurePosixPath(place).parts
        if "\\" in place or any(ord(c) < 32 or ord(c) == 127 for c in place):
            raise ValueError(f"{place!r} must be a plain path with '/' between folders")
        if len(parts) < 2 or parts[0] not in PLACE_ROOTS or ".." in parts:
            raise ValueError(f"{place!r} must start with one of {PLACE_ROOTS} and name a file below it")
        return place

    @model_validator(mode="after")
    def _installers_have_a_platform(self) -> "Asset":
        if self.kind == "installer" and not self.platform:
            raise ValueError("an installer needs `platform` (windows, macos-intel, macos-arm64, linux-deb, linux-rpm)")
        if self.kind != "installer" and self.place is None:
            raise ValueError("needs `place`: where the file goes (keras/... or notebooks/...)")
        return self

    @property
    def algorithm(self) -> str | None:
        return self.hash.split(":", 1)[0] if self.hash else None

    @property
    def digest(self) -> str | None:
        return self.hash.split(":", 1)[1] if self.hash else None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assets: list[Asset]

    @model_validator(mode="after")
    def _unique_names(self) -> "Manifest":
        seen: dict[str, str] = {}
        for asset in self.assets:
            # FAT (the thumb drive) and macOS ignore case: A.bin and a.bin would be one file.
            key = asset.name.casefold()
            if key in seen:
                same = "is used twice" if seen[key] == asset.name else f"differs from {seen[key]!r} only in case"
                raise ValueError(f"asset name {asset.name!r} {same}; names must be unique")
            seen[key] = asset.name
        return self

    def by_name(self) -> dict[str, Asset]:
        return {asset.name: asset for asset in self.assets}

    def select(self, names: list[str] | None) -> list[Asset]:
        """The assets named (all of them for None), in manifest order."""
        if names is None:
            return list(self.assets)
        wanted = set(names)
        return [asset for asset in self.assets if asset.name in wanted]


def load_manifest(path: Path) -> Manifest:
    data, lines = load_yaml(path)
    manifest = validate(Manifest, data, path, lines)
    return manifest

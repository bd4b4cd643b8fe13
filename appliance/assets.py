"""The asset cache: download with pooch, verify by hash, pin new hashes.

Every asset lands in `<cache>/<name>` only after its size and hash were checked: downloads go
to a hidden temporary name in the same directory and are renamed into place, so a broken or
interrupted download never sits in the cache under the real name. A verified file gets a small
stamp (`<cache>/.verified/<name>.json`, keyed by size, mtime and the expected hash) so later
runs skip re-hashing hundreds of megabytes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pooch
import requests
from tqdm import tqdm

from appliance.errors import ApplianceError
from appliance.manifest import Asset, load_manifest

STAMP_DIR = ".verified"
CHUNK_SIZE = 1 << 16

# What happened to an asset; the summary table prints these words.
DOWNLOADED = "downloaded"  # fetched now and verified
VERIFIED = "verified"  # already in the cache; hashed now and correct
CACHED = "cached"  # already in the cache and verified before (stamp still valid)
MISSING = "missing"  # not in the cache (offline)
UNPINNED = "unpinned"  # present, but the manifest has no hash to check it against
PINNED = "pinned"  # downloaded and its sha256 written into the manifest
FAILED = "FAILED"  # every URL failed, or the cached file is wrong

GOOD = frozenset({DOWNLOADED, VERIFIED, CACHED, PINNED, UNPINNED})


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str
    size: int | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in GOOD


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class FetchOptions:
    retries: int = 3  # extra attempts per URL after a network error (not after a 404 or a bad hash)
    timeout: float = 60.0  # seconds without data before a connection counts as failed
    progress: bool | None = None  # tqdm progress bars; None: only when stderr is a terminal
    log: Callable[[str], None] = field(default=_stderr)

    @property
    def show_bars(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else self.progress


def cached_file(cache: Path, asset: Asset) -> Path:
    return cache / asset.name


def unpinned_note(asset: Asset) -> str:
    return f"unpinned: run appliance fetch --pin {asset.name}"


def file_digest(path: Path, algorithm: str) -> str:
    return pooch.file_hash(str(path), alg=algorithm)


# --- verified stamps -------------------------------------------------------------------


def _stamp_path(cache: Path, name: str) -> Path:
    return cache / STAMP_DIR / f"{name}.json"


def _stamp_key(asset: Asset, path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"hash": asset.hash, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _stamp_valid(cache: Path, asset: Asset, path: Path) -> bool:
    try:
        recorded = json.loads(_stamp_path(cache, asset.name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _stamp_key(asset, path)


def _write_stamp(cache: Path, asset: Asset, path: Path) -> None:
    stamp = _stamp_path(cache, asset.name)
    try:
        stamp.parent.mkdir(exist_ok=True)
        tmp = stamp.with_name(stamp.name + ".tmp")
        tmp.write_text(json.dumps(_stamp_key(asset, path)), encoding="utf-8")
        os.replace(tmp, stamp)
    except OSError:
        pass  # a read-only cache (thumb drive) just means re-hashing next time


def _drop_stamp(cache: Path, name: str) -> None:
    try:
        _stamp_path(cache, name).unlink()
    except OSError:
        pass


# --- checking what is in the cache -----------------------------------------------------


def _content_problem(path: Path, asset: Asset) -> str | None:
    """Why this file is not the asset (wrong size or hash), or None if it is."""
    size = path.stat().st_size
    if asset.size is not None and size != asset.size:
        return f"size {size} bytes, expected {asset.size}"
    if asset.hash is None:
        return None
    actual = file_digest(path, asset.algorithm or "sha256")
    if actual != asset.digest:
        return f"{asset.algorithm} mismatch: expected {asset.digest}, got {actual}"
    return None


def check_cached(asset: Asset, cache: Path, *, trust_stamp: bool = True) -> Outcome:
    """What the cache holds for this asset, without any network access."""
    path = cached_file(cache, asset)
    if not path.is_file():
        return Outcome(asset.name, MISSING, asset.size, f"not in {cache}")
    size = path.stat().st_size
    if asset.hash is None:
        problem = _content_problem(path, asset)
        if problem:
            return Outcome(asset.name, FAILED, size, problem)
        return Outcome(asset.name, UNPINNED, size, unpinned_note(asset))
    if trust_stamp and _stamp_valid(cache, asset, path):
        return Outcome(asset.name, CACHED, size)
    problem = _content_problem(path, asset)
    if problem:
        return Outcome(asset.name, FAILED, size, problem)
    _write_stamp(cache, asset, path)
    return Outcome(asset.name, VERIFIED, size)


# --- downloading -------------------------------------------------------------------------


class _Unavailable(Exception):
    """This URL did not deliver the file (HTTP error, connection lost, truncated)."""


class _Rejected(Exception):
    """This URL delivered a file with the wrong size or hash."""


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection closed before the whole file arrived"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect"
    return type(exc).__name__


@contextmanager
def _progress(asset: Asset, options: FetchOptions) -> Iterator[tqdm | bool]:
    if not options.show_bars:
        yield False
        return
    # pooch sets `total` from Content-Length; start non-zero so pooch sees an active bar.
    bar = tqdm(total=asset.size or 1, desc=asset.name[:40], unit="B", unit_scale=True, ncols=100, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def _download_to_temp(url: str, asset: Asset, cache: Path, options: FetchOptions) -> Path:
    """Download url into a hidden temporary file in the cache; retry on network errors."""
    fd, name = tempfile.mkstemp(dir=cache, prefix=f".{asset.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        last = "no attempt made"
        for attempt in range(options.retries + 1):
            started = time.monotonic()
            try:
                with _progress(asset, options) as bar:
                    downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK_SIZE, timeout=options.timeout)
                    downloader(url, str(tmp), None)
                if not options.show_bars:
                    elapsed = time.monotonic() - started
                    options.log(f"  {asset.name}: {tmp.stat().st_size} bytes in {elapsed:.1f} s")
                return tmp
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                last = f"HTTP {status}"
                # Client errors (404, 403) will not change on retry; server errors may.
                if status is not None and status < 500 and status != 429:
                    raise _Unavailable(last) from None
            except requests.RequestException as exc:
                last = _short_error(exc)
            except OSError as exc:  # after requests' errors, which are OSErrors too
                raise ApplianceError(f"{asset.name}: cannot write {tmp}: {exc.strerror or exc}; free space or pass --cache DIR") from None
            if attempt < options.retries:
                delay = min(2**attempt, 10)
                options.log(f"  {asset.name}: {last} from {_host(url)}; retrying in {delay} s")
                time.sleep(delay)
        raise _Unavailable(last)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _download_verified(asset: Asset, cache: Path, options: FetchOptions) -> tuple[str, Path, str]:
    """Try each URL in turn until one yields the right file.

    Returns (url used, temporary path, its sha256). The caller renames the file into place.
    Raises ApplianceError naming every URL's problem when none works.
    """
    problems: list[str] = []
    for url in asset.urls:
        if not options.show_bars:
            options.log(f"downloading {asset.name} from {url}")
        try:
            tmp = _download_to_temp(url, asset, cache, options)
        except _Unavailable as exc:
            problems.append(f"{url}: {exc}")
            continue
        try:
            problem = _content_problem(tmp, asset)
            if problem:
                raise _Rejected(problem)
            sha256 = file_digest(tmp, "sha256")
        except _Rejected as exc:
            tmp.unlink(missing_ok=True)
            problems.append(f"{url}: {exc}")
            options.log(f"  {asset.name}: rejected the file from {_host(url)} ({exc}); deleted it")
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return url, tmp, sha256
    raise ApplianceError(f"{asset.name}: " + "; ".join(problems) + "; nothing was kept")


def _install(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fetch_asset(asset: Asset, cache: Path, options: FetchOptions) -> Outcome:
    """Make sure the cache holds a verified copy of the asset, downloading if needed."""
    current = check_cached(asset, cache)
    if current.status in (CACHED, VERIFIED, UNPINNED):
        return current
    final = cached_file(cache, asset)
    if current.status == FAILED:
        options.log(f"{asset.name}: the cached file is wrong ({current.note}); downloading it again")
        final.unlink()
        _drop_stamp(cache, asset.name)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        url, tmp, _sha256 = _download_verified(asset, cache, options)
    except ApplianceError as exc:
        return Outcome(asset.name, FAILED, asset.size, str(exc))
    _install(tmp, final)
    size = final.stat().st_size
    if asset.hash is None:
        return Outcome(asset.name, UNPINNED, size, unpinned_note(asset))
    _write_stamp(cache, asset, final)
    note = "" if url == asset.urls[0] else f"from mirror {_host(url)}"
    return Outcome(asset.name, DOWNLOADED, size, note)


def pin_asset(asset: Asset, cache: Path, manifest_path: Path, options: FetchOptions) -> Outcome:
    """Download the asset and write its sha256 into the manifest.

    A file already verified against an existing hash is pinned without downloading again;
    an existing hash must still match (set `hash: null` first to accept a changed file).
    """
    current = check_cached(asset, cache)
    final = cached_file(cache, asset)
    if current.status in (CACHED, VERIFIED):
        sha256 = file_digest(final, "sha256")
    else:
        if final.exists():
            final.unlink()
            _drop_stamp(cache, asset.name)
        cache.mkdir(parents=True, exist_ok=True)
        try:
            _url, tmp, sha256 = _download_verified(asset, cache, options)
        except ApplianceError as exc:
            return Outcome(asset.name, FAILED, asset.size, str(exc))
        _install(tmp, final)
    new_hash = f"sha256:{sha256}"
    write_pinned_hash(manifest_path, asset.name, new_hash)
    pinned = asset.model_copy(update={"hash": new_hash})
    _write_stamp(cache, pinned, final)
    return Outcome(asset.name, PINNED, final.stat().st_size, f"{new_hash} written to {manifest_path.name}")


def fetch_assets(
    assets: Sequence[Asset],
    cache: Path,
    *,
    offline: bool = False,
    pin: Sequence[str] = (),
    manifest_path: Path | None = None,
    options: FetchOptions | None = None,
) -> list[Outcome]:
    """Fetch (or, offline, only check) each asset; pin the ones named in `pin`."""
    options = options or FetchOptions()
    logging.getLogger("pooch").setLevel(logging.WARNING)  # we report downloads ourselves
    if offline and pin:
        raise ApplianceError("--pin needs the network to download the file; drop --offline")
    if pin and manifest_path is None:
        raise ApplianceError("--pin needs the manifest to write the hash into")
    if not offline:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ApplianceError(f"cannot create the cache {cache}: {exc.strerror or exc}; pass --cache DIR") from None
    outcomes: list[Outcome] = []
    for asset in assets:
        if offline:
            outcomes.append(check_cached(asset, cache))
        elif asset.name in pin:
            assert manifest_path is not None
            outcomes.append(pin_asset(asset, cache, manifest_path, options))
        else:
            outcomes.append(fetch_asset(asset, cache, options))
    return outcomes


def failure_line(outcomes: Sequence[Outcome], cache: Path, *, offline: bool) -> str | None:
    """One line summing up what went wrong, or None when every asset is usable."""
    missing = [o.name for o in outcomes if o.status == MISSING]
    failed = [o for o in outcomes if o.status == FAILED]
    parts: list[str] = []
    if missing:
        parts.append(
            f"missing from {cache}: {', '.join(missing)}; run `appliance fetch` where there is internet "
            "or copy the files there"
        )
    if failed:
        details = "; ".join(o.note if o.note.startswith(o.name) else f"{o.name}: {o.note}" for o in failed)
        advice = "delete the files and fetch again" if offline else "check the internet connection, then the URLs and hashes in the manifest"
        parts.append(f"{len(failed)} asset(s) failed: {details} ({advice})")
    if not parts:
        return None
    return ("offline: " if offline else "") + " | ".join(parts)


# --- pinning: rewrite one hash line, keeping the rest of the file (and its comments) ------

_ITEM_NAME = re.compile(r"^(?P<indent>\s*)-\s+(?P<key>name:)\s*(?P<q>['\"]?)(?P<name>[^'\"#]+?)(?P=q)\s*(#.*)?$")
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*):")
_HASH_LINE = re.compile(r"^(?P<prefix>\s*hash:\s*)(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")


def write_pinned_hash(manifest_path: Path, name: str, new_hash: str) -> None:
    """Replace the `hash:` value of one manifest entry, leaving every other byte alone."""
    text = manifest_path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    start = key_indent = None
    for index, line in enumerate(lines):
        match = _ITEM_NAME.match(line.rstrip("\r\n"))
        if match and match["name"] == name:
            start, key_indent = index, match.start("key")
            break
    if start is None or key_indent is None:
        raise ApplianceError(f"{manifest_path}: no entry `- name: {name}`; add it before pinning")
    target = None
    for index in range(start + 1, len(lines)):
        body = lines[index].rstrip("\r\n")
        if not body.strip() or body.lstrip().startswith("#"):
            continue
        indent = len(body) - len(body.lstrip())
        if indent < key_indent:
            break  # the next entry or a top-level key
        key = _KEY.match(body)
        if indent == key_indent and key and key["key"] == "hash":
            target = index
            break
    if target is None:
        raise ApplianceError(
            f"{manifest_path}: entry {name!r} has no `hash:` line; add `hash: {new_hash}` to it by hand"
        )
    line = lines[target]
    eol = line[len(line.rstrip("\r\n")):]
    match = _HASH_LINE.match(line.rstrip("\r\n"))
    assert match is not None
    lines[target] = f"{match['prefix']}{new_hash}{match['comment'] or ''}{eol}"
    fd, tmp_name = tempfile.mkstemp(dir=manifest_path.parent, prefix=f".{manifest_path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write("".join(lines))
        os.chmod(tmp, manifest_path.stat().st_mode & 0o777)
        os.replace(tmp, manifest_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    written = load_manifest(manifest_path).by_name()[name].hash
    if written != new_hash:
        raise ApplianceError(f"{manifest_path}: wrote {new_hash} for {name} but read back {written}; fix the entry by hand")

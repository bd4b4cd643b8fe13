"""The asset cache: download with requests, verify by hash (pooch's hashing), pin new hashes.

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
import socket
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
import urllib3
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
    timeout: float = 60.0  # seconds to connect, to wait for data, and to receive STALL_BYTES
    progress: bool | None = None  # tqdm progress bars; None: only when stderr is a terminal
    log: Callable[[str], None] = field(default=_stderr)
    # Hosts whose names did not resolve in this run: later assets do not ask again.
    unresolved: set[str] = field(default_factory=set, compare=False)

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

# A download "makes progress" while at least this much arrives in every `timeout` seconds; a
# server that drips a byte now and then never trips a read timeout, this catches it.
STALL_BYTES = 16 * 1024
_PART = re.compile(r"\..+\.[^.]+\.part")  # mkstemp(prefix=".<name>.", suffix=".part")
LOCK_NAME = ".fetch.lock"
NO_RESOLVER = "*"  # in FetchOptions.unresolved: no name server answered, so no host is tried


class CacheWriteError(ApplianceError):
    """The cache cannot take the file (read-only, full): no other asset would fare better."""


class _Unavailable(Exception):
    """This URL did not deliver the file (HTTP error, connection lost, truncated, stalled)."""


class _Rejected(Exception):
    """This URL delivered (or started to deliver) a file with the wrong size or hash."""


class _Unresolved(Exception):
    """The URL's host name does not resolve: no internet (or a typo); retrying will not help."""


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _hostname(url: str) -> str:
    return urlsplit(url).hostname or url


def _resolution_error(exc: BaseException) -> socket.gaierror | urllib3.exceptions.NameResolutionError | None:
    """The failed DNS lookup in the error chain, if any (requests wraps it twice)."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    found = None
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return current
        if isinstance(current, urllib3.exceptions.NameResolutionError):
            found = current
        if isinstance(current, BaseException):
            pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return found


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)):
        return "connection closed before the whole file arrived"
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect"
    return type(exc).__name__


@contextmanager
def _progress(asset: Asset, options: FetchOptions) -> Iterator[tqdm | None]:
    if not options.show_bars:
        yield None
        return
    bar = tqdm(total=asset.size, desc=asset.name[:40], unit="B", unit_scale=True, ncols=100, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def _stream_to(url: str, tmp: Path, asset: Asset, options: FetchOptions, bar: tqdm | None) -> int:
    """One attempt: write the body into tmp, stopping past the declared size or when it stalls."""
    # identity: the bytes on disk are the bytes hashed and counted, never a decompressed stream.
    headers = {"Accept-Encoding": "identity"}
    with requests.get(url, stream=True, timeout=(options.timeout, options.timeout), headers=headers) as response:
        response.raise_for_status()
        announced = response.headers.get("Content-Length", "")
        expected = int(announced) if announced.isdigit() else None
        if asset.size is not None and expected is not None and expected > asset.size:
            raise _Rejected(f"the server announced {expected} bytes, the manifest declares {asset.size}; nothing downloaded")
        if bar is not None and expected is not None:
            bar.total = expected
        received = mark_bytes = 0
        mark_time = time.monotonic()
        with open(tmp, "wb") as out:
            while chunk := response.raw.read1(CHUNK_SIZE, decode_content=True):
                received += len(chunk)
                if asset.size is not None and received > asset.size:
                    raise _Rejected(f"the server sent more than the {asset.size} bytes the manifest declares; stopped")
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                now = time.monotonic()
                if received - mark_bytes >= STALL_BYTES:
                    mark_time, mark_bytes = now, received
                elif now - mark_time > options.timeout:
                    raise _Unavailable(f"stalled: less than {STALL_BYTES // 1024} KiB in {options.timeout:g} s")
        if expected is not None and received < expected:
            raise _Unavailable("connection closed before the whole file arrived")
        return received


def _download_to_temp(url: str, asset: Asset, cache: Path, options: FetchOptions) -> Path:
    """Download url into a hidden temporary file in the cache; retry on network errors."""
    if NO_RESOLVER in options.unresolved:
        raise _Unresolved("not tried: name resolution does not work here (see above)")
    if _hostname(url) in options.unresolved:
        raise _Unresolved(f"{_hostname(url)} did not resolve (see above)")
    try:
        fd, name = tempfile.mkstemp(dir=cache, prefix=f".{asset.name}.", suffix=".part")
    except OSError as exc:
        raise CacheWriteError(f"cannot write in the cache {cache}: {exc.strerror or exc}; pass --cache DIR") from None
    os.close(fd)
    tmp = Path(name)
    try:
        last = "no attempt made"
        for attempt in range(options.retries + 1):
            started = time.monotonic()
            try:
                with _progress(asset, options) as bar:
                    received = _stream_to(url, tmp, asset, options, bar)
                if not options.show_bars:
                    options.log(f"  {asset.name}: {received} bytes in {time.monotonic() - started:.1f} s")
                return tmp
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                last = f"HTTP {status}"
                # Client errors (404, 403) will not change on retry; server errors may.
                if status is not None and status < 500 and status != 429:
                    raise _Unavailable(last) from None
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                failure = _resolution_error(exc)
                if failure is not None:
                    host = _hostname(url)
                    options.unresolved.add(host)
                    if isinstance(failure, socket.gaierror) and failure.errno == socket.EAI_AGAIN:
                        # No answer from any name server: no internet; every other host would wait too.
                        options.unresolved.add(NO_RESOLVER)
                        raise _Unresolved(f"cannot look up {host}: no name server answers (no internet?)") from None
                    raise _Unresolved(f"{host} does not resolve (no internet, or a wrong host name)") from None
                last = _short_error(exc)
            except _Unavailable as exc:
                last = str(exc)
            except OSError as exc:  # after requests' errors, which are OSErrors too
                raise CacheWriteError(f"{asset.name}: cannot write {tmp}: {exc.strerror or exc}; free space or pass --cache DIR") from None
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
        if not options.show_bars and not {_hostname(url), NO_RESOLVER} & options.unresolved:
            options.log(f"downloading {asset.name} from {url}")
        try:
            tmp = _download_to_temp(url, asset, cache, options)
        except _Unresolved as exc:
            problems.append(str(exc))
            continue
        except _Unavailable as exc:
            problems.append(f"{url}: {exc}")
            continue
        except _Rejected as exc:
            problems.append(f"{url}: {exc}")
            options.log(f"  {asset.name}: rejected the file from {_host(url)} ({exc}); deleted the partial file")
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


@contextmanager
def _exclusive(cache: Path) -> Iterator[None]:
    """One fetch per cache at a time: the temporary files of a running fetch are not stale."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking, and stale files are kept
        yield
        return
    try:
        handle = open(cache / LOCK_NAME, "a+b")
    except OSError:
        yield  # a read-only cache: nothing will be downloaded into it anyway
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ApplianceError(f"another `appliance fetch` is using {cache}; wait for it to finish") from None
        yield


def remove_stale_parts(cache: Path) -> list[Path]:
    """Delete temporary files an interrupted earlier run left (a killed process cleans nothing)."""
    removed: list[Path] = []
    candidates = [*cache.glob(".*.part"), *(cache / STAMP_DIR).glob("*.tmp")]
    for path in candidates:
        if (path.parent == cache and not _PART.fullmatch(path.name)) or not path.is_file() or path.is_symlink():
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


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
    except CacheWriteError:
        raise
    except ApplianceError as exc:
        options.log(f"{exc}")
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
        except CacheWriteError:
            raise
        except ApplianceError as exc:
            options.log(f"{exc}")
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
    if offline:
        return [check_cached(asset, cache) for asset in assets]
    outcomes: list[Outcome] = []
    with _exclusive(cache):
        removed = remove_stale_parts(cache)
        if removed:
            options.log(f"removed {len(removed)} partial download(s) an interrupted earlier run left in {cache}")
        for asset in assets:
            if asset.name in pin:
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
    if len(failed) > 1 and not offline:  # fetch logged each asset's reason on its own line
        details = ", ".join(o.name for o in failed) + " (the reason for each is above)"
    else:
        details = "; ".join(o.note if o.note.startswith(o.name) else f"{o.name}: {o.note}" for o in failed)
    if failed:
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

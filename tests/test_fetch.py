"""`appliance fetch` against a real local HTTP server serving files the tests make.

Covers: a good file downloaded, verified and then skipped without any request; a corrupted
file rejected and not left in the cache; mirror fallback after a 404 and after a truncated
download; retry after a server error; md5-hashed assets; --offline; --pin rewriting only the
hash line; and the repository's own manifest; servers that send more than the declared size,
drip or go silent; a refused connection; host names that do not resolve and a name server that
does not answer; stale partial files; one fetch per cache; Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import ast

import hashlib
import http.server
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from pytest_httpserver import HTTPServer

from appliance.assets import FetchOptions, check_cached, fetch_assets, write_pinned_hash
from appliance.config import load_config
from appliance.manifest import load_manifest

PAYLOAD = os.urandom(200_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def write_workshop(workdir: Path, entries: list[dict]) -> Path:
    """A minimal workshop.yml plus an assets.yml with the given entries; returns workshop.yml."""
    manifest = "# test manifest: keep this comment\nassets:\n"
    for entry in entries:
        manifest += f"  - name: {entry['name']}\n"
        manifest += f"    kind: {entry.get('kind', 'dataset')}\n"
        manifest += "    urls:\n" + "".join(f"      - {url}\n" for url in entry["urls"])
        manifest += f"    hash: {entry.get('hash') or 'null'}  # pinned by hand\n"
        if entry.get("size") is not None:
            manifest += f"    size: {entry['size']}\n"
        manifest += f"    place: {entry.get('place', 'keras/datasets/' + entry['name'])}\n"
    (workdir / "assets.yml").write_text(manifest)
    config = workdir / "workshop.yml"
    config.write_text('name: t\nversion: "1"\nassets:\n  manifest: assets.yml\n')
    return config


def fetch(appliance_cli, config: Path, *args: str):
    return appliance_cli("fetch", "--config", str(config), "--cache", str(config.parent / "cache"), "--retries", "0", *args)


def leftovers(cache: Path) -> list[str]:
    """Temporary download files left in the cache (there must never be any)."""
    return sorted(p.name for p in cache.glob(".*.part")) if cache.is_dir() else []


STATUSES = {"downloaded", "verified", "cached", "missing", "unpinned", "pinned", "FAILED"}


def status_of(stdout: str, name: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(name + " "):
            words = line.split()
            return next(w for w in words[1:] if w in STATUSES)
    raise AssertionError(f"no row for {name} in:\n{stdout}")


def test_good_file_is_cached_verified_and_then_skipped(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/data/a.bin").respond_with_data(PAYLOAD, content_type="application/octet-stream")
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/data/a.bin")],
                                        "hash": f"sha256:{SHA256}", "size": len(PAYLOAD)}])
    cache = tmp_path / "cache"

    first = fetch(appliance_cli, config)
    assert first.returncode == 0, first.stderr
    assert status_of(first.stdout, "a.bin") == "downloaded"
    assert (cache / "a.bin").read_bytes() == PAYLOAD
    assert leftovers(cache) == []
    assert len(httpserver.log) == 1

    second = fetch(appliance_cli, config)
    assert second.returncode == 0, second.stderr
    assert status_of(second.stdout, "a.bin") == "cached"
    assert len(httpserver.log) == 1, "an already verified file must not be requested again"

    # Without the stamp the file is hashed again (still no download).
    for stamp in (cache / ".verified").iterdir():
        stamp.unlink()
    third = fetch(appliance_cli, config)
    assert status_of(third.stdout, "a.bin") == "verified"
    assert len(httpserver.log) == 1


def test_corrupted_file_is_rejected_and_not_kept(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    httpserver.expect_request("/a.bin").respond_with_data(bytes(corrupted))
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")],
                                        "hash": f"sha256:{SHA256}", "size": len(PAYLOAD)}])
    result = fetch(appliance_cli, config)
    assert result.returncode == 1
    assert status_of(result.stdout, "a.bin") == "FAILED"
    cache = tmp_path / "cache"
    assert not (cache / "a.bin").exists()
    assert leftovers(cache) == []
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("appliance: error:")
    assert "a.bin" in error and SHA256 in error and hashlib.sha256(bytes(corrupted)).hexdigest() in error


def test_a_bad_file_already_in_the_cache_is_replaced(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/a.bin").respond_with_data(PAYLOAD)
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")], "hash": f"sha256:{SHA256}"}])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a.bin").write_bytes(b"not the file")
    result = fetch(appliance_cli, config)
    assert result.returncode == 0, result.stderr
    assert status_of(result.stdout, "a.bin") == "downloaded"
    assert (tmp_path / "cache" / "a.bin").read_bytes() == PAYLOAD


def test_mirror_is_used_when_the_first_url_fails(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/gone/a.bin").respond_with_data("not here", status=404)
    httpserver.expect_request("/mirror/a.bin").respond_with_data(PAYLOAD)
    config = write_workshop(tmp_path, [{
        "name": "a.bin",
        "urls": [httpserver.url_for("/gone/a.bin"), httpserver.url_for("/mirror/a.bin")],
        "hash": f"sha256:{SHA256}",
    }])
    result = fetch(appliance_cli, config, "--retries", "2")
    assert result.returncode == 0, result.stderr
    assert status_of(result.stdout, "a.bin") == "downloaded"
    assert "from mirror" in result.stdout
    assert (tmp_path / "cache" / "a.bin").read_bytes() == PAYLOAD
    # A 404 is not retried: one request per URL.
    assert [request.path for request, _ in httpserver.log] == ["/gone/a.bin", "/mirror/a.bin"]


def test_mirror_is_used_when_the_first_url_serves_a_wrong_file(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/bad/a.bin").respond_with_data(b"x" * len(PAYLOAD))
    httpserver.expect_request("/good/a.bin").respond_with_data(PAYLOAD)
    config = write_workshop(tmp_path, [{
        "name": "a.bin", "urls": [httpserver.url_for("/bad/a.bin"), httpserver.url_for("/good/a.bin")],
        "hash": f"sha256:{SHA256}",
    }])
    loaded = load_config(config)
    outcomes = fetch_assets(loaded.manifest.assets, tmp_path / "cache", options=FetchOptions(retries=0, progress=False, log=lambda _: None))
    assert [o.status for o in outcomes] == ["downloaded"]
    assert (tmp_path / "cache" / "a.bin").read_bytes() == PAYLOAD


def test_server_error_is_retried(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_ordered_request("/a.bin").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/a.bin").respond_with_data(PAYLOAD)
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")], "hash": f"sha256:{SHA256}"}])
    result = fetch(appliance_cli, config, "--retries", "1")
    assert result.returncode == 0, result.stderr
    assert "HTTP 503" in result.stderr and "retrying" in result.stderr
    assert len(httpserver.log) == 2


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises the whole payload in Content-Length, sends a third of it, and hangs up."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def truncating_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("hash_known", [True, False], ids=["pinned", "unpinned"])
def test_interrupted_download_leaves_nothing_behind(appliance_cli, truncating_server: str, tmp_path: Path, hash_known: bool) -> None:
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [f"{truncating_server}/a.bin"],
                                        "hash": f"sha256:{SHA256}" if hash_known else None}])
    result = fetch(appliance_cli, config)
    assert result.returncode == 1
    assert status_of(result.stdout, "a.bin") == "FAILED"
    assert "connection closed before the whole file arrived" in result.stderr
    cache = tmp_path / "cache"
    assert not (cache / "a.bin").exists()
    assert leftovers(cache) == []


def test_interrupted_download_falls_back_to_the_mirror(appliance_cli, truncating_server: str, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/a.bin").respond_with_data(PAYLOAD)
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [f"{truncating_server}/a.bin", httpserver.url_for("/a.bin")],
                                        "hash": f"sha256:{SHA256}"}])
    result = fetch(appliance_cli, config)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cache" / "a.bin").read_bytes() == PAYLOAD


def test_md5_asset_is_verified_by_md5(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/weights.h5").respond_with_data(PAYLOAD)
    httpserver.expect_request("/other.h5").respond_with_data(PAYLOAD + b"!")
    config = write_workshop(tmp_path, [
        {"name": "weights.h5", "kind": "model", "urls": [httpserver.url_for("/weights.h5")], "hash": f"md5:{MD5}"},
        {"name": "other.h5", "kind": "model", "urls": [httpserver.url_for("/other.h5")], "hash": f"md5:{MD5}"},
    ])
    result = fetch(appliance_cli, config)
    assert status_of(result.stdout, "weights.h5") == "downloaded"
    assert status_of(result.stdout, "other.h5") == "FAILED"
    assert result.returncode == 1
    assert f"md5 mismatch: expected {MD5}, got {hashlib.md5(PAYLOAD + b'!').hexdigest()}" in result.stderr
    assert (tmp_path / "cache" / "weights.h5").read_bytes() == PAYLOAD
    assert not (tmp_path / "cache" / "other.h5").exists()


def test_offline_with_a_missing_asset_fails_with_one_line(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")], "hash": f"sha256:{SHA256}"}])
    result = fetch(appliance_cli, config, "--offline")
    assert result.returncode == 1
    assert status_of(result.stdout, "a.bin") == "missing"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("appliance: error: offline: missing from ") and "a.bin" in lines[0]
    assert len(httpserver.log) == 0, "--offline must not touch the network"


def test_offline_verifies_what_is_there(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")], "hash": f"sha256:{SHA256}"}])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a.bin").write_bytes(PAYLOAD)
    good = fetch(appliance_cli, config, "--offline")
    assert good.returncode == 0, good.stderr
    assert status_of(good.stdout, "a.bin") == "verified"
    (tmp_path / "cache" / "a.bin").write_bytes(PAYLOAD[:-1] + b"?")
    bad = fetch(appliance_cli, config, "--offline")
    assert bad.returncode == 1
    assert status_of(bad.stdout, "a.bin") == "FAILED"
    assert "sha256 mismatch" in bad.stderr
    assert len(httpserver.log) == 0


def test_unpinned_asset_is_downloaded_and_reported(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/new.txt").respond_with_data(PAYLOAD)
    config = write_workshop(tmp_path, [{"name": "new.txt", "kind": "text", "urls": [httpserver.url_for("/new.txt")],
                                        "place": "notebooks/data/new.txt"}])
    result = fetch(appliance_cli, config)
    assert result.returncode == 0, result.stderr
    assert status_of(result.stdout, "new.txt") == "unpinned"
    assert "unpinned: run appliance fetch --pin new.txt" in result.stdout


def test_pin_writes_the_sha256_into_the_manifest(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/new.txt").respond_with_data(PAYLOAD)
    httpserver.expect_request("/other.bin").respond_with_data(b"other")
    config = write_workshop(tmp_path, [
        {"name": "other.bin", "urls": [httpserver.url_for("/other.bin")]},
        {"name": "new.txt", "kind": "text", "urls": [httpserver.url_for("/new.txt")], "place": "notebooks/data/new.txt"},
    ])
    manifest = tmp_path / "assets.yml"
    before = manifest.read_text().splitlines()

    result = fetch(appliance_cli, config, "--pin", "new.txt")
    assert result.returncode == 0, result.stderr
    assert status_of(result.stdout, "new.txt") == "pinned"

    after = manifest.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(before) == len(after)
    assert changed == [("    hash: null  # pinned by hand", f"    hash: sha256:{SHA256}  # pinned by hand")]
    assert load_manifest(manifest).by_name()["new.txt"].hash == f"sha256:{SHA256}"
    assert load_manifest(manifest).by_name()["other.bin"].hash is None
    assert [request.path for request, _ in httpserver.log] == ["/new.txt"]

    # Now pinned, the cached file counts as verified and is not downloaded again.
    again = fetch(appliance_cli, config, "--only", "new.txt")
    assert status_of(again.stdout, "new.txt") == "cached"
    assert len(httpserver.log) == 1


def test_pin_refuses_a_file_that_contradicts_the_existing_hash(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/a.bin").respond_with_data(b"changed upstream")
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")], "hash": f"md5:{MD5}"}])
    before = (tmp_path / "assets.yml").read_text()
    result = fetch(appliance_cli, config, "--pin", "a.bin")
    assert result.returncode == 1
    assert (tmp_path / "assets.yml").read_text() == before
    assert not (tmp_path / "cache" / "a.bin").exists()


def test_pin_of_an_unknown_asset_names_it(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")]}])
    result = fetch(appliance_cli, config, "--pin", "nope.bin")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "'nope.bin' is not in" in result.stderr
    for bad in (["--retries", "-1"], ["--timeout", "0"]):
        wrong = fetch(appliance_cli, config, *bad)
        assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
        assert wrong.stderr.strip() == f"appliance: error: {bad[0]} must be " + ("0 or more" if bad[0] == "--retries" else "more than 0 seconds")


def test_write_pinned_hash_touches_only_that_entry(tmp_path: Path) -> None:
    manifest = tmp_path / "assets.yml"
    text = (
        "# header\nassets:\n"
        "  - name: a.bin\n    kind: dataset\n    description: >-\n      hash: this is prose, not a key\n"
        "    urls: [https://example.org/a.bin]\n    hash: null\n    place: keras/datasets/a.bin\n\n"
        "  - name: \"b.bin\"   # quoted\n    kind: dataset\n    urls: [https://example.org/b.bin]\n"
        "    hash: null # later\n    place: keras/datasets/b.bin\n"
    )
    manifest.write_text(text)
    write_pinned_hash(manifest, "b.bin", f"sha256:{SHA256}")
    assert manifest.read_text() == text.replace("    hash: null # later", f"    hash: sha256:{SHA256} # later")
    write_pinned_hash(manifest, "a.bin", f"md5:{MD5}")
    data = yaml.safe_load(manifest.read_text())
    assert [a["hash"] for a in data["assets"]] == [f"md5:{MD5}", f"sha256:{SHA256}"]
    assert "hash: this is prose, not a key" in manifest.read_text()


# --- the repository's own manifest ------------------------------------------------------------

EXPECTED_PLACES = {
    "mnist.npz": "keras/datasets/mnist.npz",
    "shakespeare.txt": "notebooks/data/shakespeare.txt",
    "imagenet_class_index.json": "keras/models/imagenet_class_index.json",
    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5": "keras/models/inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5": "keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5": "keras/models/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
}

# The hashes Keras 3 itself checks (keras/src/datasets/mnist.py, keras/src/applications/*.py).
KERAS_PUBLISHED = {
    "mnist.npz": "sha256:731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    "imagenet_class_index.json": "md5:c2c37ea517e94d9795004a39431a14cb",
    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5": "md5:9a0d58056eeedaa3f26cb7ebd46da564",
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5": "md5:253f8cb515780f3b799900260a226db6",
}


def test_repository_manifest_lists_the_workshop_assets(repo_root: Path) -> None:
    manifest = load_manifest(repo_root / "assets.yml").by_name()
    for name, place in EXPECTED_PLACES.items():
        assert manifest[name].place == place
        assert manifest[name].size and manifest[name].size > 0
        assert manifest[name].urls[0].startswith("https://")
    for name, published in KERAS_PUBLISHED.items():
        assert manifest[name].hash == published


def test_keras_sources_publish_these_hashes(repo_root: Path, workshop_python: Path) -> None:
    """Read the hashes straight from the sources of the Keras the lock pins."""
    import subprocess

    keras_dir = subprocess.run(
        [str(workshop_python), "-c", "import importlib.util; print(importlib.util.find_spec('keras').submodule_search_locations[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    src = Path(keras_dir) / "src"
    sources_by_file = [
        (src / rel).read_text()
        for rel in ("datasets/mnist.py", "applications/imagenet_utils.py", "applications/inception_v3.py", "applications/vgg19.py")
    ]
    sources = "".join(sources_by_file)
    url_constants = {
        node.value
        for tree in map(ast.parse, sources_by_file)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("https://")
    }
    manifest = load_manifest(repo_root / "assets.yml").by_name()
    for name in KERAS_PUBLISHED:
        digest = manifest[name].digest
        assert digest in sources, name
        url = manifest[name].urls[0]
        # Keras writes its URLs as a folder constant plus the file name; the parser joins
        # adjacent literals, so one constant must be the URL or a prefix completed elsewhere.
        assert any(url == c or (url.startswith(c) and url[len(c):] in sources) for c in url_constants), url


def test_check_cached_reports_missing(tmp_path: Path, repo_root: Path) -> None:
    asset = load_manifest(repo_root / "assets.yml").by_name()["mnist.npz"]
    assert check_cached(asset, tmp_path).status == "missing"


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    """Sends the headers and part of the data, then stalls until the test lets go."""

    release: threading.Event

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[:150_000])  # more than one read chunk
        self.wfile.flush()
        self.release.wait(30)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def fetch_stopped_mid_download(tmp_path: Path, repo_root: Path, sig: int) -> tuple[int, str, Path]:
    """`appliance fetch` of one asset from a server that stalls mid-file, sent `sig` once its
    temporary file holds data: (exit status, stderr, cache)."""
    import sys

    release = threading.Event()
    handler = type("Handler", (_StallingHandler,), {"release": release})
    try:
        with serving(handler) as base:
            config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [f"{base}/a.bin"], "hash": f"sha256:{SHA256}"}])
            cache = tmp_path / "cache"
            process = subprocess.Popen(
                [sys.executable, "-m", "appliance", "fetch", "--config", str(config), "--cache", str(cache)],
                cwd=repo_root, env={**os.environ, "PYTHONPATH": str(repo_root)},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            try:
                deadline = time.monotonic() + 30
                while not (cache.is_dir() and any(p.stat().st_size > 0 for p in cache.glob(".*.part"))):
                    assert time.monotonic() < deadline, "the download never started"
                    time.sleep(0.05)
                process.send_signal(sig)
                _out, err = process.communicate(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        release.set()
    return process.returncode, err, cache


def test_ctrl_c_during_a_download_leaves_nothing_behind(tmp_path: Path, repo_root: Path) -> None:
    import signal

    returncode, err, cache = fetch_stopped_mid_download(tmp_path, repo_root, signal.SIGINT)
    assert returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (cache / "a.bin").exists()
    assert leftovers(cache) == []


# --- servers that misbehave ------------------------------------------------------------------


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real threaded HTTP server on a free port with the given handler; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


SMALL = b"hello\n"  # a 6-byte asset


class _EndlessHandler(http.server.BaseHTTPRequestHandler):
    """Sends the 6 bytes, then keeps sending until the client goes away; counts what it sent."""

    protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when the connection does
    sent: list[int]
    announce: int | None = None

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        if self.announce is not None:
            self.send_header("Content-Length", str(self.announce))
        self.end_headers()
        total = 0
        try:
            self.wfile.write(SMALL)
            total += len(SMALL)
            block = b"x" * 65536
            while total < 2_000_000_000:
                self.wfile.write(block)
                total += len(block)
        except OSError:
            pass
        finally:
            self.sent.append(total)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("announce", [None, 10_000_000_000], ids=["no-length", "announced-too-big"])
def test_a_server_sending_more_than_the_declared_size_is_stopped(appliance_cli, tmp_path: Path, announce: int | None) -> None:
    sent: list[int] = []
    handler = type("Handler", (_EndlessHandler,), {"sent": sent, "announce": announce})
    with serving(handler) as base:
        config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [f"{base}/a.bin"],
                                            "hash": f"sha256:{hashlib.sha256(SMALL).hexdigest()}", "size": len(SMALL)}])
        before = (tmp_path / "assets.yml").read_text()
        result = appliance_cli("fetch", "--config", str(config), "--cache", str(tmp_path / "cache"), "--retries", "0", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert status_of(result.stdout, "a.bin") == "FAILED"
    expected = "announced 10000000000 bytes, the manifest declares 6" if announce else "sent more than the 6 bytes the manifest declares; stopped"
    assert expected in result.stderr
    assert "deleted the partial file" in result.stderr
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == [".fetch.lock"]  # no a.bin, no .part
    assert (tmp_path / "assets.yml").read_text() == before
    # It stopped reading at once: at most what the socket buffers held, not 445 MB.
    assert sent and sent[0] < 20_000_000, sent


class _DripHandler(http.server.BaseHTTPRequestHandler):
    """Promises the payload, then sends one byte every 0.2 s (or nothing at all)."""

    drip: bool = True

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        try:
            for index in range(len(PAYLOAD) if self.drip else 0):
                self.wfile.write(PAYLOAD[index:index + 1])
                self.wfile.flush()
                time.sleep(0.2)
            time.sleep(30)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("drip", "expected"), [(True, "stalled: less than 16 KiB in 1.5 s"), (False, "timed out")],
                         ids=["slow-drip", "silent"])
def test_a_stalled_transfer_times_out(appliance_cli, tmp_path: Path, drip: bool, expected: str) -> None:
    handler = type("Handler", (_DripHandler,), {"drip": drip})
    with serving(handler) as base:
        config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [f"{base}/a.bin"], "hash": f"sha256:{SHA256}"}])
        # The 20 s subprocess timeout is a guard only; before the fix this never ended.
        result = appliance_cli("fetch", "--config", str(config), "--cache", str(tmp_path / "cache"), "--retries", "0",
                               "--timeout", "1.5", timeout=20)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert status_of(result.stdout, "a.bin") == "FAILED"
    assert expected in result.stderr
    assert leftovers(tmp_path / "cache") == [] and not (tmp_path / "cache" / "a.bin").exists()


def test_a_refused_connection_is_one_short_line(appliance_cli, tmp_path: Path) -> None:
    from freeports import free_port

    port = free_port()  # nothing listens there
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [f"http://127.0.0.1:{port}/a.bin"], "hash": f"sha256:{SHA256}"}])
    result = fetch(appliance_cli, config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("appliance: error: 1 asset(s) failed: a.bin: ") and "could not connect" in error
    assert len(error) < 300, error


def test_without_name_resolution_fetch_fails_fast_with_one_line_per_asset(appliance_cli, tmp_path: Path) -> None:
    names = ["a.bin", "b.bin", "c.bin"]
    config = write_workshop(tmp_path, [
        {"name": name, "urls": [f"https://downloads.does-not-exist.invalid/{name}", f"https://mirror.does-not-exist.invalid/{name}"],
         "hash": f"sha256:{SHA256}"}
        for name in names
    ])
    # Default retries: a name that does not resolve is never retried (that took 77 s).
    started = time.monotonic()
    result = appliance_cli("fetch", "--config", str(config), "--cache", str(tmp_path / "cache"), timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "retrying" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith(tuple(f"{n}: " for n in names))]
    assert [line.split(":")[0] for line in failed] == names
    assert "downloads.does-not-exist.invalid does not resolve (no internet, or a wrong host name)" in failed[0]
    assert "did not resolve (see above)" in failed[1]
    assert all(len(line) < 250 for line in result.stderr.splitlines()), result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("appliance: error: 3 asset(s) failed: a.bin, b.bin, c.bin (the reason for each is above)")
    assert leftovers(tmp_path / "cache") == []
    print(f"fetch without name resolution: {elapsed:.1f} s")


def test_stale_partial_files_are_removed_and_others_kept(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/a.bin").respond_with_data(PAYLOAD)
    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")], "hash": f"sha256:{SHA256}"}])
    cache = tmp_path / "cache"
    (cache / ".verified").mkdir(parents=True)
    (cache / ".a.bin.k3j_x9q2.part").write_bytes(PAYLOAD[:1000])  # what a killed fetch leaves
    (cache / ".mnist.npz.0a1b2c3d.part").write_bytes(b"half")
    (cache / ".verified" / "a.bin.json.tmp").write_text("{")
    (cache / ".my-notes").write_text("mine")  # not ours: kept
    (cache / "notes.part").write_text("mine too")
    result = fetch(appliance_cli, config)
    assert result.returncode == 0, result.stderr
    assert "removed 3 partial download(s) an interrupted earlier run left" in result.stderr
    assert leftovers(cache) == []
    assert not (cache / ".verified" / "a.bin.json.tmp").exists()
    assert (cache / ".my-notes").read_text() == "mine" and (cache / "notes.part").read_text() == "mine too"
    assert (cache / "a.bin").read_bytes() == PAYLOAD


def test_a_second_fetch_on_the_same_cache_is_refused_and_deletes_nothing(appliance_cli, httpserver: HTTPServer, tmp_path: Path) -> None:
    import fcntl

    config = write_workshop(tmp_path, [{"name": "a.bin", "urls": [httpserver.url_for("/a.bin")], "hash": f"sha256:{SHA256}"}])
    cache = tmp_path / "cache"
    cache.mkdir()
    running = cache / ".a.bin.abcdefgh.part"  # the temp file of the fetch that holds the lock
    running.write_bytes(b"in progress")
    with open(cache / ".fetch.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        result = fetch(appliance_cli, config)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"appliance: error: another `appliance fetch` is using {cache}; wait for it to finish"]
    assert running.read_bytes() == b"in progress"
    assert len(httpserver.log) == 0


def test_sigterm_during_a_download_cleans_up_like_ctrl_c(tmp_path: Path, repo_root: Path) -> None:
    import signal

    returncode, err, cache = fetch_stopped_mid_download(tmp_path, repo_root, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "appliance: stopped (SIGTERM); nothing half-written was kept"
    assert "Traceback" not in err
    assert not (cache / "a.bin").exists()
    assert leftovers(cache) == []


def _can_replace_resolv_conf() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "mount", "--bind", "/dev/null", "/etc/resolv.conf"], capture_output=True, timeout=20)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_replace_resolv_conf(), reason="needs root and unshare to give fetch a name server that does not answer")
def test_with_no_name_server_answering_fetch_gives_up_after_one_lookup(tmp_path: Path, repo_root: Path) -> None:
    """As on a laptop with no network: the resolver cannot be reached (EAI_AGAIN), so after the
    first lookup no other host is tried."""
    import sys

    names = ["a.bin", "b.bin", "c.bin"]
    config = write_workshop(tmp_path, [
        {"name": name, "urls": [f"https://host-{name[0]}.example.org/{name}"], "hash": f"sha256:{SHA256}"} for name in names
    ])
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.1\noptions timeout:1 attempts:1\n")  # TEST-NET-1: nobody answers
    inner = " ".join([sys.executable, "-m", "appliance", "fetch", "--config", str(config), "--cache", str(tmp_path / "cache")])
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {resolv} /etc/resolv.conf && exec {inner}"],
                            cwd=repo_root, env={**os.environ, "PYTHONPATH": str(repo_root)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "retrying" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "downloading a.bin from https://host-a.example.org/a.bin"
    assert lines[1].startswith("a.bin: cannot look up host-a.example.org: no name server answers (no internet?)")
    assert lines[2].startswith("b.bin: not tried: name resolution does not work here (see above)")
    assert lines[3].startswith("c.bin: not tried: name resolution does not work here (see above)")
    assert lines[4].startswith("appliance: error: 3 asset(s) failed: a.bin, b.bin, c.bin (the reason for each is above)")
    assert len(lines) == 5
    assert leftovers(tmp_path / "cache") == []


def test_a_cache_that_cannot_be_written_stops_with_one_line(tmp_path: Path, repo_root: Path, httpserver: HTTPServer) -> None:
    import sys

    config = write_workshop(tmp_path, [{"name": name, "urls": [httpserver.url_for(f"/{name}")], "hash": f"sha256:{SHA256}"}
                                       for name in ("a.bin", "b.bin")])
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    command = [sys.executable, "-m", "appliance", "fetch", "--config", str(config), "--cache", str(cache)]
    if os.geteuid() == 0:  # root writes anywhere unless it gives up that capability
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv (util-linux) writes anywhere")
        command = ["setpriv", "--bounding-set", "-dac_override", *command]
    try:
        result = subprocess.run(command, cwd=repo_root, env={**os.environ, "PYTHONPATH": str(repo_root)},
                                capture_output=True, text=True, timeout=30)
    finally:
        cache.chmod(0o755)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [  # b.bin is not even tried
        f"downloading a.bin from {httpserver.url_for('/a.bin')}",
        f"appliance: error: cannot write in the cache {cache}: Permission denied; pass --cache DIR",
    ]
    assert list(cache.iterdir()) == [] and len(httpserver.log) == 0

"""`appliance assets place`: verified cached files land where Keras and the notebooks look."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.placement import place_assets

WEIGHTS = os.urandom(50_000)
DIGITS = os.urandom(30_000)
TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 100


def make_workdir(tmp_path: Path, *, unpinned_text: bool = False) -> Path:
    """A workshop whose cache already holds three verified assets; returns workshop.yml."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist.npz").write_bytes(DIGITS)
    (cache / "w.h5").write_bytes(WEIGHTS)
    (cache / "shakespeare.txt").write_bytes(TEXT)
    text_hash = "null" if unpinned_text else f"sha256:{hashlib.sha256(TEXT).hexdigest()}"
    (tmp_path / "assets.yml").write_text(
        "assets:\n"
        f"  - name: mnist.npz\n    kind: dataset\n    urls: [https://example.org/mnist.npz]\n"
        f"    hash: sha256:{hashlib.sha256(DIGITS).hexdigest()}\n    place: keras/datasets/mnist.npz\n"
        f"  - name: w.h5\n    kind: model\n    urls: [https://example.org/w.h5]\n"
        f"    hash: md5:{hashlib.md5(WEIGHTS).hexdigest()}\n    place: keras/models/w.h5\n"
        f"  - name: shakespeare.txt\n    kind: text\n    urls: [https://example.org/s.txt]\n"
        f"    hash: {text_hash}\n    place: notebooks/data/shakespeare.txt\n"
    )
    config = tmp_path / "workshop.yml"
    config.write_text('name: t\nversion: "1"\n')
    return config


def place(appliance_cli, config: Path, keras_home: Path, notebooks: Path):
    return appliance_cli("assets", "place", "--config", str(config), "--cache", str(config.parent / "cache"),
                         "--keras-home", str(keras_home), "--notebooks", str(notebooks))


def test_assets_go_to_their_places(appliance_cli, tmp_path: Path) -> None:
    config = make_workdir(tmp_path)
    keras_home, notebooks = tmp_path / "keras-home", tmp_path / "nb"
    result = place(appliance_cli, config, keras_home, notebooks)
    assert result.returncode == 0, result.stderr
    assert (keras_home / "datasets" / "mnist.npz").read_bytes() == DIGITS
    assert (keras_home / "models" / "w.h5").read_bytes() == WEIGHTS
    assert (notebooks / "data" / "shakespeare.txt").read_bytes() == TEXT
    # Same file system: hard links, no second copy.
    assert os.path.samefile(keras_home / "models" / "w.h5", tmp_path / "cache" / "w.h5")
    assert result.stdout.count("linked") == 3
    assert not list(keras_home.rglob(".*.part")) and not list(notebooks.rglob(".*.part"))

    again = place(appliance_cli, config, keras_home, notebooks)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("identical") == 3


def test_an_identical_copy_is_left_alone_and_a_wrong_one_replaced(tmp_path: Path) -> None:
    config = make_workdir(tmp_path)
    loaded = load_config(config)
    keras_home, notebooks = tmp_path / "kh", tmp_path / "nb"
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / "w.h5").write_bytes(WEIGHTS)  # a separate, identical copy
    (keras_home / "datasets").mkdir()
    (keras_home / "datasets" / "mnist.npz").write_bytes(b"random weights a test left here")
    before = (keras_home / "models" / "w.h5").stat().st_ino

    results = {r.name: r.status for r in place_assets(loaded.manifest.assets, tmp_path / "cache", keras_home, notebooks)}
    assert results == {"w.h5": "identical", "mnist.npz": "linked", "shakespeare.txt": "linked"}
    assert (keras_home / "models" / "w.h5").stat().st_ino == before
    assert (keras_home / "datasets" / "mnist.npz").read_bytes() == DIGITS


def test_a_corrupted_or_missing_cache_file_is_not_placed(appliance_cli, tmp_path: Path) -> None:
    config = make_workdir(tmp_path)
    (tmp_path / "cache" / "w.h5").write_bytes(WEIGHTS[:-1] + b"\0")
    (tmp_path / "cache" / "mnist.npz").unlink()
    keras_home, notebooks = tmp_path / "kh", tmp_path / "nb"
    result = place(appliance_cli, config, keras_home, notebooks)
    assert result.returncode == 1
    assert not (keras_home / "models" / "w.h5").exists()
    assert not (keras_home / "datasets" / "mnist.npz").exists()
    assert (notebooks / "data" / "shakespeare.txt").read_bytes() == TEXT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "w.h5 (md5 mismatch" in lines[0] and "mnist.npz (missing from the cache)" in lines[0]


def test_unpinned_asset_is_placed_with_a_note(appliance_cli, tmp_path: Path) -> None:
    config = make_workdir(tmp_path, unpinned_text=True)
    result = place(appliance_cli, config, tmp_path / "kh", tmp_path / "nb")
    assert result.returncode == 0, result.stderr
    assert "unpinned: run appliance fetch --pin shakespeare.txt" in result.stdout
    assert (tmp_path / "nb" / "data" / "shakespeare.txt").read_bytes() == TEXT


def test_keras_home_defaults_to_the_environment(appliance_cli, tmp_path: Path) -> None:
    config = make_workdir(tmp_path)
    result = appliance_cli("assets", "place", "--config", str(config), "--cache", str(tmp_path / "cache"),
                           "--notebooks", str(tmp_path / "nb"), env={"KERAS_HOME": str(tmp_path / "from-env")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-env" / "datasets" / "mnist.npz").read_bytes() == DIGITS


SHM = Path("/dev/shm")


@pytest.mark.skipif(not SHM.is_dir() or not os.access(SHM, os.W_OK), reason="needs a second file system (/dev/shm)")
def test_another_file_system_gets_a_copy(tmp_path: Path) -> None:
    config = make_workdir(tmp_path)
    if os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same file system here")
    import tempfile

    with tempfile.TemporaryDirectory(dir=SHM) as other:
        results = place_assets(load_config(config).manifest.assets, tmp_path / "cache", Path(other) / "kh", Path(other) / "nb")
        assert {r.status for r in results} == {"copied"}
        assert (Path(other) / "kh" / "models" / "w.h5").read_bytes() == WEIGHTS


def test_a_place_that_is_a_folder_is_not_placed_and_nothing_is_lost(appliance_cli, tmp_path: Path) -> None:
    config = make_workdir(tmp_path)
    manifest = tmp_path / "assets.yml"
    manifest.write_text(manifest.read_text().replace("place: keras/datasets/mnist.npz", "place: keras/datasets"))
    keras_home = tmp_path / "kh"
    (keras_home / "datasets").mkdir(parents=True)
    (keras_home / "datasets" / "mine.npz").write_bytes(b"a user's own file")
    result = place(appliance_cli, config, keras_home, tmp_path / "nb")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"appliance: error: not placed: mnist.npz ({keras_home / 'datasets'} is a folder; fix the asset's place)"]
    assert (keras_home / "datasets" / "mine.npz").read_bytes() == b"a user's own file"
    assert sorted(p.name for p in (keras_home / "datasets").iterdir()) == ["mine.npz"]

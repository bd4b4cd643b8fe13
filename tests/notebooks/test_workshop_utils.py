"""workshop_utils' asset lookup, results file and timer (no TensorFlow needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import workshop_utils as wu

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_assets_resolve_to_the_manifest_places(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("WORKSHOP_NOTEBOOKS_DIR", str(tmp_path / "nb"))
    monkeypatch.setenv("WORKSHOP_ASSETS_MANIFEST", str(REPO_ROOT / "assets.yml"))
    mnist = tmp_path / "keras" / "datasets" / "mnist.npz"
    mnist.parent.mkdir(parents=True)
    mnist.write_bytes(b"x")
    assert wu.asset_path("mnist.npz") == mnist
    assert wu.asset_path("shakespeare.txt", must_exist=False) == tmp_path / "nb" / "data" / "shakespeare.txt"


def test_a_missing_asset_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(wu.AssetMissing, match=r"mnist.npz is missing .*`bin/appliance fetch`.*thumb drive"):
        wu.asset_path("mnist.npz")
    with pytest.raises(KeyError, match="not in the manifest"):
        wu.asset_path("nonexistent.bin")


def test_a_missing_asset_is_one_line_in_a_real_kernel(tmp_path):
    """What the notebook shows: a real IPython kernel renders the error as one line, not a traceback."""
    from jupyter_client.manager import start_new_kernel

    replies: list[dict] = []
    km, kc = start_new_kernel(kernel_name="python3", env={**os.environ, "KERAS_HOME": str(tmp_path),
                                                          "PYTHONPATH": str(REPO_ROOT / "notebooks")})
    try:
        kc.execute_interactive("import workshop_utils as wu\nwu.load_mnist()", timeout=60,
                               output_hook=replies.append)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    errors = [m["content"] for m in replies if m["msg_type"] == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "AssetMissing"
    lines = errors[0]["traceback"]
    assert len(lines) == 1, lines
    assert "bin/appliance fetch" in lines[0] and "thumb drive" in lines[0]



def test_manifest_found_by_walking_up_and_its_places_win(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKSHOP_ASSETS_MANIFEST", raising=False)
    (tmp_path / "assets.yml").write_text(
        "assets:\n  - name: mnist.npz\n    place: keras/elsewhere/mnist.npz\n"
        "  - name: extra.csv\n    place: notebooks/data/extra.csv\n")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    assert wu.find_manifest(notebooks) == tmp_path / "assets.yml"
    monkeypatch.setenv("WORKSHOP_NOTEBOOKS_DIR", str(notebooks))
    places = wu.asset_places()
    assert places["mnist.npz"] == "keras/elsewhere/mnist.npz" and places["extra.csv"] == "notebooks/data/extra.csv"
    assert places["shakespeare.txt"] == "notebooks/data/shakespeare.txt"  # defaults fill the rest


def test_results_are_merged_into_one_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKSHOP_RESULTS_DIR", str(tmp_path))
    wu.save_results("nb", accuracy=0.5)
    path = wu.save_results("nb", loss=[1, 2], nested={"a": (1, 2)})
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "loss": [1, 2], "nested": {"a": [1, 2]}}
    with wu.timed("work") as timer:
        pass
    assert timer.seconds >= 0 and "work: " in capsys.readouterr().out

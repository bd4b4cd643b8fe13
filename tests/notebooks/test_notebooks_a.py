"""Notebooks 00, 01, 02, 06, 08-X, 08-Z executed top to bottom in quick mode, on generated
assets at the real places, with assertions on what each one computed."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import cell_text

pytestmark = pytest.mark.notebooks


def test_framework_basics_trains_logistic_regression(execute_notebook, notebook_env):
    nb = execute_notebook("00-framework-basics.ipynb")
    results = notebook_env.results("00-framework-basics")
    # two separable-ish clouds: hand-written gradient descent must beat chance clearly
    assert results["test_accuracy"] > 0.8
    assert results["final_loss"] < results["first_loss"]
    assert "TypeError:" in cell_text(nb)  # the pitfall is shown, not crashed on


def test_mnist_mlp_learns_and_runs_the_experiments(execute_notebook, notebook_env):
    nb = execute_notebook("01-mnist-mlp.ipynb")
    results = notebook_env.results("01-mnist-mlp")
    assert results["test_accuracy"] > 0.5  # chance is 0.1 on the generated digits
    assert set(results["near_zero_fraction"]) == {"none", "L1", "L2"}
    text = cell_text(nb)
    for label in ("batch 16", "batch 1024", "SGD+momentum", "dropout 0.5"):
        assert label in text


def test_mnist_cnn_learns_and_reloads_identically(execute_notebook, notebook_env):
    execute_notebook("02-mnist-cnn.ipynb")
    results = notebook_env.results("02-mnist-cnn")
    assert results["test_accuracy"] > 0.5
    assert results["augmented_accuracy"] > 0.3
    assert results["reloaded_identical"] is True
    assert (notebook_env.notebooks_dir / "results" / "02-mnist-cnn.keras").is_file()


def test_rnn_learns_below_uniform_and_samples_each_temperature(execute_notebook, notebook_env):
    execute_notebook("06-rnn-shakespeare.ipynb", {"temperatures": [0.2, 1.0, 1.5]})
    results = notebook_env.results("06-rnn-shakespeare")
    # below the loss of a uniform guess means it learned the text's statistics
    assert results["final_loss"] < results["uniform_loss"] - 0.3
    assert set(results["samples"]) == {"0.2", "1.0", "1.5"}
    for sample in results["samples"].values():
        assert sample.startswith("ROMEO:") and len(sample) > len("ROMEO:") + 50


def test_numerical_library_check_measures_gemm_and_omp_threads(execute_notebook, notebook_env):
    execute_notebook("08-X-numerical-library-check.ipynb")
    results = notebook_env.results("08-X-numerical-library-check")
    assert results["gflops"] and all(value > 0 for value in results["gflops"].values())
    assert "1-float64" in results["gflops"]
    runs = results["omp_runs"]
    # a fresh interpreter honours OMP_NUM_THREADS=1: its BLAS pool has one thread
    assert runs["OMP_NUM_THREADS=1"]["threads"] == [1]
    cores = results["cores"]
    assert runs[f"OMP_NUM_THREADS={cores}"]["threads"] == [cores]
    assert all(run["gflops"] > 0 for run in runs.values())


# --- 08-Z: the GPU chooser's refresh against pages served locally -------------------------

SPEC_PAGE = """<html><body><h2>GeForce 40 series</h2>
<table class="wikitable">
<tr><th rowspan="2">Model name</th><th rowspan="2">Launch</th><th colspan="2">Memory</th>
    <th colspan="2">Processing power (GFLOPS)</th><th rowspan="2">Release price (USD)</th></tr>
<tr><th>Size (GiB)</th><th>Bandwidth (GB/s)</th><th>Half precision</th><th>Single precision</th></tr>
<tr><th>GeForce RTX 4090</th><td>Oct 12, 2022</td><td>24</td><td>1008</td><td>82,580</td>
    <td>82,580<sup>[12]</sup></td><td>$1,599</td></tr>
<tr><th>GeForce RTX 9999</th><td rowspan="2">2027</td><td>48</td><td>2,000</td><td>300,000</td>
    <td>150,000</td><td>$2,999</td></tr>
<tr><th>GeForce RTX 9990</th><td>32</td><td>1,500</td><td>200,000</td><td>100,000</td><td></td></tr>
</table></body></html>"""

CHANGED_PAGE = """<html><body><table class="wikitable">
<tr><th>GPU</th><th>VRAM</th><th>Speed</th></tr><tr><td>RTX 4090</td><td>24 GB</td><td>fast</td></tr>
</table></body></html>"""


def refresh_in_workshop_python(python: Path, url: str) -> dict:
    notebooks = Path(__file__).resolve().parents[2] / "notebooks"
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(notebooks)!r})
        import gpu_chooser
        result = gpu_chooser.refresh({url!r}, timeout=5)
        snapshot = gpu_chooser.load_snapshot()
        print(json.dumps({{"refreshed": result.refreshed, "message": result.message,
                          "rows": result.rows, "snapshot_rows": len(snapshot)}}))
    """)
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_gpu_refresh_parses_the_expected_layout(workshop_python, httpserver):
    httpserver.expect_request("/wiki/gpus").respond_with_data(SPEC_PAGE, content_type="text/html")
    url = httpserver.url_for("/wiki/gpus")
    result = refresh_in_workshop_python(workshop_python, url)
    assert result["refreshed"] is True, result["message"]
    rows = {row["name"]: row for row in result["rows"]}
    assert len(result["rows"]) == result["snapshot_rows"] + 2  # two new GPUs; the 4090 is updated in place
    new = rows["GeForce RTX 9999"]
    assert (new["memory_gb"], new["bandwidth_gbs"], new["fp32_tflops"], new["fp16_tflops"], new["price_usd"]) == \
        (48, 2000, 150, 300, 2999)
    # the rowspan of "Launch" must not shift the next row's columns
    assert (rows["GeForce RTX 9990"]["memory_gb"], rows["GeForce RTX 9990"]["price_usd"]) == (32, None)
    updated = rows["GeForce RTX 4090"]
    assert updated["fp32_tflops"] == pytest.approx(82.58) and updated["source"] == url
    assert updated["price_usd"] == 1599


def test_gpu_refresh_says_when_the_layout_changed(workshop_python, httpserver):
    httpserver.expect_request("/wiki/gpus").respond_with_data(CHANGED_PAGE, content_type="text/html")
    result = refresh_in_workshop_python(workshop_python, httpserver.url_for("/wiki/gpus"))
    assert result["refreshed"] is False
    assert "layout has changed" in result["message"] and "bandwidth" in result["message"]
    assert len(result["rows"]) == result["snapshot_rows"]


def test_gpu_refresh_falls_back_to_the_snapshot_when_unreachable(workshop_python):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = refresh_in_workshop_python(workshop_python, f"http://127.0.0.1:{port}/wiki/gpus")
    assert result["refreshed"] is False
    assert result["message"].startswith("could not read") and "snapshot" in result["message"]
    assert len(result["rows"]) == result["snapshot_rows"] > 10


def test_gpu_chooser_notebook_scores_and_refreshes(execute_notebook, notebook_env, httpserver):
    httpserver.expect_request("/wiki/gpus").respond_with_data(SPEC_PAGE, content_type="text/html")
    execute_notebook("08-Z-gpu-chooser.ipynb", {"spec_url": httpserver.url_for("/wiki/gpus")})
    results = notebook_env.results("08-Z-gpu-chooser")
    assert results["refreshed"] is True
    assert "GeForce RTX 9999" in results["names"]
    assert results["best_buy"] and results["best_rent"]


def test_fake_mnist_has_the_real_format_and_is_learnable(notebook_env):
    path = notebook_env.fake_asset("mnist.npz")
    assert path == notebook_env.keras_home / "datasets" / "mnist.npz"
    script = textwrap.dedent(f"""
        import json, numpy as np
        d = np.load({str(path)!r})
        info = {{k: [list(d[k].shape), str(d[k].dtype)] for k in d.files}}
        # nearest class mean: a model that learns nothing scores ~0.1
        x, y, xt, yt = (d[k].astype("float32") for k in ("x_train", "y_train", "x_test", "y_test"))
        means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
        pred = ((xt[:, None] - means[None]) ** 2).sum(axis=(2, 3)).argmin(axis=1)
        info["accuracy"] = float((pred == yt).mean())
        print(json.dumps(info))
    """)
    done = subprocess.run([str(notebook_env.python), "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["x_train"][0][1:] == [28, 28] and info["x_train"][1] == "uint8"
    assert info["y_train"] == [[info["x_train"][0][0]], "uint8"]
    assert info["x_test"][0][1:] == [28, 28] and info["y_test"][1] == "uint8"
    assert 0.5 < info["accuracy"]

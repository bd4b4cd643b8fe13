"""Notebooks 00, 01, 02, 06, 08-X, 08-Z executed top to bottom in quick mode, on generated
assets at the real places, with assertions on what each one computed."""

from __future__ import annotations

import json
import math
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

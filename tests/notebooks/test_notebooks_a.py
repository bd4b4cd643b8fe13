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

"""Notebooks 03, 04, 05 and 07 executed top to bottom in quick mode, with random pretrained weights
in the real file format at the real places, with assertions on what each one computed."""

from __future__ import annotations

import re

import pytest

from conftest import cell_text
from fake_weights import place_weights

pytestmark = pytest.mark.notebooks

TOP5_LINE = re.compile(r"^\s+([1-5])\. (.+?)\s+(\d\.\d{4})$", re.M)


def test_imagenet_classification_prints_top5_and_timings(execute_notebook, notebook_env):
    place_weights(notebook_env, ["inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                                 "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"])
    nb = execute_notebook("03-imagenet-classification.ipynb", assets=["imagenet_class_index.json"])
    results = notebook_env.results("03-imagenet-classification")
    text = cell_text(nb)
    assert set(results["seconds_per_image"]) == {"InceptionV3", "MobileNetV2"}
    assert all(0 < seconds < 30 for seconds in results["seconds_per_image"].values())
    photos = results["photos"]
    assert len(photos) >= 2
    for model_name, per_photo in results["predictions"].items():
        assert set(per_photo) == set(photos)
        for top5 in per_photo.values():
            assert len(top5) == 5
            probabilities = [p for _, p in top5]
            assert probabilities == sorted(probabilities, reverse=True)
            assert 0 < sum(probabilities) <= 1 + 1e-5
            # the names come from the class index file the test generated, not from Keras's copy
            assert all(name.startswith("class_") for name, _ in top5)
    printed = TOP5_LINE.findall(text)
    assert len(printed) == 5 * len(photos) * 2  # five lines per photo, for each model
    assert "s per image" in text


def test_commerce_transfer_learning_beats_chance(execute_notebook, notebook_env):
    from PIL import Image

    place_weights(notebook_env, ["mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"])
    nb = execute_notebook("04-commerce-transfer-learning.ipynb")
    results = notebook_env.results("04-commerce-transfer-learning")
    assert results["classes"] == ["flowers", "mug"]
    assert results["feature_dim"] == 1280  # the global-average-pool output of MobileNetV2
    assert results["accuracy"] > results["chance"] + 0.2
    matrix = results["confusion_matrix"]
    assert len(matrix) == 2 and sum(map(sum, matrix)) == results["n_images"]
    assert "cross-validated accuracy" in cell_text(nb)
    with Image.open(notebook_env.notebooks_dir / "results" / "04-confusion-matrix.png") as plot:
        assert plot.size[0] > 100 and plot.size[1] > 100  # the confusion matrix was drawn


def test_style_transfer_writes_an_image(execute_notebook, notebook_env):
    from PIL import Image

    place_weights(notebook_env, ["vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"])
    execute_notebook("05-art-style-transfer.ipynb", {"quick": True, "image_size": [48, 64]})
    results = notebook_env.results("05-art-style-transfer")
    output = notebook_env.notebooks_dir / results["output_image"]
    assert output.is_file()
    with Image.open(output) as image:
        image.verify()
    with Image.open(output) as image:
        assert image.size == (64, 48) and image.mode == "RGB"
    assert results["losses"][-1] < results["losses"][0]  # the optimiser made progress


def test_bubble_breaker_agent_beats_random(execute_notebook, notebook_env):
    execute_notebook("07-rl-bubble-breaker.ipynb")
    results = notebook_env.results("07-rl-bubble-breaker")
    assert (results["rows"], results["cols"], results["n_colors"]) == (5, 5, 3)
    assert len(results["curve_scores"]) == len(results["curve_episodes"]) >= 2
    assert results["agent_score"] > results["random_score"] * 1.05

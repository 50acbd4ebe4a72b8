"""The module and the CLI give the same scores for the same model and images."""

import json
import os
import subprocess

import pytest

import patchcore
from conftest import BUILD


def cli_predict(model_file, images):
    exe = os.path.join(BUILD, "patchcore")
    if not os.path.exists(exe):
        pytest.fail(f"{exe} not built")
    out = subprocess.run([exe, "predict", "--model", str(model_file)] + [str(i) for i in images],
                         check=True, capture_output=True, text=True).stdout
    return {j["path"]: j for j in map(json.loads, out.splitlines())}


def test_scores_equal_the_cli_for_paths_and_arrays(model, tmp_path, test_images):
    model_file = tmp_path / "m.patchcore"
    model.save(model_file)
    cli = cli_predict(model_file, test_images)
    assert len(cli) == len(test_images)
    from_paths = model.predict(test_images)
    from_arrays = model.predict([patchcore.load_image(p) for p in test_images])
    for path, by_path, by_array in zip(test_images, from_paths, from_arrays):
        want = cli[str(path)]
        for p in (by_path, by_array):
            assert p.score == pytest.approx(want["score"], abs=1e-6, rel=1e-6)
            assert p.normalized_score == pytest.approx(want["normalized_score"], abs=1e-6)
            assert p.label == want["label"]
            assert p.threshold == want["threshold"]


def test_a_model_fitted_by_the_cli_loads_and_agrees(data, tmp_path, test_images):
    model_file = tmp_path / "cli.patchcore"
    subprocess.run([os.path.join(BUILD, "patchcore"), "fit", "--data", str(data / "train"),
                    "--out", str(model_file), "--backbone", "mobilenet_v2", "--image-size", "96"],
                   check=True, capture_output=True)
    loaded = patchcore.load(model_file)
    cli = cli_predict(model_file, test_images)
    for p in loaded.predict(test_images):
        assert p.score == pytest.approx(cli[p.path]["score"], abs=1e-6, rel=1e-6)
    # The same fit from Python gives the same model: the same scores.
    ours = patchcore.fit(data / "train", backbone="mobilenet_v2", image_size=96)
    for p in ours.predict(test_images):
        assert p.score == pytest.approx(cli[p.path]["score"], abs=1e-6, rel=1e-6)

"""patchcore.evaluate returns the metrics `patchcore eval` writes, for the same model and data."""

import json
import os
import subprocess

import numpy as np
import pytest

import patchcore
from conftest import BUILD, FAST, texture, write_png


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    """An MVTec-layout folder: train/good, test/good, test/square with masks."""
    root = tmp_path_factory.mktemp("mvtec")
    for d in ("train/good", "test/good", "test/square", "ground_truth/square"):
        (root / d).mkdir(parents=True)
    for i in range(10):
        write_png(root / "train/good" / f"{i:03d}.png", texture(i))
    mask = np.zeros((120, 160, 3), np.uint8)
    mask[40:62, 50:84] = 255
    for i in range(4):
        write_png(root / "test/good" / f"{i:03d}.png", texture(100 + i))
        write_png(root / "test/square" / f"{i:03d}.png", texture(200 + i, defect=True))
        write_png(root / "ground_truth/square" / f"{i:03d}_mask.png", mask)
    return root


def test_metrics_equal_the_cli_eval(mvtec, tmp_path):
    model = patchcore.fit(mvtec, **FAST)
    model_file = tmp_path / "m.patchcore"
    model.save(model_file)
    metrics = patchcore.evaluate(model, mvtec)
    assert list(tmp_path.iterdir()) == [model_file]  # no out: no file written
    assert metrics["image_auroc"] == 1.0 and metrics["pixel_auroc"] > 0.9
    subprocess.run([os.path.join(BUILD, "patchcore"), "eval", "--model", str(model_file),
                    "--data", str(mvtec), "--out", str(tmp_path / "eval")],
                   check=True, capture_output=True)
    cli = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics.keys() == cli.keys()
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "image_threshold"):
        assert metrics[key] == pytest.approx(cli[key], rel=1e-9, abs=1e-9), key


def test_evaluate_writes_the_eval_files_when_asked(mvtec, tmp_path):
    model = patchcore.fit(mvtec, **FAST)
    calls = []
    metrics = patchcore.evaluate(model, mvtec, out=tmp_path / "e", write_images=False,
                                 progress=lambda *a: calls.append(a))
    assert json.loads((tmp_path / "e" / "metrics.json").read_text()) == metrics
    assert (tmp_path / "e" / "report.html").exists()
    assert calls and calls[-1][1] == calls[-1][2]


def test_evaluate_errors(model, tmp_path, data):
    with pytest.raises(FileNotFoundError, match="data: no such file"):
        patchcore.evaluate(model, tmp_path / "none")
    with pytest.raises(ValueError, match=str(data / "train")):
        patchcore.evaluate(model, data / "train")  # a plain folder: no labelled test images

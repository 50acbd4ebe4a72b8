"""Fit and predict from folders, paths and arrays; parameters, presets, progress, logging."""

import logging

import numpy as np
import pytest

import patchcore
from conftest import FAST, texture


def test_predict_from_a_path_gives_the_documented_fields(model, test_images):
    p = model.predict(test_images[0])
    assert p.path == str(test_images[0])
    assert isinstance(p.score, float) and 0 <= p.normalized_score <= 1
    assert p.label == ("anomalous" if p.anomalous else "normal")
    assert p.anomalous == (p.score >= model.threshold)
    # The map is at the image's own size, float32; the mask is the pixel threshold applied.
    assert p.anomaly_map.shape == (120, 160) and p.anomaly_map.dtype == np.float32
    assert p.mask.dtype == np.bool_
    np.testing.assert_array_equal(p.mask, p.anomaly_map >= model.calibration["pixel_threshold"])


def test_defects_score_above_normal_images_and_the_map_points_at_them(model, test_images):
    preds = {p.path.split("/")[-1]: p for p in model.predict(test_images)}
    defect = [preds[f"defect{i}.png"] for i in range(3)]
    good = [preds[f"good{i}.png"] for i in range(3)]
    assert min(p.score for p in defect) > max(p.score for p in good)
    assert all(p.label == "anomalous" for p in defect)
    for p in defect:  # the pasted square (rows 40-62, columns 50-84) holds the hottest pixel
        y, x = np.unravel_index(np.argmax(p.anomaly_map), p.anomaly_map.shape)
        assert 30 <= y <= 72 and 40 <= x <= 94


def test_folder_list_of_paths_and_arrays_give_the_same_predictions(model, data, test_images):
    from_folder = model.predict(data / "test")
    from_paths = model.predict([str(p) for p in test_images])
    arrays = [patchcore.load_image(p) for p in test_images]
    from_arrays = model.predict(arrays)
    assert [p.path for p in from_folder] == [str(p) for p in test_images]
    assert [p.path for p in from_arrays] == [f"images[{i}]" for i in range(len(arrays))]
    for a, b, c in zip(from_folder, from_paths, from_arrays):
        assert a.score == b.score == c.score
        np.testing.assert_array_equal(a.anomaly_map, c.anomaly_map)
    # One array alone gives one prediction, equal to the batch's.
    single = model.predict(arrays[1])
    assert isinstance(single, patchcore.Prediction) and single.score == from_arrays[1].score


def test_mixed_list_of_paths_and_arrays(model, test_images):
    arrays = [patchcore.load_image(p) for p in test_images[:2]]
    mixed = model.predict([test_images[0], arrays[1]])
    assert mixed[0].path == str(test_images[0]) and mixed[1].path == "images[1]"
    assert mixed[0].score == model.predict(arrays[0]).score
    assert mixed[1].score == model.predict(test_images[1]).score


def test_grey_rgba_and_strided_arrays(model, test_images):
    rgb = patchcore.load_image(test_images[3])
    want = model.predict(rgb).score
    # RGBA: the alpha is ignored.
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert model.predict(rgba).score == want
    # A crop of a larger array (rows apart by the larger width) is read in place.
    big = np.zeros((rgb.shape[0] + 10, rgb.shape[1] + 30, 3), np.uint8)
    big[5:-5, 20:-10] = rgb
    crop = big[5:-5, 20:-10]
    assert not crop.flags.c_contiguous
    assert model.predict(crop).score == want
    # Layouts a row stride cannot describe are copied: Fortran order, every other pixel, BGR view.
    assert model.predict(np.asfortranarray(rgb)).score == want
    wide = np.repeat(rgb, 2, axis=1)
    assert model.predict(wide[:, ::2]).score == want
    assert model.predict(rgb[:, :, ::-1][:, :, ::-1]).score == want
    # Grey: one channel replicated; H x W and H x W x 1 agree.
    grey = rgb[:, :, 1]
    g = model.predict(grey)
    assert g.score == model.predict(grey[:, :, None]).score
    assert g.score == model.predict(np.repeat(grey[:, :, None], 3, axis=2)).score


def test_fit_from_arrays_equals_fit_from_the_files(data):
    files = sorted((data / "train").glob("*.png"))
    from_files = patchcore.fit(files, **FAST)
    from_arrays = patchcore.fit([patchcore.load_image(f) for f in files], **FAST)
    probe = texture(300, defect=True)
    assert from_files.predict(probe).score == from_arrays.predict(probe).score


def test_every_parameter_is_a_keyword_with_the_library_defaults(data):
    defaults = patchcore.default_params()
    assert defaults["backbone"] == "inception_v3" and defaults["coreset_ratio"] == 0.01
    assert defaults["intensity"] == "auto" and defaults["resize"] == "squash"
    for name in defaults:
        if name not in ("preset", "resize_scale"):
            assert name in patchcore.fit.__doc__
    m = patchcore.fit(data / "train", coreset_ratio=0.5, coreset_min=0, blur_sigma=2.0,
                      intensity="standardize", upsample="nearest", seed=3, k=2, **FAST)
    p = m.params
    assert (p["coreset_ratio"], p["coreset_min"], p["blur_sigma"]) == (0.5, 0, 2.0)
    assert (p["intensity"], p["upsample"], p["seed"], p["k"]) == ("standardize", "nearest", 3, 2)
    assert p["layers"] == ["block_5_expand_relu", "block_10_expand_relu"]  # resolved by fit
    assert m.info["params"]["coreset_ratio"] == 0.5


def test_presets_then_explicit_keywords_win(data):
    paper = patchcore.default_params("paper")
    assert (paper["crop"], paper["embedding"], paper["squared_l2"]) == (224, "paper", True)
    m = patchcore.fit(data / "train", preset="anomalib", backbone="mobilenet_v2", image_size=96,
                      reweight=False)
    p = m.params
    assert p["preset"] == "anomalib" and p["upsample"] == "nearest" and p["coreset_ratio"] == 0.1
    assert p["reweight"] is False and p["image_size"] == 96


def test_threshold_get_and_set(data, test_images):
    m = patchcore.fit(data / "train", **FAST)
    before = m.calibration
    scores = [p.score for p in m.predict(test_images)]
    m.threshold = max(scores) + 1
    assert m.threshold == max(scores) + 1
    after = m.calibration
    assert after["source"] == "user"
    assert after["pixel_threshold"] - before["pixel_threshold"] == pytest.approx(
        m.threshold - before["image_threshold"])
    assert all(p.label == "normal" for p in m.predict(test_images))
    m.threshold = min(scores)
    assert all(p.label == "anomalous" for p in m.predict(test_images))


def test_save_and_load_round_trip(model, tmp_path, test_images):
    path = tmp_path / "m.patchcore"
    model.save(path)
    loaded = patchcore.load(str(path))
    assert loaded.info == model.info
    assert loaded.threshold == model.threshold
    for a, b in zip(model.predict(test_images), loaded.predict(test_images)):
        assert a.score == b.score


def test_progress_callable_and_tqdm_like_bar(data, test_images):
    calls = []
    patchcore.fit(data / "train", progress=lambda *a: calls.append(a), coreset_min=0,
                  coreset_ratio=0.2, batch_size=4, **FAST)
    stages = [c[0] for c in calls]
    assert stages[0] == "features" and "coreset" in stages
    assert calls[stages.index("coreset") - 1] == ("features", 10, 10)
    assert calls[-1][1] == calls[-1][2]  # the coreset ends done

    class Bar:  # what tqdm offers: n, reset(total), set_description, update
        def __init__(self):
            self.n, self.total, self.desc, self.resets = 0, None, "", 0

        def reset(self, total=None):
            self.n, self.total, self.resets = 0, total, self.resets + 1

        def set_description(self, d):
            self.desc = d

        def update(self, k):
            self.n += k

    bar = Bar()
    m = patchcore.fit(data / "train", **FAST)
    m.predict(test_images, progress=bar)
    assert (bar.desc, bar.n, bar.total, bar.resets) == ("predict", 6, 6, 1)


def test_log_lines_go_to_python_logging(data, caplog):
    with caplog.at_level(logging.INFO, logger="patchcore"):
        patchcore.fit(data / "train", **FAST)
    messages = [r.getMessage() for r in caplog.records if r.name == "patchcore"]
    assert any(m.startswith("intensity: keep") for m in messages)
    assert any("held-out normal images" in m for m in messages)


def test_info_and_repr(model):
    info = model.info
    assert info["params"]["backbone"] == "mobilenet_v2" and info["map_size"] == model.map_size == 96
    assert "threshold=" in repr(model)
    assert "Prediction(path=" in repr(model.predict(texture(5)))
    assert model.engine in ("dnnl", "opencv")
    model.precision = "fp32"
    assert model.precision == "fp32"
    model.precision = "auto"
    assert model.precision in ("fp32", "bf16")

"""Models and maps are freed when Python drops them; a map outlives its model and prediction."""

import gc
import sys
import weakref

import numpy as np

import patchcore
from conftest import FAST, texture


def live():
    gc.collect()
    return patchcore._patchcore._live_objects()


def test_models_and_maps_are_freed(data):
    base = live()
    m = patchcore.fit(data / "train", **FAST)
    alive = weakref.ref(m)
    preds = m.predict([texture(1), texture(2)])
    assert live() == {"models": base["models"] + 1, "arrays": base["arrays"] + 4}  # map + mask each
    del preds
    assert live()["arrays"] == base["arrays"]
    del m
    assert alive() is None
    assert live() == base


def test_a_map_owns_its_memory(data):
    base = live()
    m = patchcore.fit(data / "train", **FAST)
    p = m.predict(texture(3, defect=True))
    heat = p.anomaly_map
    copy = heat.copy()
    assert sys.getrefcount(p) == 2  # the local name and getrefcount's argument
    del p, m
    assert live() == {"models": base["models"], "arrays": base["arrays"] + 1}
    np.testing.assert_array_equal(heat, copy)  # still readable: the capsule holds the buffer
    assert heat.base is not None and not heat.flags.owndata
    del heat
    assert live() == base


def test_repeated_predictions_do_not_accumulate(model):
    base = live()
    img = texture(9)
    for _ in range(20):
        p = model.predict(img)
        _ = p.anomaly_map.sum() + p.mask.sum()
    del p
    assert live() == base


def test_arrays_passed_in_are_not_kept(model):
    img = texture(11)
    before = sys.getrefcount(img)
    model.predict(img)
    model.predict([img, img])
    assert sys.getrefcount(img) == before

"""patchcore.overlay: a heatmap over the image for matplotlib, the mask outlined."""

import numpy as np
import pytest

import patchcore
from conftest import texture


def test_overlay_blends_the_colour_scale_and_outlines_the_mask():
    image = np.full((20, 30, 3), 100, np.uint8)
    heat = np.zeros((20, 30), np.float32)
    heat[5:10, 5:15] = 1.0
    mask = heat > 0.5
    out = patchcore.overlay(image, heat, mask, alpha=0.5, cmap="gray")
    assert out.shape == (20, 30, 3) and out.dtype.kind == "f"
    assert out.min() >= 0 and out.max() <= 1
    # gray colour map: level 0 -> black, 1 -> white, blended half and half with 100/255.
    np.testing.assert_allclose(out[0, 0], 0.5 * 100 / 255, atol=1e-6)
    np.testing.assert_allclose(out[7, 10], 0.5 * 100 / 255 + 0.5, atol=1e-6)
    # The outline is white on the region's border pixels only.
    assert (out[5, 5:15] == 1).all() and (out[9, 5:15] == 1).all() and (out[5:10, 5] == 1).all()
    assert not (out[7, 7:13] == 1).all()


def test_overlay_range_and_prediction_argument(model):
    img = texture(21, defect=True)
    p = model.predict(img)
    out = patchcore.overlay(img, p)  # map and mask from the prediction
    assert out.shape == img.shape
    # A range above every score paints the bottom colour everywhere.
    grey = np.zeros_like(img[:, :, 0])
    flat = patchcore.overlay(grey, p.anomaly_map, vmin=1e9, vmax=2e9, alpha=1.0, cmap="gray")
    assert flat.max() == 0
    with pytest.raises(ValueError, match="overlay: the image is 10 x 10 but the map 120 x 160"):
        patchcore.overlay(np.zeros((10, 10, 3), np.uint8), p)

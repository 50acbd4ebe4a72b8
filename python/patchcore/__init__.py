"""PatchCore visual anomaly detection (Roth et al., CVPR 2022): the C++ engine from Python.

    import patchcore
    model = patchcore.fit("normal_images/", backbone="mobilenet_v2")
    p = model.predict("new.png")          # or a uint8 array, a folder, a list of them
    p.score, p.normalized_score, p.label, p.anomaly_map, p.mask
    model.save("part.patchcore"); model = patchcore.load("part.patchcore")

Log lines go to logging.getLogger("patchcore"). Errors: bad input raises ValueError (a missing
file FileNotFoundError) naming the file or the array ("images[3]"); internal errors
RuntimeError. Ctrl-C during fit or predict raises KeyboardInterrupt. See docs/python.md.
"""

import difflib
import logging
import os

from . import _patchcore
from ._patchcore import (Model, Prediction, decode_image, default_params, load, load_image,
                         set_opencv_threads)

__all__ = ["fit", "evaluate", "load", "Model", "Prediction", "default_params", "load_image", "decode_image",
           "overlay", "set_opencv_threads"]

logging.getLogger("patchcore").addHandler(logging.NullHandler())

# The library looks for the built-in backbones beside the executable, which is Python here: point
# it at the build tree's (build/python/patchcore -> build/backbones) unless the user chose a folder.
_build_backbones = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "backbones")
if not os.environ.get("PATCHCORE_BACKBONES") and os.path.isdir(_build_backbones):
    os.environ["PATCHCORE_BACKBONES"] = os.path.realpath(_build_backbones)


def fit(images, *, preset="", progress=None, **params):
    """Fits a model on normal images and returns it.

    images: a folder (an MVTec AD category folder: its train/good), an image file, a uint8
    array (H x W grey, H x W x 3 RGB, H x W x 4 RGBA), or a list of paths and arrays.
    preset: "paper" or "anomalib" (the CLI's --preset); keywords given explicitly still win.
    progress: a callable progress(stage, done, total), or a tqdm-like bar (update/reset).
    params: any fit parameter of the library under its own name; the defaults:
    """
    known = default_params()
    for name in params:
        if name not in known or name in ("preset", "resize_scale"):
            close = difflib.get_close_matches(name, [k for k in known if k != "resize_scale"], 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"fit() got an unexpected keyword argument {name!r}{hint}")
    return _patchcore._fit(images, preset or "", params, _progress_callable(progress))


def _document_defaults():
    defaults = default_params()
    lines = [f"        {k} = {v!r}" for k, v in defaults.items() if k not in ("preset", "resize_scale")]
    fit.__doc__ += "\n".join(lines) + "\n"


_document_defaults()


def _progress_callable(progress):
    """progress as the library calls it: progress(stage, done, total)."""
    if progress is None:
        return None
    if hasattr(progress, "update") and hasattr(progress, "reset"):
        bar, current = progress, {"stage": None}

        def report(stage, done, total):
            if stage != current["stage"]:
                current["stage"] = stage
                bar.reset(total=total)
                if hasattr(bar, "set_description"):
                    bar.set_description(stage)
            bar.update(done - bar.n)

        return report
    if not callable(progress):
        raise TypeError(f"progress: expected a callable or a tqdm bar, got {type(progress).__name__}")
    return progress


def evaluate(model, data, *, out=None, write_images=True, progress=None):
    """Scores the labelled test images of a data set folder (MVTec layout: test/good,
    test/<defect>, ground_truth/<defect>/<stem>_mask.png) and returns the metrics dict that
    `patchcore eval` writes to metrics.json (image_auroc, pixel_auroc, aupro, image_f1,
    image_threshold, per_kind, ...). With out, the files of `eval --out` are written there too
    (metrics.json, predictions.csv, report.html, and the overlays unless write_images=False)."""
    return _patchcore._evaluate(model, data, out, write_images, _progress_callable(progress))


_predict = Model.predict


def _predict_with_bar(self, images, progress=None, skip_unreadable=False):
    return _predict(self, images, _progress_callable(progress), skip_unreadable)


_predict_with_bar.__doc__ = _predict.__doc__ + (
    "\nprogress: a callable progress(stage, done, total) or a tqdm-like bar. skip_unreadable: "
    "leave out images that cannot be read (logged as warnings) instead of raising ValueError.")
Model.predict = _predict_with_bar


def overlay(image, anomaly_map=None, mask=None, *, vmin=None, vmax=None, alpha=0.45, cmap="jet"):
    """The anomaly map as a colour heatmap blended over the image, with the mask outlined in
    white: a float RGB array (H x W x 3, values in [0, 1]) for matplotlib's imshow.

    anomaly_map may be a Prediction (its anomaly_map and mask are used). The colours span
    vmin..vmax (default: the map's own range); pass the same values for every image of a figure
    to compare them, e.g. the model's calibration (pixel_threshold in the middle).
    """
    import numpy as np
    from matplotlib import colormaps

    if isinstance(anomaly_map, Prediction):
        if mask is None:
            mask = anomaly_map.mask
        anomaly_map = anomaly_map.anomaly_map
    image = np.asarray(image)
    scores = np.asarray(anomaly_map, dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    if image.shape[:2] != scores.shape:
        raise ValueError(f"overlay: the image is {image.shape[0]} x {image.shape[1]} but the map "
                         f"{scores.shape[0]} x {scores.shape[1]}")
    rgb = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    lo = float(scores.min()) if vmin is None else float(vmin)
    hi = float(scores.max()) if vmax is None else float(vmax)
    level = np.clip((scores - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(scores)
    heat = colormaps[cmap](level)[:, :, :3]
    out = (1 - alpha) * rgb + alpha * heat
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        inner = m.copy()
        inner[1:, :] &= m[:-1, :]
        inner[:-1, :] &= m[1:, :]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        out[m & ~inner] = 1.0
    return np.clip(out, 0, 1)

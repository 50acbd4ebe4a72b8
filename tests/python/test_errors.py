"""Every bad input gets ValueError / FileNotFoundError / TypeError naming the input and the
problem; nothing is read out of bounds."""

import numpy as np
import pytest

import patchcore
from conftest import FAST, texture


def test_missing_files_raise_file_not_found_naming_them(model, data, tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="images: no such file") as e:
        model.predict(missing)
    assert e.value.filename == str(missing)
    good = str(data / "test" / "good0.png")
    with pytest.raises(FileNotFoundError, match=r"images\[1\]: no such file") as e:
        model.predict([good, str(missing)])
    assert e.value.filename == str(missing)
    with pytest.raises(FileNotFoundError, match=r"images\[2\]"):
        patchcore.fit([good, good, missing], **FAST)
    with pytest.raises(FileNotFoundError, match="model: no such file"):
        patchcore.load(tmp_path / "none.patchcore")
    with pytest.raises(FileNotFoundError):
        patchcore.load_image(missing)


def test_unreadable_image_files_raise_value_error_naming_them(model, data, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="broken.png"):
        model.predict(bad)
    good = data / "test" / "good0.png"
    with pytest.raises(ValueError, match="broken.png"):
        model.predict([good, bad])
    # ... or left out on request, the others scored.
    preds = model.predict([good, bad, good], skip_unreadable=True)
    assert [p.path for p in preds] == [str(good), str(good)]
    # Mixed with arrays, the file is decoded first: the same error.
    with pytest.raises(ValueError, match="broken.png"):
        model.predict([texture(1), bad])


def test_fit_skips_unreadable_files_but_not_when_none_is_left(data, tmp_path, caplog):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"garbage")
    files = sorted((data / "train").glob("*.png"))
    patchcore.fit(files + [bad], **FAST)
    assert any("broken.png" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    with pytest.raises(ValueError, match="none of the 1 images could be read"):
        patchcore.fit([bad], **FAST)


def test_folders(model, tmp_path, data):
    with pytest.raises(ValueError, match=f"images: no images in folder {tmp_path}"):
        model.predict(tmp_path)
    with pytest.raises(ValueError, match=f"{tmp_path}: no images in"):  # the library's scan
        patchcore.fit(tmp_path, **FAST)
    with pytest.raises(ValueError, match=r"images\[0\]: .* is a folder"):
        model.predict([data / "test"])


@pytest.mark.parametrize("array, problem", [
    (np.zeros((20, 30, 3), np.float32), r"images\[1\]: dtype float32, expected uint8"),
    (np.zeros((20, 30, 3), np.int16), r"images\[1\]: dtype int16, expected uint8"),
    (np.zeros((20, 30, 2), np.uint8), r"images\[1\]: shape 20 x 30 x 2, expected H x W"),
    (np.zeros((2, 20, 30, 3), np.uint8), r"images\[1\]: shape 2 x 20 x 30 x 3"),
    (np.zeros((30,), np.uint8), r"images\[1\]: shape 30, expected"),
    (np.zeros((0, 30, 3), np.uint8), r"images\[1\]: empty image \(0 x 30\)"),
])
def test_bad_arrays_raise_value_error_naming_the_array(model, array, problem):
    with pytest.raises(ValueError, match=problem):
        model.predict([texture(1), array])
    with pytest.raises(ValueError, match=problem):
        patchcore.fit([texture(1), array], **FAST)


def test_broadcast_and_negative_stride_arrays_are_copied_not_overread(model):
    img = texture(7)
    want = model.predict(img).score
    flipped = np.ascontiguousarray(img[::-1])
    assert model.predict(flipped[::-1]).score == want  # negative row stride
    row = img[:1]
    tiled = np.broadcast_to(row, img.shape)  # row stride 0
    assert tiled.strides[0] == 0
    assert model.predict(tiled).score == model.predict(np.ascontiguousarray(tiled)).score


def test_wrong_types(model):
    with pytest.raises(TypeError, match=r"images: expected a path, a folder, a NumPy array"):
        model.predict(42)
    with pytest.raises(TypeError, match=r"images\[1\]: expected a path or a NumPy array, got dict"):
        model.predict([texture(1), {}])
    with pytest.raises(ValueError, match="images: empty list"):
        model.predict([])
    with pytest.raises(TypeError):
        model.threshold = "high"
    with pytest.raises(ValueError, match="threshold: must be a finite number"):
        model.threshold = float("nan")


def test_bad_parameters(data):
    train = data / "train"
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'coreset_ration' \(did you mean 'coreset_ratio'\?\)"):
        patchcore.fit(train, coreset_ration=0.1)
    with pytest.raises(TypeError, match="resize_scale"):
        patchcore.fit(train, resize_scale=0.5)
    # Enum texts and presets: the library's names, and its messages.
    with pytest.raises(ValueError, match=r"unknown resize 'stretch' \(expected squash, pad or fixed\)"):
        patchcore.fit(train, resize="stretch", **FAST)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        patchcore.fit(train, preset="fast", **FAST)
    with pytest.raises(ValueError, match="unknown engine 'cuda'"):
        patchcore.fit(train, engine="cuda", **FAST)
    with pytest.raises(TypeError, match="image_size: expected an integer, got float 96.5"):
        patchcore.fit(train, backbone="mobilenet_v2", image_size=96.5)
    with pytest.raises(TypeError, match="squared_l2: expected True or False, got int 1"):
        patchcore.fit(train, squared_l2=1, **FAST)
    with pytest.raises(TypeError, match="layers: expected a list of layer names"):
        patchcore.fit(train, layers="block_5_expand_relu", **FAST)
    with pytest.raises(ValueError, match="seed: -1 is out of range"):
        patchcore.fit(train, seed=-1, **FAST)
    with pytest.raises(TypeError, match="progress: expected a callable"):
        patchcore.fit(train, progress=3, **FAST)
    # Values the library refuses: its own message.
    with pytest.raises(ValueError, match="coreset"):
        patchcore.fit(train, coreset_ratio=-1.0, **FAST)
    with pytest.raises(ValueError, match="crop"):
        patchcore.fit(train, crop=500, **FAST)
    with pytest.raises(ValueError, match="nope.onnx"):
        patchcore.fit(train, backbone="nope.onnx")
    # numpy scalars are numbers too.
    m = patchcore.fit(train, backbone="mobilenet_v2", image_size=np.int64(96),
                      blur_sigma=np.float32(2.0))
    assert m.params["image_size"] == 96 and m.params["blur_sigma"] == 2.0


def test_bad_model_files(tmp_path):
    bad = tmp_path / "bad.patchcore"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.patchcore"):
        patchcore.load(bad)
    with pytest.raises(ValueError):
        patchcore.load(tmp_path)  # a folder


def test_errors_in_a_progress_callable_reach_the_caller_as_they_are(data):
    def boom(stage, done, total):
        raise ZeroDivisionError("in the user's callback")

    with pytest.raises(ZeroDivisionError, match="in the user's callback"):
        patchcore.fit(data / "train", progress=boom, **FAST)

"""Shared fixtures: synthetic textured images (a defect pasted into some), written as PNG files
(lossless, so that a file and its array give the same prediction), and a small fast model."""

import os
import struct
import zlib

import numpy as np
import pytest

import patchcore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("PATCHCORE_BINARY_DIR", os.path.join(REPO, "build"))
# Small and fast: MobileNetV2 at 96 px keeps every fit under a second on two cores.
FAST = dict(backbone="mobilenet_v2", image_size=96)


def write_png(path, pixels):
    """Writes a uint8 H x W x 3 array as an RGB PNG (no dependency beyond zlib)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))


def texture(seed, height=120, width=160, defect=False):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 40 * np.sin(x / 5.0 + seed * 0.3) + 20 * np.cos(y / 7.0) + rng.normal(0, 8, (height, width))
    img = np.stack([base, base * 0.9, base * 0.8], -1)
    if defect:
        img[40:62, 50:84] = (250, 40, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """train/: 10 normal PNGs; test/: 3 normal and 3 with a defect. Returns the folder."""
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    (root / "test").mkdir()
    for i in range(10):
        write_png(root / "train" / f"n{i:02d}.png", texture(i))
    for i in range(3):
        write_png(root / "test" / f"good{i}.png", texture(100 + i))
        write_png(root / "test" / f"defect{i}.png", texture(200 + i, defect=True))
    return root


@pytest.fixture(scope="session")
def model(data):
    return patchcore.fit(data / "train", **FAST)


@pytest.fixture(scope="session")
def test_images(data):
    return sorted((data / "test").glob("*.png"))

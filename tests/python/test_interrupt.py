"""Ctrl-C during fit and predict: KeyboardInterrupt soon, from every stage that reports progress,
and no partial model file."""

import logging
import os
import signal
import threading

import pytest

import patchcore
from conftest import texture

IMAGES = [texture(600 + i) for i in range(48)]


def interrupt_at(stage, calls):
    def progress(s, done, total):
        calls.append((s, done, total))
        if s == stage:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("stage", ["features", "coreset"])
def test_keyboard_interrupt_from_a_fit_stage_stops_the_fit(stage, tmp_path):
    calls = []
    out = tmp_path / "model.patchcore"
    with pytest.raises(KeyboardInterrupt):
        # One thread: the coreset reports progress from the calling thread only, and with two
        # the other one may make every pick before the caller's first report.
        m = patchcore.fit(IMAGES[:16], progress=interrupt_at(stage, calls), backbone="mobilenet_v2",
                          image_size=96, batch_size=4, coreset_min=0, coreset_ratio=0.2, threads=1)
        m.save(out)
    # Stopped at the first report of that stage: nothing ran past it, nothing was written.
    assert calls[-1][0] == stage and [c[0] for c in calls].count(stage) == 1
    assert calls[-1][1] < calls[-1][2]
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_during_predict(model):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        model.predict(IMAGES[:16], progress=interrupt_at("predict", calls))
    assert calls == [("predict", 8, 16)]  # the second batch never ran


class StartTimer(logging.Handler):
    """Sends SIGINT to this process shortly after the fit's first log line (from inside C++)."""

    def __init__(self, delay):
        super().__init__()
        self.delay, self.timer = delay, None

    def emit(self, record):
        if self.timer is None:
            self.timer = threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGINT))
            self.timer.start()


def test_sigint_while_the_library_works_raises_keyboard_interrupt(tmp_path, caplog):
    """No progress callable: the module itself looks for Ctrl-C at each library callback."""
    handler = StartTimer(0.2)
    log = logging.getLogger("patchcore")
    log.addHandler(handler)
    out = tmp_path / "model.patchcore"
    try:
        with caplog.at_level(logging.INFO, logger="patchcore"):
            with pytest.raises(KeyboardInterrupt):
                patchcore.fit(IMAGES, backbone="mobilenet_v2", batch_size=2).save(out)
    finally:
        log.removeHandler(handler)
        handler.timer.join()
    # The signal arrived while decoding or in the backbone; the fit stopped before calibrating.
    assert not any("held-out" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.iterdir()) == []

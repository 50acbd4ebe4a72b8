"""Several Python threads predicting with one model; the GIL is released while the library works."""

import threading

import numpy as np

import patchcore
from conftest import texture


def test_threads_predicting_with_one_model_get_the_sequential_results(model):
    images = [texture(400 + i, defect=i % 2 == 1) for i in range(8)]
    want = [p.score for p in model.predict(images)]
    want_maps = [p.anomaly_map for p in model.predict(images)]
    results, errors = {}, []

    def work(t):
        try:
            for round_ in range(3):
                # Each thread in its own order, singly and in batches.
                order = [(t + round_ + i) % len(images) for i in range(len(images))]
                for i in order[:4]:
                    results[(t, round_, i)] = model.predict(images[i])
                for i, p in zip(order[4:], model.predict([images[i] for i in order[4:]])):
                    results[(t, round_, i)] = p
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    # Meanwhile the threshold moves back and forth (it waits for the predictions in flight).
    threshold = model.threshold
    for _ in range(5):
        model.threshold = threshold
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4 * 3 * len(images)
    for (_, _, i), p in results.items():
        assert p.score == want[i]
        np.testing.assert_array_equal(p.anomaly_map, want_maps[i])


def test_the_gil_is_released_while_predicting(model):
    images = [texture(500 + i) for i in range(24)]
    inside = threading.Event()
    done = threading.Event()
    counted = []

    def progress(stage, k, total):
        inside.set()  # the first batch is done: the library is at work on the next ones

    def work():
        model.predict(images, progress=progress)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    inside.wait()
    n = 0
    while not done.is_set():  # runs only if the predicting thread let go of the GIL
        n += 1
    counted.append(n)
    t.join()
    assert counted[0] > 1000

"""Quarantine: items of failed transfers come back only after the hold."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pdpair.transfer import Quarantine, default_hold_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hold_poll_release_order():
    clock, released = Clock(), []
    q = Quarantine(45.0, lambda kind, ids: released.append((kind, ids.tolist())), clock=clock)
    src = np.array([3, 4, 5], dtype=np.int32)
    q.hold("kv", src)
    src[0] = 99  # the quarantine keeps its own copy
    clock.now += 10
    q.hold("mamba", [1])
    q.hold("kv", np.zeros(0, np.int32))
    assert q.num_held() == 4 and q.num_held("kv") == 3 and q.num_held("swa") == 0
    clock.now += 34.9
    assert q.poll() == 0 and released == []
    clock.now += 0.1
    assert q.poll() == 3 and released == [("kv", [3, 4, 5])]
    clock.now += 10
    assert q.poll() == 1 and released[-1] == ("mamba", [1])
    assert q.num_held() == 0 and q.poll() == 0


def test_flush_releases_everything():
    released = []
    q = Quarantine(1e6, lambda kind, ids: released.append(kind))
    q.hold("kv", [1, 2])
    q.hold("swa", [7])
    assert q.flush() == 3 and released == ["kv", "swa"] and q.num_held() == 0


def test_concurrent_holds():
    clock = Clock()
    total = []
    q = Quarantine(1.0, lambda kind, ids: total.append(ids.size), clock=clock)
    threads = [threading.Thread(target=lambda: [q.hold("kv", [i]) for i in range(500)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    clock.now += 1
    assert q.poll() == 2000 and sum(total) == 2000


def test_hold_outlasts_transfer_timeout():
    assert default_hold_seconds(30.0) > 30.0 and default_hold_seconds(2.0) > 2.0
    with pytest.raises(ValueError):
        Quarantine(0, lambda kind, ids: None)

"""The pace shared by the workers of one host: the mapped slab, and two learners (or processes) on one key."""

from __future__ import annotations

import multiprocessing
import uuid

import pytest

import batch._flow.shared
from batch._flow import FlowControl
from batch._flow.pace import LearnedRate as AdaptiveRate
from batch._flow.shared import Slab, path_for
from support import Clock, run


@pytest.fixture
def key() -> str:
    """A key no other test (or earlier run) used; its files are removed afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    for used in (name, name + "-other"):
        path_for(used).unlink(missing_ok=True)


def test_slabs_on_one_key_share_their_cells_and_others_do_not(key):
    a, b, other = Slab(4, key), Slab(4, key), Slab(4, key + "-other")
    assert a.shared and a.path == b.path and other.path != a.path
    a.lock()
    a.values[2] = 42.5
    a.unlock()
    assert b.values[2] == 42.5 and other.values[2] == 0.0
    private = Slab(4)
    assert not private.shared and private.values[2] == 0.0
    for slab in (a, b, other):
        slab.close()


def test_a_file_of_another_layout_is_laid_out_afresh(key):
    old = Slab(3, key)
    old.values[0] = 7.0
    old.close()
    new = Slab(5, key)
    assert list(new.values) == [0.0] * 5
    new.close()


def test_no_writable_directory_means_a_private_pace(key, tmp_path, monkeypatch):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    monkeypatch.setattr(batch._flow.shared, "shared_dir", lambda: blocked / "sub")
    slab = Slab(4, key)
    assert not slab.shared
    slab.values[1] = 3.0  # still usable
    assert slab.values[1] == 3.0


def deliver(rates: list[AdaptiveRate], clock: Clock, per_second: float, seconds: float) -> None:
    """Requests answered at ``per_second`` in all, taking turns between the learners."""
    for i in range(int(per_second * seconds)):
        clock.now += 1.0 / per_second
        rate = rates[i % len(rates)]
        rate.sent()
        rate.success()


def test_two_workers_on_one_key_learn_one_pace_from_what_both_delivered(key):
    clock = Clock()
    a, b = AdaptiveRate(clock=clock, share=key), AdaptiveRate(clock=clock, share=key)
    deliver([a, b], clock, 400, 1.0)
    b.rate_limited()  # only b is refused, but the cap is what both together got through
    assert a.rate == b.rate == pytest.approx(400 * 0.95, rel=0.03)
    assert a.cuts == b.cuts == 1
    clock.now += 0.001
    a.rate_limited()  # the same overshoot seen by the other worker is not a second cut
    assert a.cuts == 1
    waits = [a.reserve(), b.reserve(), a.reserve(), b.reserve()]
    assert waits == sorted(waits) and waits[-1] > waits[0]  # one schedule: turns alternate between them


def test_a_worker_that_stays_busy_keeps_the_pace_when_another_starts_afresh(key):
    clock = Clock()
    a, b = AdaptiveRate(clock=clock, share=key), AdaptiveRate(clock=clock, share=key)
    deliver([a], clock, 200, 1.0)
    a.rate_limited()
    learned = a.rate
    assert not b.restart()  # a is still sending: nothing to forget
    assert b.rate == learned
    clock.now += 3.0
    assert not b.restart() and a.rate == learned  # a second job right after the first starts from its rate
    clock.now += 60.0
    assert b.restart() and a.rate is None  # the whole host was quiet for a minute: start afresh


def _learn_in_child(key: str, now: float) -> None:
    clock = Clock(now)
    rate = AdaptiveRate(clock=clock, share=key)
    deliver([rate], clock, 300, 1.0)
    rate.rate_limited()
    rate.close()


def test_the_pace_learned_in_one_process_holds_in_another(key):
    child = multiprocessing.get_context("spawn").Process(target=_learn_in_child, args=(key, 100.0))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    here = AdaptiveRate(clock=Clock(101.01), share=key)
    assert here.rate == pytest.approx(300 * 0.95, rel=0.03) and here.cuts == 1


def test_a_file_from_before_a_reboot_is_not_trusted(key):
    _learn_in_child(key, 5000.0)
    assert AdaptiveRate(clock=Clock(5001.0), share=key).rate is not None
    assert AdaptiveRate(clock=Clock(10.0), share=key).rate is None  # the clock went back: start afresh


def test_a_workers_last_answer_reaches_the_host_at_once_not_with_its_next_job(key):
    """Counts wait in a worker for a moment (fewer locks); once nothing of its own is in flight they are added
    at once, or the host would seem busy through the quiet before the next job, and that job's opening would
    be taken for the last one's."""
    clock = Clock()
    a = FlowControl(max_concurrency=4, clock=clock, share=key)
    b = AdaptiveRate(clock=clock, share=key)

    async def one_request() -> None:
        await a.admit()
        await a.admit()
        a.done(0.1)  # one still in flight: its count may wait in the worker
        a.done(0.1)  # none: it goes to the shared cells now

    run(one_request())
    clock.now += 0.05
    assert b.delivered() > 0

"""The turn watch (web.turn_watch) with stub status readers: which streams a failed read wakes,
and that neither a failed beat nor a failed opening read leaves streams without an answer."""

import gevent
import redis

from web import turn_watch
from web.dispatcher import Subscription
from web.turn_watch import OUTCOME_UNKNOWN, TURN_FINAL, TurnWatch

FIRST, SECOND = ("s1", "m1"), ("s1", "m2")


def signals(sub: Subscription) -> list[object]:
    """What the watch handed the stream so far."""
    return [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]


def test_a_failed_batch_wakes_only_its_own_streams(monkeypatch):
    monkeypatch.setattr(turn_watch, "BATCH", 1)  # one turn per round trip: two batches

    def read_statuses(batch):
        if FIRST in batch:
            raise redis.ConnectionError("broker unreachable")
        return ["running"] * len(batch)

    watch = TurnWatch(1.0, read_statuses=read_statuses)
    first, second = Subscription("a", 10), Subscription("b", 10)
    watch._watched[FIRST].add(first)  # registered without starting the runner: the test drives the beat
    watch._watched[SECOND].add(second)
    watch.check()
    assert signals(first) == [OUTCOME_UNKNOWN]
    assert signals(second) == [], "a stream whose turn's status was read was woken"


def test_the_watch_goes_on_after_a_beat_fails_with_a_bug():
    calls = []

    def read_statuses(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise ValueError("a bug in a reader")
        return ["done"] * len(batch)

    watch = TurnWatch(0.01, read_statuses=read_statuses)
    sub = Subscription("a", 10)
    watch.watch(sub, *FIRST)
    assert sub.get(timeout=5) is TURN_FINAL, "the watch stopped after one failed beat"


def test_streams_joining_an_opening_read_get_its_failure_whatever_it_is():
    def read_status(session_id, message_id):
        gevent.sleep(0.05)  # the second stream opens while this read is in flight
        raise ValueError("a bug in a reader")

    watch = TurnWatch(1.0, read_status=read_status)
    opening = [gevent.spawn(watch.status, *FIRST) for _ in range(2)]
    gevent.joinall(opening, timeout=5)
    assert all(g.ready() for g in opening), "a stream joining the read waits forever"
    assert [type(g.exception) for g in opening] == [ValueError, ValueError]

"""The per-store breaker, the settings that keep delivery at least once, and the outcome mapping."""

import pytest
import redis

from shared.breakers import CLOSED, HALF_OPEN, OPEN, Breaker, StoreUnavailable
from shared.celery_config import celery_config
from shared.settings import Settings
from shared.terminal_event import terminal_event
from shared.turns import TurnRecord


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def refuse():
    raise redis.ConnectionError("refused")


def test_breaker_opens_after_consecutive_failures_then_fails_fast():
    clock = Clock()
    breaker = Breaker("progress", fail_max=3, reset_s=2.0, clock=clock)
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            breaker.call(refuse)
    assert breaker.state == OPEN
    calls = []
    with pytest.raises(StoreUnavailable) as caught:
        breaker.call(calls.append, 1)
    assert calls == [], "an open breaker does not even try"
    assert caught.value.store == "progress"
    assert isinstance(caught.value, redis.ConnectionError)


def tripped(clock: Clock) -> Breaker:
    """A breaker that opens at its first failure (reset 2 s), after one refused call at `clock`'s time."""
    breaker = Breaker("broker", fail_max=1, reset_s=2.0, clock=clock)
    with pytest.raises(redis.ConnectionError):
        breaker.call(refuse)
    return breaker


def test_breaker_half_opens_and_one_success_closes_it():
    clock = Clock()
    breaker = tripped(clock)
    clock.now = 2.5
    assert breaker.state == HALF_OPEN
    assert breaker.call(lambda: "pong") == "pong"
    assert breaker.state == CLOSED


def test_a_failed_trial_reopens_the_breaker_for_another_period():
    clock = Clock()
    breaker = tripped(clock)
    clock.now = 3.0
    with pytest.raises(redis.ConnectionError):
        breaker.call(refuse)
    assert breaker.state == OPEN
    clock.now = 4.0
    with pytest.raises(StoreUnavailable):
        breaker.call(lambda: "pong")


def test_errors_that_prove_the_server_answered_do_not_count():
    breaker = Breaker("exec_cache", fail_max=1, reset_s=2.0, clock=Clock())

    def wrong_type():
        raise redis.ResponseError("WRONGTYPE")

    with pytest.raises(redis.ResponseError):
        breaker.call(wrong_type)
    assert breaker.state == CLOSED


def test_time_limits_must_stay_below_the_visibility_timeout():
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        Settings(task_soft_time_limit_s=100, task_time_limit_s=200, visibility_timeout_s=150)


def test_celery_settings_give_at_least_once_delivery_over_json_only():
    config = celery_config(Settings())
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_connection_retry_on_startup"] is True
    assert config["worker_soft_shutdown_timeout"] > 0
    visibility = config["broker_transport_options"]["visibility_timeout"]
    assert config["result_backend_transport_options"]["visibility_timeout"] == visibility
    assert config["task_soft_time_limit"] < config["task_time_limit"] < visibility
    assert config["accept_content"] == config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"


def test_each_final_status_maps_to_one_terminal_event():
    assert terminal_event(TurnRecord(status="done", answer="42")).answer == "42"
    assert terminal_event(TurnRecord(status="failed", error="boom", step="execute")).message == "boom"
    assert terminal_event(TurnRecord(status="cancelled")).message == "cancelled"
    assert terminal_event(TurnRecord(status="running")) is None
    assert terminal_event(None) is None


def test_a_broker_outage_is_not_a_turn_failure():
    from celery.exceptions import ChordError

    from workers.tasks import lost_to_an_outage

    assert lost_to_an_outage(redis.ConnectionError("Error 111 connecting"))
    assert lost_to_an_outage(StoreUnavailable("broker"))
    assert lost_to_an_outage(ChordError("Dependency 8a2c raised network:ConnectionError"))
    assert not lost_to_an_outage(RuntimeError("discover failed: no MCP server answered"))
    assert not lost_to_an_outage(ChordError("Dependency 8a2c raised ValueError('bad args')"))

"""shared.broker_channel against a real redis-server: a channel's one client, and a pool that makes
callers wait for a connection instead of failing them.

A gevent worker acknowledges its messages from up to 50 greenlets through one kombu channel,
whose pool kombu caps at 10 connections (`max_connections`). With kombu's pool the eleventh
concurrent caller got MaxConnectionsError: Celery took it for a lost broker, restarted the
consumer and left the unacknowledged steps for the visibility timeout (a busy benchmark's turn
stalled so). Here the cap is 64, and the callers past it wait for a connection."""

import threading

import pytest
import redis
from kombu import Connection

from shared.cli import processes

CALLERS = 100


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory):
    port = processes.free_port()
    server = processes.redis_server("broker", port, tmp_path_factory.mktemp("broker-channel")).start()
    yield f"redis://127.0.0.1:{port}/0"
    server.stop()


@pytest.mark.parametrize("transport", ["shared.broker_channel:Transport", "workers.broker_transport:Transport"])
def test_more_concurrent_callers_than_connections_wait_instead_of_failing(broker_url, transport):
    with Connection(broker_url, transport=transport) as connection:
        channel = connection.default_channel
        assert channel.max_connections < CALLERS  # the cap, so the callers do compete
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second  # one client per channel
        failures: list[BaseException] = []
        done = []

        def hold_a_connection() -> None:
            try:
                with channel.conn_or_acquire() as client:
                    client.blpop(["nothing-here"], timeout=0.2)  # holds its connection 0.2 s
                    done.append(1)
            except redis.RedisError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=hold_a_connection) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not failures, failures[:3]
        assert len(done) == CALLERS

"""shared.gevent_polls under real gevent patching against a real redis-server: zero-timeout
readiness checks take the kernel's poll and still tell a connection holding an unread reply from
a clean one, and a read that waits still lets other greenlets run."""

import json
import subprocess
import sys
import textwrap

import pytest

from shared.cli import processes

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    import gevent, redis
    from redis._parsers import hiredis
    from shared import gevent_polls

    report = {"installed": gevent_polls.install(), "again": gevent_polls.install()}
    r = redis.Redis(port=int(sys.argv[1]), decode_responses=True)
    r.set("k", "v")
    report["get"] = r.get("k")

    # A connection holding a reply nobody read: the zero-timeout check (the kernel's poll) sees it.
    conn = r.connection_pool.get_connection()
    report["clean_seen"] = conn.can_read()
    conn.send_command("PING")
    time.sleep(0.1)
    report["dirty_seen"] = conn.can_read()
    conn.disconnect()
    r.connection_pool.release(conn)

    # A pub/sub read that waits 0.5 s must leave the hub free for other greenlets.
    ticks = []
    def tick():
        for _ in range(20):
            ticks.append(1)
            gevent.sleep(0.01)
    pubsub = r.pubsub()
    pubsub.subscribe("nothing-here")
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    ticker = gevent.spawn(tick)
    started = time.monotonic()
    report["message"] = pubsub.get_message(timeout=0.5)
    report["waited"] = time.monotonic() - started
    report["ticks_during_wait"] = len(ticks)
    ticker.join()
    report["kernel_poll"] = type(hiredis.select).__name__
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    port = processes.free_port()
    server = processes.redis_server("broker", port, tmp_path_factory.mktemp("gevent-polls")).start()
    yield port
    server.stop()


def run(script: str, port: int) -> dict:
    out = subprocess.run([sys.executable, "-c", script, str(port)], capture_output=True, text=True, timeout=60,
                         env=processes.child_env({}))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_under_gevent_commands_work_dirty_connections_are_caught_and_waits_yield(redis_port):
    report = run(SCRIPT, redis_port)
    assert report["installed"] and report["again"] and report["kernel_poll"] == "_SelectModule"
    assert report["get"] == "v"
    assert report["clean_seen"] is False and report["dirty_seen"] is True
    assert report["message"] is None and report["waited"] >= 0.45
    assert report["ticks_during_wait"] >= 10  # the other greenlet ran while the read waited


def test_without_gevent_nothing_changes(redis_port):
    script = textwrap.dedent("""
        import json, redis
        from redis._parsers import hiredis
        from shared import gevent_polls
        print(json.dumps({"installed": gevent_polls.install(), "select": hiredis.select.__name__}))
    """)
    assert run(script, redis_port) == {"installed": False, "select": "select"}

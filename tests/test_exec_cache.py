"""The execution cache against a real redis-server: hits, scopes, errors, limits, single-flight, failures."""

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from shared.cli.processes import REPO_ROOT, child_env
from shared.guards.degradation import reset_breakers
from shared.identity import Principal
from tests.guard_support import SLOW, make_cache, pooled

T = TypeVar("T")
GUARD_STORE = "exec_cache"  # the guard_redis and r fixtures (tests/conftest.py) run this store
ALICE = Principal("alice", "acme", ("analyst",))
BOB = Principal("bob", "acme", ("analyst",))


def on_threads(count: int, call: Callable[[], T]) -> list[T]:
    """`call` run on `count` threads at once; what each returned."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: call(), range(count)))


class Counting:
    """A tool that counts its real runs."""

    def __init__(self, result=None, error: str | None = None, delay_s: float = 0.0):
        self.runs = 0
        self.result = result
        self.error = error
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def __call__(self, params: dict):
        with self._lock:
            self.runs += 1
        time.sleep(self.delay_s)
        if self.error:
            raise RuntimeError(self.error)
        return self.result if self.result is not None else {"echo": params}


def test_miss_then_hit_with_fresh_volatile_fields_and_exact_round_trip(r):
    cache = make_cache(r)
    value = {"temp_c": 14.5, "big": 2 ** 60, "tiny": 1e-300, "text": "pluie ☔ \u2028", "nested": [None, True, 0, -1.0],
             "empty": {}}
    tool = Counting(value)
    first = cache.run(SLOW, {"city": "Paris", "timestamp": 1, "request_id": "a"}, ALICE, tool)
    second = cache.run(SLOW, {"request_id": "b", "city": "Paris", "timestamp": 2}, BOB, tool)
    assert (first.cache, second.cache, tool.runs) == ("miss", "hit", 1)
    assert second.value == value and json.dumps(second.value) == json.dumps(value)
    assert isinstance(second.value["nested"][3], float) and isinstance(second.value["big"], int)
    assert cache.run(SLOW, {"city": "London"}, ALICE, tool).cache == "miss"
    assert 0 < r.ttl(cache.key(SLOW, {"city": "Paris"}, ALICE).result) <= 60


def test_user_scoped_results_never_reach_another_user(r):
    cache = make_cache(r)
    orders = {ALICE.user: ["book"], BOB.user: ["lamp"]}
    calls = []

    def my_orders(params: dict, who: Principal) -> dict:
        calls.append(who.user)
        return {"orders": orders[who.user]}

    a = cache.run("my_orders", {"limit": 5}, ALICE, lambda p: my_orders(p, ALICE))
    b = cache.run("my_orders", {"limit": 5}, BOB, lambda p: my_orders(p, BOB))
    again = cache.run("my_orders", {"limit": 5}, ALICE, lambda p: my_orders(p, ALICE))
    assert (a.value, b.value, again.value) == ({"orders": ["book"]}, {"orders": ["lamp"]}, {"orders": ["book"]})
    assert (a.cache, b.cache, again.cache) == ("miss", "miss", "hit")
    assert calls == ["alice", "bob"]


def test_side_effecting_and_unknown_tools_are_never_cached(r):
    cache = make_cache(r)
    tool = Counting({"ticket": 1})
    for _ in range(3):
        assert cache.run("create_ticket", {"title": "x"}, ALICE, tool).cache == "bypass"
        assert cache.run("never_declared", {"q": 1}, ALICE, tool).cache == "bypass"
    assert tool.runs == 6
    assert r.dbsize() == 0


def test_errors_are_not_cached_unless_configured_briefly(r):
    failing = Counting(error="upstream said no")
    cache = make_cache(r)
    outcomes = [cache.run(SLOW, {"city": "Nowhere"}, ALICE, failing) for _ in range(2)]
    assert [(o.ok, o.error, o.cache) for o in outcomes] == [(False, "upstream said no", "miss")] * 2
    assert failing.runs == 2

    brief = make_cache(r, error_ttl_s=30)
    first, second = (brief.run(SLOW, {"city": "Atlantis"}, ALICE, failing) for _ in range(2))
    assert (first.cache, second.cache, second.ok, second.error) == ("miss", "hit", False, "upstream said no")
    assert failing.runs == 3
    assert 0 < r.ttl(brief.key(SLOW, {"city": "Atlantis"}, ALICE).result) <= 30


def test_results_over_the_size_limit_or_not_exact_json_are_returned_but_not_cached(r):
    cache = make_cache(r, max_bytes=1000)
    big = Counting({"blob": "x" * 2000})
    assert [cache.run(SLOW, {"q": "big"}, ALICE, big).cache for _ in range(2)] == ["miss", "miss"]
    odd = Counting(("a", "tuple"))
    outcome = cache.run(SLOW, {"q": "tuple"}, ALICE, odd)
    assert outcome.value == ("a", "tuple") and cache.run(SLOW, {"q": "tuple"}, ALICE, odd).cache == "miss"
    assert not r.exists(cache.key(SLOW, {"q": "big"}, ALICE).result)


def test_concurrent_callers_in_one_process_share_one_run(r):
    cache = make_cache(r)
    tool = Counting({"v": 1}, delay_s=0.3)
    results = on_threads(20, lambda: cache.run(SLOW, {"q": "same"}, ALICE, tool))
    assert tool.runs == 1
    assert sorted(o.cache for o in results).count("miss") == 1
    assert {o.cache for o in results} <= {"miss", "coalesced", "hit"}
    assert all(o.value == {"v": 1} for o in results)


def test_waiters_share_the_owners_error_without_caching_it(r):
    cache = make_cache(r)
    tool = Counting(error="boom", delay_s=0.3)
    results = on_threads(5, lambda: cache.run(SLOW, {"q": "err"}, ALICE, tool))
    assert tool.runs == 1 and all(o.error == "boom" for o in results)
    assert cache.run(SLOW, {"q": "err"}, ALICE, tool).cache == "miss" and tool.runs == 2


def _spawn(url: str, threads: int, run_s: float, lease_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.guard_support", url, str(threads), str(run_s), str(lease_s)],
                            cwd=REPO_ROOT, env=child_env({}), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def _wait_for(proc: subprocess.Popen, line: str) -> None:
    for out in proc.stdout:
        if out.strip() == line:
            return
    raise AssertionError(f"process ended before printing {line!r}")


@pytest.mark.timeout(120)
def test_stampede_of_200_identical_misses_from_4_processes_runs_the_tool_once(r, guard_redis):
    url = guard_redis.env["EXEC_CACHE_REDIS_URL"]
    procs = [_spawn(url, 50, 0.5, 10.0) for _ in range(4)]
    for proc in procs:
        _wait_for(proc, "ready")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outcomes = []
    for proc in procs:
        lines = [line for line in proc.stdout if line.startswith("[")]
        assert proc.wait(timeout=60) == 0
        outcomes += json.loads(lines[-1])
    assert len(outcomes) == 200
    assert int(r.get("test:runs")) == 1
    assert [c for c, _ in outcomes].count("miss") == 1
    assert {c for c, _ in outcomes} <= {"miss", "coalesced", "hit"}
    expected = {"city": "Paris", "temp_c": 14.5, "tags": ["rain", "wind"], "note": "exact ✓"}
    assert all(value == expected for _, value in outcomes)


@pytest.mark.timeout(60)
def test_a_waiter_takes_over_after_the_lease_when_the_owner_is_killed(r, guard_redis):
    url = guard_redis.env["EXEC_CACHE_REDIS_URL"]
    owner = _spawn(url, 1, 60.0, 1.5)
    _wait_for(owner, "ready")
    owner.stdin.write("go\n")
    owner.stdin.flush()
    _wait_for(owner, "running")

    cache = make_cache(r, lease_s=1.5)
    tool = Counting({"city": "Paris", "temp_c": 14.5, "tags": ["rain", "wind"], "note": "from the waiter"})
    result = []
    waiter = threading.Thread(target=lambda: result.append(cache.run(SLOW, {"city": "Paris"}, ALICE, tool)))
    waiter.start()
    time.sleep(0.3)
    assert tool.runs == 0, "the waiter waits while the owner holds the lease"
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=10)
    waiter.join(timeout=30)
    assert result and result[0].cache == "miss" and result[0].value["note"] == "from the waiter"
    assert tool.runs == 1 and int(r.get("test:runs")) == 1
    assert cache.run(SLOW, {"city": "Paris"}, BOB, tool).cache == "hit"


def test_a_slow_owner_keeps_its_lease_past_its_length(r):
    cache = make_cache(r, lease_s=0.3)
    tool = Counting({"v": "slow"}, delay_s=1.2)
    results = []
    owner = threading.Thread(target=lambda: results.append(cache.run(SLOW, {"q": "long"}, ALICE, tool)))
    owner.start()
    while not r.exists(cache.key(SLOW, {"q": "long"}, ALICE).lease):
        time.sleep(0.01)
    waiter = cache.run(SLOW, {"q": "long"}, BOB, tool)
    owner.join()
    assert (waiter.cache, waiter.value, tool.runs) == ("coalesced", {"v": "slow"}, 1)
    assert not r.exists(cache.key(SLOW, {"q": "long"}, ALICE).lease), "released when done"


def test_a_waiter_runs_the_tool_itself_after_the_wait_timeout(r):
    slow_owner = make_cache(r, lease_s=30.0)
    impatient = make_cache(r, lease_s=30.0, wait_s=0.5)
    owner_tool = Counting({"who": "owner"}, delay_s=2.0)
    waiter_tool = Counting({"who": "waiter"})
    owner = threading.Thread(target=lambda: slow_owner.run(SLOW, {"q": "slow"}, ALICE, owner_tool))
    owner.start()
    while not r.exists(slow_owner.key(SLOW, {"q": "slow"}, ALICE).lease):
        time.sleep(0.01)
    outcome = impatient.run(SLOW, {"q": "slow"}, ALICE, waiter_tool)
    assert (outcome.cache, outcome.value, waiter_tool.runs) == ("miss", {"who": "waiter"}, 1)
    owner.join()


def test_with_the_cache_redis_down_tools_run_directly(guard_redis):
    from prometheus_client import REGISTRY

    def degraded() -> float:
        return REGISTRY.get_sample_value("turnstream_guard_degraded_total", {"guard": "exec_cache"}) or 0.0

    reset_breakers()
    dead = pooled(f"redis://127.0.0.1:{guard_redis.ports['exec_cache']}/0")
    guard_redis.stop_redis("exec_cache")
    before = degraded()
    try:
        cache = make_cache(dead)
        tool = Counting({"v": 1})
        outcomes = [cache.run(SLOW, {"q": i}, ALICE, tool) for i in range(3)]
        assert [(o.ok, o.value, o.cache) for o in outcomes] == [(True, {"v": 1}, "bypass")] * 3
        assert tool.runs == 3
        assert degraded() - before == 3, "the metric counts every call that skipped the cache"
    finally:
        guard_redis.restart_redis("exec_cache")
        reset_breakers()

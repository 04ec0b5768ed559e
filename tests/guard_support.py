"""Helpers for the guard tests: redis-servers for the two guard stores, caches and memos on them,
a tiny identity provider over HTTP, and a process that makes many identical tool calls."""

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

from shared.cli.processes import free_port
from shared.guards.declarations import Declarations, ToolSpec
from shared.guards.degradation import reset_breakers
from shared.guards.exec_cache import ExecCache
from shared.redis_stores import make_pool
from shared.settings import Settings
from tests.stack import STORE_ENV, Stack

SLOW = ToolSpec("slow_lookup", cacheable=True, scope="global", ttl_s=60)
DECLARATIONS = Declarations(tools={
    SLOW.name: SLOW,
    "my_orders": ToolSpec("my_orders", cacheable=True, scope="user"),
    "create_ticket": ToolSpec("create_ticket", cacheable=False),
})


def pooled(url: str) -> redis.Redis:
    """A client with the project's blocking pool (many threads wait instead of erroring)."""
    return redis.Redis(connection_pool=make_pool(url, Settings(), max_connections=300))


@contextmanager
def one_store(base_dir: Path, store: str) -> Iterator[Stack]:
    """A redis-server for one guard store, with that store's conf."""
    system = Stack(base_dir).start_redis(stores=(store,))
    try:
        yield system
    finally:
        system.stop()


@contextmanager
def emptied_client(system: Stack, store: str) -> Iterator[redis.Redis]:
    """A pooled client on `system`'s `store`, emptied (keys and command stats), its breakers closed."""
    reset_breakers()
    client = pooled(system.env[STORE_ENV[store]])
    client.flushdb()
    client.config_resetstat()
    try:
        yield client
    finally:
        client.connection_pool.disconnect()


def make_cache(r: redis.Redis, **overrides) -> ExecCache:
    options = {"declarations": DECLARATIONS, "default_ttl_s": 60, "max_bytes": 64 * 1024, "error_ttl_s": 0,
               "lease_s": 10.0, "wait_s": 20.0, "block_cap_s": 4.0, **overrides}
    return ExecCache(r, **options)


class IdentityProvider:
    """An HTTP verifier endpoint: POST {"user", "tenant", "roles", "tool"} -> {"allowed": bool}.

    `grants` maps (tenant, user) to allowed tools; `down` makes it answer 503; `delay_s` slows it.
    It records how many requests were in flight at once."""

    def __init__(self):
        self.grants: dict[tuple[str, str], set[str]] = {}
        self.down = False
        self.delay_s = 0.0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a caller that timed out hung up: expected
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/check"

    def start(self) -> "IdentityProvider":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with idp._lock:
                    idp.requests += 1
                    idp.in_flight += 1
                    idp.max_in_flight = max(idp.max_in_flight, idp.in_flight)
                try:
                    time.sleep(idp.delay_s)
                    if idp.down:
                        self._reply(503, {"error": "down"})
                    else:
                        allowed = body["tool"] in idp.grants.get((body["tenant"], body["user"]), set())
                        self._reply(200, {"allowed": allowed})
                finally:
                    with idp._lock:
                        idp.in_flight -= 1

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _stampede_process(url: str, threads: int, run_s: float, lease_s: float) -> None:
    """Print "ready", wait for a line on stdin, make `threads` identical calls at once, print the outcomes.

    Each real run of the tool increments `runs` on the same Redis, so the parent counts executions."""
    from shared.identity import Principal

    r = pooled(url)
    cache = make_cache(r, lease_s=lease_s)
    principal = Principal("alice", "acme", ("analyst",))

    def tool(params: dict) -> dict:
        r.incr("test:runs")
        print("running", flush=True)
        time.sleep(run_s)
        return {"city": params["city"], "temp_c": 14.5, "tags": ["rain", "wind"], "note": "exact ✓"}

    outcomes: list = []

    def call(i: int) -> None:
        outcome = cache.run(SLOW, {"city": "Paris", "request_id": f"r{i}", "timestamp": time.time()}, principal, tool)
        outcomes.append([outcome.cache, outcome.value])

    release_together(threads, call)
    print(json.dumps(outcomes), flush=True)


def release_together(threads: int, call: Callable[[int], None]) -> None:
    """A stampede child's protocol (here and in bench/guards.py): start `threads` threads that will
    run call(i), print "ready", wait for a line on stdin, then let them all go at once and join them.
    The parent releases every child with one line each, so all calls of all processes start together."""
    go = threading.Event()

    def gated(i: int) -> None:
        go.wait()
        call(i)

    workers = [threading.Thread(target=gated, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    _stampede_process(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))

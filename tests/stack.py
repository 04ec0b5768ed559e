"""A whole turnstream system for tests: real redis-servers on free ports, real Celery workers,
gunicorn with gevent. It uses the same launchers as `turnstream dev` (shared.cli.processes)."""

import os
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from shared.cli import processes
from shared.defaults import STORE_URL_ENV as STORE_ENV, STORES

TEST_SECRET = "test-secret-of-at-least-thirty-two-bytes!"


class Stack:
    def __init__(self, base_dir: Path, **env: str):
        self.base_dir = base_dir
        self.log_dir = base_dir / "logs"
        # Test clients are scripts that send faster than any person as one user (50 turns at once,
        # hundreds of stream reconnects a second): the per-client request limit is out of their way
        # here, and tested on a web process of its own (tests/test_hostile.py).
        self.env: dict[str, str] = {"TURNSTREAM_SECRET": TEST_SECRET, "TURNSTREAM_TOOL_LATENCY_MS": "0",
                                    "TURNSTREAM_REQUEST_RATE_LIMIT": "100000/second",
                                    "TURNSTREAM_DEV": "1", "TURNSTREAM_REPORT_DURATION_S": "3",
                                    "PROMETHEUS_MULTIPROC_DIR": str(base_dir / "metrics"),
                                    "TURNSTREAM_TICKETS_FILE": str(base_dir / "tickets.jsonl"), **env}
        (base_dir / "metrics").mkdir(parents=True, exist_ok=True)
        self.redis: dict[str, object] = {}
        self.ports: dict[str, int] = {}
        self.workers: list = []
        self.web = None
        self.web_port: int | None = None

    # --- Redis -----------------------------------------------------------------
    def start_redis(self, stores: tuple[str, ...] = STORES, confs: dict[str, Path] | None = None) -> "Stack":
        for store in stores:
            port = self.ports.get(store) or processes.free_port()
            conf = (confs or {}).get(store)
            self.redis[store] = processes.redis_server(store, port, self.base_dir, conf=conf).start()
            self.ports[store] = port
            self.env[STORE_ENV[store]] = f"redis://127.0.0.1:{port}/0"
        return self

    def start_single_redis(self) -> "Stack":
        """Single-instance mode: one noeviction server, REDIS_URL, a DB per store."""
        port = processes.free_port()
        self.redis["single"] = processes.redis_server("broker", port, self.base_dir / "single").start()
        self.ports["single"] = port
        self.env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        return self

    def client(self, store: str) -> redis.Redis:
        if "single" in self.ports:
            return redis.Redis(port=self.ports["single"], db=STORES.index(store), decode_responses=True)
        return redis.Redis(port=self.ports[store], decode_responses=True)

    def stop_redis(self, store: str) -> None:
        self.redis[store].stop()

    def restart_redis(self, store: str) -> None:
        self.redis[store].start()

    # --- Workers and web -----------------------------------------------------------
    def start_worker(self, name: str = "worker", wait: bool = True, **options) -> object:
        worker = processes.celery_worker(self.env, self.log_dir, name=name, **options).start()
        self.workers.append(worker)
        if wait:
            processes.wait_for_worker(self.env, check=lambda: self._still_running(worker, name))
        return worker

    def _still_running(self, worker, name: str) -> None:
        if not worker.running():
            raise RuntimeError(f"the {name} worker exited before answering a ping; its log ends:\n"
                               f"{self.log(name)[-3000:]}")

    @contextmanager
    def running(self, apply_env: bool = False, single_redis: bool = False, **worker_options):
        """The whole system: Redis (a server per store, or one in single-instance mode), one worker
        (`worker_options` go to start_worker) and the web app; everything is stopped on exit."""
        try:
            self.start_single_redis() if single_redis else self.start_redis()
            if apply_env:
                self.apply_env()
            self.start_worker(**worker_options)
            self.start_web()
            yield self
        finally:
            self.stop()

    def start_web(self, workers: int = 1) -> str:
        self.web_port = processes.free_port()
        self.web = processes.web_server(self.env, self.web_port, self.log_dir, workers=workers).start()
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for executor in [self.web, *reversed(self.workers), *self.redis.values()]:
            if executor is not None:
                with suppress(Exception):
                    executor.stop()

    @contextmanager
    def env_applied(self):
        """apply_env() for a module of its own, then point this process back at what it used before
        (the session stack), for the modules after it."""
        from shared.redis_stores import reset_clients
        from shared.settings import reload_settings

        saved = dict(os.environ)
        self.apply_env()
        try:
            yield self
        finally:
            os.environ.clear()
            os.environ.update(saved)
            reload_settings()
            reset_clients()

    def apply_env(self) -> None:
        """Point this (test) process at the stack: settings and clients re-read the environment."""
        from shared.redis_stores import reset_clients
        from shared.settings import reload_settings

        for name in ("REDIS_URL", *STORE_ENV.values()):
            os.environ.pop(name, None)
        os.environ.update(self.env)
        reload_settings()
        reset_clients()

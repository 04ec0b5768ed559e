"""Starting the system's processes: four redis-servers, Celery workers, the gunicorn web server.

`turnstream dev` and the test fixtures both use these, so tests run the same commands a
developer does. Every process is a mirakuru executor, which waits until it is ready and
stops it (and any child it forked) on exit."""

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from mirakuru import HTTPExecutor, SimpleExecutor, TCPExecutor

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
CONF_FILES = {"broker": "broker.conf", "progress": "progress.conf",
              "exec_cache": "exec-cache.conf", "auth_memo": "auth-memo.conf"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _log_file(log_dir: Path, name: str):
    log_dir.mkdir(parents=True, exist_ok=True)
    return open(log_dir / f"{name}.log", "ab")


def redis_server(role: str, port: int, data_dir: Path, conf: Path | None = None,
                 extra: list[str] | None = None) -> TCPExecutor:
    """A redis-server for `role`, configured by deploy/redis/<role>.conf, on 127.0.0.1:`port`."""
    role_dir = data_dir / role
    role_dir.mkdir(parents=True, exist_ok=True)
    conf = conf or DEPLOY / "redis" / CONF_FILES[role]
    command = ["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1",
               "--dir", str(role_dir), "--logfile", str(role_dir / "redis.log"), *(extra or [])]
    return TCPExecutor(command, host="127.0.0.1", port=port, timeout=20, stdout=None)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for a child process: ours, plus `env`, with the repo importable."""
    merged = {**os.environ, **env}
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), merged.get("PYTHONPATH")]))
    return merged


def celery_worker(env: dict[str, str], log_dir: Path, name: str = "worker", queues: str | None = None,
                  pool: str = "threads", concurrency: int = 8) -> SimpleExecutor:
    """A Celery worker; without `queues`, one that takes every queue (`llm` and `tools`)."""
    command = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-l", "info", "-P", pool,
               "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h", "--without-mingle", "--without-gossip"]
    if queues:
        command += ["-Q", queues]
    return SimpleExecutor(command, cwd=str(REPO_ROOT), envvars=child_env(env), timeout=60,
                          stdout=_log_file(log_dir, name), stderr=-2)


@dataclass(frozen=True)
class WorkerSpec:
    """One kind of worker: its name, the queues it consumes (comma-separated, first served first),
    its pool and its concurrency."""

    name: str
    queues: str
    pool: str
    concurrency: int

    def celery_args(self) -> list[str]:
        return ["-Q", self.queues, "-P", self.pool, "-c", str(self.concurrency)]


def worker_specs(reasoner: str, concurrency: int | None = None,
                 llm_concurrency: int | None = None) -> dict[str, WorkerSpec]:
    """The tools worker and the llm worker for `reasoner`.

    Tools are I/O: gevent, many greenlets, and the turns' first steps (the discover queue) before
    the tool-call backlog. The llm worker's pool follows the reasoner: `openai` calls a model
    server over HTTP, so its calls are I/O too (gevent, many greenlets); `local` and `rules` burn
    CPU in the process (llama.cpp releases the GIL), so a few threads. Rejected: one pool for both
    kinds of reasoner; gevent cannot preempt a llama.cpp call, threads waste a slot per waiting
    HTTP call."""
    from shared import defaults

    io_bound = reasoner == "openai"
    llm_pool, llm_default = ("gevent", defaults.LLM_GREENLETS) if io_bound else ("threads", defaults.LLM_THREADS)
    return {
        "tools": WorkerSpec("tools", ",".join((defaults.DISCOVER_QUEUE, defaults.TOOLS_QUEUE)), "gevent",
                            concurrency or defaults.TOOLS_GREENLETS),
        "llm": WorkerSpec("llm", defaults.LLM_QUEUE, llm_pool, llm_concurrency or llm_default),
    }


def dev_workers(reasoner: str, concurrency: int | None = None, llm_concurrency: int | None = None) -> list[WorkerSpec]:
    """The workers `turnstream dev` starts, in start order."""
    return list(worker_specs(reasoner, concurrency, llm_concurrency).values())


def tool_server(env: dict[str, str], port: int, log_dir: Path) -> TCPExecutor:
    """The built-in MCP tool server over streamable HTTP, at http://127.0.0.1:`port`/mcp."""
    command = [sys.executable, "-m", "workers.toolserver", "--http", "--port", str(port)]
    return TCPExecutor(command, host="127.0.0.1", port=port, cwd=str(REPO_ROOT), envvars=child_env(env), timeout=30,
                       stdout=_log_file(log_dir, f"toolserver-{port}"), stderr=-2)


def web_server(env: dict[str, str], port: int, log_dir: Path, workers: int = 1) -> HTTPExecutor:
    """gunicorn with gevent workers (deploy/gunicorn.conf.py), ready once /healthz answers."""
    command = [sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py"),
               "-b", f"127.0.0.1:{port}", "-w", str(workers), "web.wsgi:app"]
    return HTTPExecutor(command, url=f"http://127.0.0.1:{port}/healthz", method="GET", cwd=str(REPO_ROOT),
                        envvars=child_env(env), timeout=60, stdout=_log_file(log_dir, "web"), stderr=-2)


def flower(env: dict[str, str], port: int, log_dir: Path) -> HTTPExecutor:
    """Flower on 127.0.0.1:`port` through `turnstream flower` (auth from FLOWER_BASIC_AUTH in `env`)."""
    command = [sys.executable, "-m", "shared.cli", "flower", "--port", str(port), "--address", "127.0.0.1"]
    return HTTPExecutor(command, url=f"http://127.0.0.1:{port}/healthcheck", method="GET", cwd=str(REPO_ROOT),
                        envvars=child_env(env), timeout=60, stdout=_log_file(log_dir, "flower"), stderr=-2)


def wait_for_worker(env: dict[str, str], timeout: float = 60.0, count: int = 1) -> list[str]:
    """Block until at least `count` Celery workers answer a ping on the broker in `env`."""
    import time

    from kombu.exceptions import OperationalError
    from redis import RedisError

    from shared.celery_config import make_celery
    from shared.settings import Settings

    app = make_celery("turnstream-ping", Settings(**_settings_overrides(env)))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                replies = app.control.ping(timeout=0.5)
            except (ConnectionError, OSError, OperationalError, RedisError):
                replies = []  # the broker is (re)starting: ask again
            if len(replies) >= count:
                return [name for reply in replies for name in reply]
        raise TimeoutError(f"no Celery worker answered within {timeout:.0f}s")
    finally:
        app.close()


def _settings_overrides(env: dict[str, str]) -> dict[str, str]:
    names = {"REDIS_URL": "redis_url", "BROKER_REDIS_URL": "broker_redis_url"}
    return {field: env[name] for name, field in names.items() if name in env}

"""Starting the system's processes: four redis-servers, Celery workers, the gunicorn web server.

`turnstream dev` and the test fixtures both use these, so tests run the same commands a
developer does. Every process is a mirakuru executor, which waits until it is ready and
stops it (and any child it forked) on exit."""

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mirakuru import HTTPExecutor, SimpleExecutor, TCPExecutor

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
CONF_FILES = {"broker": "broker.conf", "progress": "progress.conf",
              "exec_cache": "exec-cache.conf", "auth_memo": "auth-memo.conf"}

# How long a Python process (a Celery worker, gunicorn, a tool server, Flower) may take to become
# ready. Starting one imports Celery or the MCP SDK, and a worker opens its MCP sessions (starting
# a tool server) before it answers: 15-20 s on a 2-core machine at load 12, and it grows with the
# load. Every wait also watches the process, so one that dies is reported at once: a long bound
# costs nothing when start-up fails. Rejected: 60 s, which a loaded machine reached.
START_TIMEOUT_S = 180.0


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


def redis_server(store: str, port: int, data_dir: Path, conf: Path | None = None,
                 extra: list[str] | None = None) -> TCPExecutor:
    """A redis-server for `store`, configured by deploy/redis/<store>.conf, on 127.0.0.1:`port`."""
    store_dir = data_dir / store
    store_dir.mkdir(parents=True, exist_ok=True)
    conf = conf or DEPLOY / "redis" / CONF_FILES[store]
    command = ["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1",
               "--dir", str(store_dir), "--logfile", str(store_dir / "redis.log"), *(extra or [])]
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
                          stdout=_log_file(log_dir, name), stderr=-2)  # the time a stop may take


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

    Tools are I/O: gevent, many greenlets. The llm worker's pool follows the reasoner: `openai`
    calls a model server over HTTP, so its calls are I/O too (gevent, many greenlets); `local` and
    `rules` burn CPU in the process (llama.cpp releases the GIL), so a few threads. Rejected: one
    pool for both kinds of reasoner; gevent cannot preempt a llama.cpp call, threads waste a slot
    per waiting HTTP call.

    The turns' first steps (the discover queue, read before the worker's own backlog) go to the
    threads llm worker, which runs `reason` in discover's task (workers.tasks.reason_here): one
    hop fewer. Under gevent one task has one time limit, which the model call would share with
    discover, so with `openai` the tools worker serves them and sends `reason` on."""
    from shared import defaults

    io_bound = reasoner == "openai"
    llm_pool, llm_default = ("gevent", defaults.LLM_GREENLETS) if io_bound else ("threads", defaults.LLM_THREADS)
    # The turns' first step goes where it can run the second in the same task (workers.tasks.reason_here).
    discover_on = "tools" if io_bound else "llm"
    return {
        "tools": WorkerSpec("tools", queue_list(defaults.TOOLS_QUEUE, first=discover_on == "tools"), "gevent",
                            concurrency or defaults.TOOLS_GREENLETS),
        "llm": WorkerSpec("llm", queue_list(defaults.LLM_QUEUE, first=discover_on == "llm"), llm_pool,
                          llm_concurrency or llm_default),
    }


def queue_list(queue: str, first: bool) -> str:
    """A worker's -Q: its queue, after the discover queue if it serves the turns' first steps."""
    from shared import defaults

    return f"{defaults.DISCOVER_QUEUE},{queue}" if first else queue


def dev_workers(reasoner: str, concurrency: int | None = None, llm_concurrency: int | None = None) -> list[WorkerSpec]:
    """The workers `turnstream dev` starts, in start order."""
    return list(worker_specs(reasoner, concurrency, llm_concurrency).values())


def tool_server(env: dict[str, str], port: int, log_dir: Path) -> TCPExecutor:
    """The built-in MCP tool server over streamable HTTP, at http://127.0.0.1:`port`/mcp."""
    command = [sys.executable, "-m", "workers.toolserver", "--http", "--port", str(port)]
    return TCPExecutor(command, host="127.0.0.1", port=port, cwd=str(REPO_ROOT), envvars=child_env(env),
                       timeout=START_TIMEOUT_S, stdout=_log_file(log_dir, f"toolserver-{port}"), stderr=-2)


def web_server(env: dict[str, str], port: int, log_dir: Path, workers: int = 1) -> HTTPExecutor:
    """gunicorn with gevent workers (deploy/gunicorn.conf.py), ready once /healthz answers."""
    command = [sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py"),
               "-b", f"127.0.0.1:{port}", "-w", str(workers), "web.wsgi:app"]
    return HTTPExecutor(command, url=f"http://127.0.0.1:{port}/healthz", method="GET", cwd=str(REPO_ROOT),
                        envvars=child_env(env), timeout=START_TIMEOUT_S, stdout=_log_file(log_dir, "web"), stderr=-2)


def flower(env: dict[str, str], port: int, log_dir: Path) -> HTTPExecutor:
    """Flower on 127.0.0.1:`port` through `turnstream flower` (auth from FLOWER_BASIC_AUTH in `env`)."""
    command = [sys.executable, "-m", "shared.cli", "flower", "--port", str(port), "--address", "127.0.0.1"]
    return HTTPExecutor(command, url=f"http://127.0.0.1:{port}/healthcheck", method="GET", cwd=str(REPO_ROOT),
                        envvars=child_env(env), timeout=START_TIMEOUT_S, stdout=_log_file(log_dir, "flower"),
                        stderr=-2)


def wait_for_worker(env: dict[str, str], timeout: float = START_TIMEOUT_S, count: int = 1,
                    check: Callable[[], None] | None = None) -> list[str]:
    """Block until at least `count` Celery workers answer a ping on the broker in `env`.
    `check` is called between pings and raises to stop waiting (a worker that died)."""
    import time

    from kombu.exceptions import OperationalError
    from redis import RedisError

    from shared.celery_config import make_celery
    from shared.settings import Settings

    app = make_celery("turnstream-ping", Settings(**_settings_overrides(env)))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if check is not None:
                check()
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


# --- Sentinel and Cluster ------------------------------------------------------------------------
SENTINEL_MASTER = "turnstream-broker"


def sentinel(port: int, master_port: int, data_dir: Path, master: str = SENTINEL_MASTER,
             down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> TCPExecutor:
    """A Redis Sentinel on 127.0.0.1:`port` watching the master on `master_port` (quorum 2 of 3).
    Sentinel rewrites its own config file, so each gets a fresh one in `data_dir`."""
    own_dir = data_dir / f"sentinel-{port}"
    own_dir.mkdir(parents=True, exist_ok=True)
    conf = own_dir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {own_dir}\nlogfile {own_dir / 'sentinel.log'}\n"
                    f"sentinel monitor {master} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
                    f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {master} 1\n")
    return TCPExecutor(["redis-server", str(conf), "--sentinel"], host="127.0.0.1", port=port, timeout=20, stdout=None)


class SentinelSet:
    """A master, its replica and three sentinels for one store; `url` is the store's sentinel:// URL."""

    def __init__(self, store: str, data_dir: Path, master: str = SENTINEL_MASTER, down_after_ms: int = 1000):
        self.master_name = master
        self.server_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        master_port, replica_port = self.server_ports
        quick_sync = ["--repl-diskless-sync-delay", "0"]  # so a failover soon after start finds the replica ready
        self.servers = [redis_server(store, master_port, data_dir / "master", extra=quick_sync,
                                     conf=_own_conf(store, data_dir / "master")),
                        redis_server(store, replica_port, data_dir / "replica",
                                     extra=[*quick_sync, "--replicaof", "127.0.0.1", str(master_port)],
                                     conf=_own_conf(store, data_dir / "replica"))]
        self.sentinels = [sentinel(port, master_port, data_dir, master, down_after_ms) for port in self.sentinel_ports]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"sentinel://{hosts}/0?master={self.master_name}"

    def start(self) -> "SentinelSet":
        for executor in [*self.servers, *self.sentinels]:
            executor.start()
        return self

    command = ["redis-sentinel-set"]
    process = None  # several processes: `turnstream dev` supervises it through running() and stop()

    def running(self) -> bool:
        return all(executor.running() for executor in self.sentinels)

    def stop(self) -> None:
        for executor in [*self.sentinels, *self.servers]:
            executor.stop()

    def master_port(self) -> int:
        """The port of the server the sentinels currently call master."""
        import redis

        for port in self.sentinel_ports:
            try:
                return int(redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(self.master_name)[1])
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def server(self, port: int) -> TCPExecutor:
        return self.servers[self.server_ports.index(port)]


class RedisCluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, for one store's config,
    created with `redis-cli --cluster create`. `url` is the store's cluster:// URL."""

    def __init__(self, store: str, data_dir: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000):
        self.ports = [free_port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        # A replica syncs at once (no diskless delay) and may always take over: a master killed
        # right after start must still fail over.
        cluster_options = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                           "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0",
                           "--cluster-require-full-coverage", "no", "--cluster-allow-pubsubshard-when-down", "yes"]
        # Each node's cluster bus gets its own free port too (by default it is port + 10000,
        # which does not exist for a free port above 55535).
        self.nodes = {port: redis_server(store, port, data_dir / f"node-{port}",
                                         extra=[*cluster_options, "--cluster-port", str(free_port()),
                                                "--cluster-config-file", str(data_dir / f"node-{port}" / "nodes.conf")])
                      for port in self.ports}

    @property
    def url(self) -> str:
        return "cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def start(self, timeout: float = 60.0) -> "RedisCluster":
        import subprocess

        for node in self.nodes.values():
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every slot has a master and every node agrees the cluster is ok."""
        import time

        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for port in self.live_ports():
                try:
                    states.append(_cluster_info(port))
                except redis.RedisError:
                    states.append({})
            if states and all(s.get("cluster_state") == "ok" and str(s.get("cluster_slots_ok")) == "16384"
                              for s in states) and self._replicas_linked():
                return
            time.sleep(0.2)
        raise TimeoutError("the Redis Cluster did not become ready")

    def _replicas_linked(self) -> bool:
        import redis

        try:
            infos = [_node(port).info("replication") for port in self.live_ports()]
        except redis.RedisError:
            return False
        return all(info.get("master_link_status") == "up" for info in infos if info.get("role") == "slave")  # INFO replication

    def live_ports(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.running()]

    def masters(self) -> list[int]:
        """Ports of the nodes that are masters now."""
        import redis

        for port in self.live_ports():
            try:
                lines = _node(port).execute_command("CLUSTER", "NODES").splitlines()
            except redis.RedisError:
                continue
            # <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot> ...
            fields = [line.split() for line in lines if line.strip()]
            return sorted(int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in fields
                          if "master" in f[2].split(",") and "fail" not in f[2] and len(f) > 8)
        raise RuntimeError("no cluster node answers")

    command = ["redis-cluster"]
    process = None  # several processes: `turnstream dev` supervises it through running() and stop()

    def move_slot(self, slot: int, to_port: int) -> None:
        """Reshard one slot, keys included, to the master on `to_port` (what `redis-cli --cluster
        reshard` does, for one slot)."""
        source = next(port for port in self.masters() if slot in self.slots_of(port))
        source_id, target_id = (_node(port).execute_command("CLUSTER", "MYID") for port in (source, to_port))
        _node(to_port).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        _node(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := _node(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            _node(source).execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
        for port in (to_port, source):
            _node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def slots_of(self, port: int) -> set[int]:
        """The hash slots the master on `port` serves."""
        slots: set[int] = set()
        for start, end, primary, *_ in _node(port).execute_command("CLUSTER", "SLOTS"):
            if int(primary[1]) == port:
                slots.update(range(int(start), int(end) + 1))
        return slots

    def running(self) -> bool:
        return bool(self.live_ports())

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def _own_conf(store: str, directory: Path) -> Path:
    """A copy of the store's conf: Sentinel has a server rewrite its conf file (CONFIG REWRITE) when
    it changes its master, which must not touch the one in deploy/."""
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / CONF_FILES[store]
    copy.write_text((DEPLOY / "redis" / CONF_FILES[store]).read_text())
    return copy


def _node(port: int):
    import redis

    return redis.Redis(port=port, socket_timeout=1, decode_responses=True)


def _cluster_info(port: int) -> dict[str, str]:
    text = _node(port).execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

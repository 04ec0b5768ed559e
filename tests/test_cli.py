"""The `turnstream` command: tokens, and `dev`, which runs everything and leaves nothing behind."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from shared.cli.processes import REPO_ROOT, child_env, free_port, port_in_use
from shared.identity import verify_user_token
from tests.sse import read_stream


def test_token_command_prints_a_verifiable_jwt(stack):
    result = subprocess.run([sys.executable, "-m", "shared.cli", "token", "--user", "alice", "--tenant", "acme",
                             "--roles", "analyst,admin"], env=child_env(stack.env), capture_output=True, text=True,
                            check=True)
    principal = verify_user_token(result.stdout.strip())
    assert (principal.user, principal.tenant, principal.roles) == ("alice", "acme", ("analyst", "admin"))


def test_token_command_explains_a_missing_secret():
    env = {k: v for k, v in os.environ.items() if k != "TURNSTREAM_SECRET"}
    result = subprocess.run([sys.executable, "-m", "shared.cli", "token", "--user", "a", "--tenant", "b"],
                            env={**child_env({}), **env, "TURNSTREAM_SECRET": ""}, capture_output=True, text=True)
    assert result.returncode != 0
    assert "TURNSTREAM_SECRET" in result.stderr


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.timeout(180)
def test_dev_runs_the_system_and_sigterm_leaves_no_process(tmp_path):
    ports = {name: free_port() for name in ("web", "broker", "progress", "exec-cache", "auth-memo")}
    command = [sys.executable, "-m", "shared.cli", "dev", "--port", str(ports["web"]), "--data-dir", str(tmp_path)]
    for role in ("broker", "progress", "exec-cache", "auth-memo"):
        command += [f"--{role}-port", str(ports[role])]
    env = child_env({"TURNSTREAM_TOOL_LATENCY_MS": "0", "TURNSTREAM_REASONER": "rules"})
    env.pop("TURNSTREAM_SECRET", None)
    proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{ports['web']}/"
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if url in line:
                break
        assert any(url in line for line in output), "".join(output)
        assert "prompt" in httpx.get(url).text
        token = httpx.post(url + "api/dev/token").json()["token"]
        answer = httpx.post(url + "api/sessions/devcheck/messages", json={"prompt": "weather in Rome"},
                            headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 202
        # The tools worker runs gevent and reaches the built-in MCP server over stdio.
        events = read_stream(url.rstrip("/"), answer.json()["stream_url"], timeout=60)
        assert events[-1].type == "done" and events[-1].data["answer"].startswith("In Rome it is 20°C")
        children = _descendants(proc.pid)
        assert len(children) >= 8  # four redis-servers, two workers, their MCP servers, gunicorn
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not [name for name, port in ports.items() if port_in_use(port)]


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

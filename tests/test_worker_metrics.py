"""A worker started by hand, with the README's own command and no metrics setting, shows up in the
web tier's /metrics (shared.metrics_dir: one multiprocess directory per host, by default
`.run/metrics` under the directory a process starts in, the one `make run` uses).

The web process here reads `<project>/.run/metrics`, as `make run` started from <project> does. The
hand-started worker is the README's llm worker, on the discover and llm queues (discover with
reason and execute's fan-out, collect, synthesize: the rules reasoner's threads pool); the tool
calls run on a worker of the test's own that writes elsewhere, so every discover sample in
/metrics can only come from the hand-started worker."""

import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.cli import processes
from tests.sse import post_prompt, read_stream
from tests.stack import Stack

REPO = Path(__file__).resolve().parent.parent


def readme_worker_command() -> list[str]:
    """The llm worker command of README's "Running the parts by hand", word for word."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Running the parts by hand"):]
    line = re.search(r"^(\.venv/bin/turnstream worker llm)\s*&", section, re.M).group(1)
    # `.venv/bin` is this venv's bin (the test runs in a project directory of its own)
    return shlex.split(line.replace(".venv/bin/", f"{Path(sys.executable).parent}/", 1))


def step_count(base_url: str, step: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "turnstream_step_duration_seconds")
    return sum(s.value for s in family.samples
               if s.name.endswith("_count") and s.labels.get("step") == step and s.labels.get("outcome") == "ok")


@pytest.fixture
def project(tmp_path):
    """A project directory with `make run`'s layout: the web tier reads <project>/.run/metrics."""
    stack = Stack(tmp_path / "stack", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "llm-worker-metrics"))
    try:
        stack.start_redis()
        with stack.env_applied():
            stack.start_worker(name="tools", queues="tools", pool="gevent", concurrency=10)
            stack.env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / ".run" / "metrics")
            stack.start_web()
            yield tmp_path, stack
    finally:
        stack.stop()


def test_a_worker_started_with_the_readme_command_shows_in_metrics(project):
    directory, stack = project
    command = readme_worker_command()
    assert command[1:] == ["worker", "llm"]
    env = {name: value for name, value in processes.child_env(stack.env).items()
           if name not in ("PROMETHEUS_MULTIPROC_DIR", "TURNSTREAM_WORKER_METRICS_PORT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = (directory / "hand-started-worker.log").open("w")
    worker = subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        processes.wait_for_worker(stack.env, count=2)
        assert step_count(stack.base_url, "discover") == 0
        body = post_prompt(stack.base_url, "s" + uuid.uuid4().hex[:12], "What is the weather in Paris?").json()
        assert read_stream(stack.base_url, body["stream_url"])[-1].type == "done"
        assert step_count(stack.base_url, "discover") >= 1
        assert step_count(stack.base_url, "reason") >= 1  # run in discover's task, same worker
        assert any((directory / ".run" / "metrics").glob("histogram_*.db"))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        log.close()

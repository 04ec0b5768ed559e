"""Processes refuse to run on a broker or progress server that evicts keys."""

import subprocess
import sys

import pytest

from shared.cli.processes import REPO_ROOT, child_env
from shared.eviction import judge_eviction
from tests.stack import Stack


@pytest.mark.parametrize("store,policy,ok", [
    ("broker", "noeviction", True), ("broker", "allkeys-lru", False), ("progress", "volatile-ttl", False),
    ("exec_cache", "allkeys-lru", True), ("exec_cache", "noeviction", True), ("auth_memo", "volatile-ttl", True),
])
def test_judge(store, policy, ok):
    assert judge_eviction(store, policy).ok is ok


def test_exec_cache_without_lru_gets_a_warning():
    assert "LRU" in judge_eviction("exec_cache", "noeviction").message
    assert judge_eviction("exec_cache", "allkeys-lru").message == ""


@pytest.fixture
def evicting_broker_stack(tmp_path):
    conf = tmp_path / "evicting-broker.conf"
    conf.write_text("maxmemory 64mb\nmaxmemory-policy allkeys-lru\nsave \"\"\n")
    system = Stack(tmp_path).start_redis(confs={"broker": conf})
    yield system
    system.stop()


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=child_env(env), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_web_app_refuses_an_evicting_broker(evicting_broker_stack):
    result = _run("from web import create_app; create_app()", evicting_broker_stack.env)
    assert result.returncode != 0
    assert "broker: maxmemory-policy is allkeys-lru, must be noeviction" in result.stderr


def test_worker_refuses_an_evicting_broker(evicting_broker_stack):
    command = "import sys; from workers import app; app.worker_main(['worker', '-P', 'solo', '--without-mingle'])"
    result = _run(command, evicting_broker_stack.env)
    assert result.returncode != 0
    assert "must be noeviction" in result.stdout + result.stderr

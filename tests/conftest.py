"""Session-wide real system: four redis-servers, one Celery worker, gunicorn+gevent."""

import os
import uuid

import pytest

from tests.guard_support import emptied_client, one_store
from tests.stack import TEST_SECRET, Stack

# Every Stack signs with TEST_SECRET; the test process signs its own tokens with it too, whichever
# module runs first (a module with a stack of its own need not start the session stack).
os.environ.setdefault("TURNSTREAM_SECRET", TEST_SECRET)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack")).running(apply_env=True) as system:
        yield system


@pytest.fixture(scope="session")
def base_url(stack) -> str:
    return stack.base_url


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory):
    """Redis servers and the web tier, no worker: what the web tier does alone (each module its own)."""
    stack = Stack(tmp_path_factory.mktemp("idle-stack"))
    if os.environ.get("TURNSTREAM_SECRET") != TEST_SECRET:  # the tokens this client signs; every stack shares it
        os.environ["TURNSTREAM_SECRET"] = TEST_SECRET
        from shared.settings import reload_settings

        reload_settings()
    try:
        stack.start_redis()
        stack.start_web()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def session_id() -> str:
    return "s" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def guard_redis(request, tmp_path_factory):
    """A redis-server for the guard store a test module names in GUARD_STORE, with its conf."""
    store = request.module.GUARD_STORE
    with one_store(tmp_path_factory.mktemp(store.replace("_", "-")), store) as system:
        yield system


@pytest.fixture
def r(request, guard_redis):
    """A client on that store, emptied before each test, its breakers closed."""
    with emptied_client(guard_redis, request.module.GUARD_STORE) as client:
        yield client

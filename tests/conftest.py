"""Session-wide real system: four redis-servers, one Celery worker, gunicorn+gevent."""

import uuid

import pytest

from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    system = Stack(tmp_path_factory.mktemp("stack"))
    try:
        system.start_redis()
        system.apply_env()
        system.start_worker()
        system.start_web()
        yield system
    finally:
        system.stop()


@pytest.fixture(scope="session")
def base_url(stack) -> str:
    return stack.base_url


@pytest.fixture
def session_id() -> str:
    return "s" + uuid.uuid4().hex[:12]

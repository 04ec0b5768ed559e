"""Session-wide real system: four redis-servers, one Celery worker, gunicorn+gevent."""

import uuid

import pytest

from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack")).running(apply_env=True) as system:
        yield system


@pytest.fixture(scope="session")
def base_url(stack) -> str:
    return stack.base_url


@pytest.fixture
def session_id() -> str:
    return "s" + uuid.uuid4().hex[:12]

"""Guards under failure, on a system of its own: an identity provider over HTTP decides, tools take
200 ms, and each guard's Redis is killed while turns run. Turns complete; no deny becomes an allow;
with the verifier down and no memo the turn fails closed with a clear error."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.guard_support import IdentityProvider
from tests.sse import bearer, post_prompt, read_stream, tool_calls
from tests.stack import TEST_SECRET, Stack

CITIES = ("Paris", "London", "Berlin", "Tokyo", "Rome", "Madrid")


@pytest.fixture(scope="module")
def idp():
    provider = IdentityProvider().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def guarded_system(tmp_path_factory, idp):
    from shared.settings import reload_settings

    if os.environ.get("TURNSTREAM_SECRET") != TEST_SECRET:  # this module may run without the session stack
        os.environ["TURNSTREAM_SECRET"] = TEST_SECRET
        reload_settings()
    system = Stack(tmp_path_factory.mktemp("guards-degraded"), TURNSTREAM_AUTH_VERIFIER="http",
                   TURNSTREAM_AUTH_VERIFIER_URL=idp.url, TURNSTREAM_AUTH_VERIFIER_TIMEOUT_S="1",
                   TURNSTREAM_TOOL_LATENCY_MS="200", TURNSTREAM_BREAKER_RESET_S="1")
    with system.running(name="guards-worker"):
        yield system


def run_turns(system, turns: list[tuple[str, str, str]], during=None) -> list[list]:
    """Post (user, session, prompt) turns at once, optionally do `during()` while they run, read every stream."""
    posted = [post_prompt(system.base_url, sid, prompt, headers=bearer(user, "acme")).json()
              for user, sid, prompt in turns]
    if during:
        during()
    with ThreadPoolExecutor(len(posted)) as pool:
        return list(pool.map(lambda body: read_stream(system.base_url, body["stream_url"], timeout=60), posted))


def tools_of(events) -> list[dict]:
    return [e.data for e in tool_calls(events)]


def test_verifier_down_and_no_memo_fails_closed_with_a_clear_error(guarded_system, idp):
    idp.grants[("acme", "remembered")] = {"weather"}
    idp.grants[("acme", "newcomer")] = {"weather"}
    [warm] = run_turns(guarded_system, [("remembered", "fc1", "weather in Paris")])
    assert warm[-1].type == "done"
    idp.down = True
    try:
        remembered, newcomer = run_turns(guarded_system, [("remembered", "fc1", "weather in Paris"),
                                                          ("newcomer", "fc2", "weather in Paris")])
    finally:
        idp.down = False
    assert remembered[-1].type == "done" and tools_of(remembered)[0]["permission"]["memo"] == "hit"
    assert newcomer[-1].type == "error" and not tools_of(newcomer)
    # discover checks every tool of the catalogue at once; the message names those it could not check.
    assert "cannot check permission for" in newcomer[-1].data["message"]
    assert "weather" in newcomer[-1].data["message"]
    assert "503" in newcomer[-1].data["message"]


@pytest.mark.parametrize("store", ["exec_cache", "auth_memo"])
def test_killing_a_guards_redis_mid_run_still_completes_turns_and_keeps_denies(guarded_system, idp, store):
    idp.grants[("acme", "ana")] = {"weather"}
    idp.grants[("acme", "dora")] = set()
    turns = [("ana", f"{store}-a{i}", f"weather in {city}") for i, city in enumerate(CITIES)]
    turns += [("dora", f"{store}-d", "weather in Paris and Rome")]

    def kill() -> None:
        time.sleep(0.3)
        guarded_system.stop_redis(store)

    try:
        streams = run_turns(guarded_system, turns, during=kill)
        assert [s[-1].type for s in streams] == ["done"] * len(turns)
        for events in streams[:-1]:
            assert [(t["tool"], t["status"]) for t in tools_of(events)] == [("weather", "ok")]
        assert tools_of(streams[-1]) == [], "dora may call no tool, so none is offered, none runs"
        assert "°C" not in streams[-1][-1].data["answer"]

        after = run_turns(guarded_system, [("ana", f"{store}-a9", "weather in Sydney"),
                                           ("dora", f"{store}-d9", "weather in Sydney")])
        assert tools_of(after[0])[0]["status"] == "ok"
        assert tools_of(after[1]) == [] and after[1][-1].type == "done"
        degraded = [t for events in after for t in tools_of(events)]
        if store == "exec_cache":
            assert tools_of(after[0])[0]["cache"] == "bypass"
        else:
            assert {t["permission"]["memo"] for t in degraded} == {"bypass"}
            response = httpx.post(f"{guarded_system.base_url}/admin/auth/invalidate", json={"all": True},
                                  headers=bearer("root", "acme", ("admin",)), timeout=30)
            assert response.status_code == 503 and response.json()["error"] == "auth_memo_unavailable"
    finally:
        guarded_system.restart_redis(store)
    assert f"{store} Redis failed" in guarded_system.log("guards-worker"), "the degradation is logged"

"""Pure functions: key building, settings, the rules reasoner, the built-in tools."""

import json

import pytest

from shared import keys
from shared.events import StepEvent
from shared.progress import stream_id
from shared.settings import Settings
from workers import reasoner, tools


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "x" * 65, "../etc", "a b", None, 5, "-lead"])
def test_keys_refuse_bad_ids(bad):
    with pytest.raises(keys.InvalidId):
        keys.progress_channel(bad, "m1")


def test_key_names():
    assert keys.progress_channel("s1", "m1") == "agent:progress:s1:m1"
    assert keys.progress_log("s1", "m1") == "agent:progress-log:s1:m1"
    assert keys.turn_status("s1", "m1") == "agent:turn:s1:m1"


def test_single_instance_mode_gives_each_role_a_db():
    settings = Settings(REDIS_URL="redis://example:7000/0")
    assert [settings.role_url(r) for r in ("broker", "progress", "exec_cache", "auth_memo")] == [
        "redis://example:7000/0", "redis://example:7000/1", "redis://example:7000/2", "redis://example:7000/3"]


def test_role_urls_come_from_the_seed_names(monkeypatch):
    monkeypatch.setenv("EXEC_CACHE_REDIS_URL", "redis://cache:1/0")
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert Settings().role_url("exec_cache") == "redis://cache:1/0"


def test_stream_ids_order_numerically():
    assert stream_id("10-0") > stream_id("9-5")
    assert stream_id("10-10") > stream_id("10-9")


def test_step_event_rejects_unknown_steps():
    with pytest.raises(ValueError):
        StepEvent(step="dance", status="started")


def test_reasoner_plans_weather_calculator_and_search():
    assert reasoner.plan("weather in Paris and London?") == [
        {"tool": "weather", "args": {"city": "Paris"}}, {"tool": "weather", "args": {"city": "London"}}]
    assert reasoner.plan("what is 2 + 3 * 4") == [{"tool": "calculator", "args": {"expression": "2 + 3 * 4"}}]
    assert reasoner.plan("how long does shipping take?") == [
        {"tool": "search_kb", "args": {"query": "how long does shipping take?"}}]
    assert reasoner.plan("weather in Paris", available=["search_kb"])[0]["tool"] == "search_kb"


def test_calculator_is_safe_and_exact():
    assert tools.calculator({"expression": "2 + 3 * 4"})["value"] == 14
    assert tools.calculator({"expression": "7 / 2"})["value"] == 3.5
    for hostile in ["__import__('os')", "2 ** 1000", "1/0", "a + 1"]:
        with pytest.raises(tools.ToolError):
            tools.calculator({"expression": hostile})


def test_weather_and_search_read_the_shipped_data(monkeypatch):
    monkeypatch.setenv("TURNSTREAM_TOOL_LATENCY_MS", "0")
    assert tools.weather({"city": "Berlin"})["temp_c"] == 9
    with pytest.raises(tools.ToolError):
        tools.weather({"city": "Atlantis"})
    hits = tools.search_kb({"query": "refund my order"})["hits"]
    assert hits[0]["title"] == "Refund policy"
    json.dumps(hits)


def test_finding_arithmetic_takes_linear_time_on_hostile_prompts():
    assert reasoner.find_arithmetic("What is the weather in Paris? Also 1/0 + 1") == "1/0 + 1"
    assert reasoner.find_arithmetic("1999 was a year") is None
    hostile = "1 " * 20000 + "x"  # cubic backtracking made this take hours
    assert reasoner.find_arithmetic(hostile) is None
    assert reasoner.plan(hostile)[0]["tool"] == "search_kb"

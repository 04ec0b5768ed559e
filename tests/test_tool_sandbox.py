"""The built-in tools' sandbox: a call over its CPU or memory limit is stopped and fails alone,
with a readable error, while calls running beside it finish (workers/toolserver/sandbox.py)."""

import asyncio

import pytest

from shared.settings import reload_settings
from workers.toolserver import sandbox, tools


def spin() -> None:
    while True:
        pass


def hog_memory() -> bytes:
    return b"x" * (4 * 1024 * 1024 * 1024)


@pytest.fixture(autouse=True)
def tight_limits(monkeypatch):
    monkeypatch.setenv("TURNSTREAM_TOOL_CPU_S", "1")
    monkeypatch.setenv("TURNSTREAM_TOOL_MEMORY_MB", "512")
    monkeypatch.setenv("TURNSTREAM_TOOL_PROCESSES", "3")
    monkeypatch.setenv("TURNSTREAM_TOOL_WALL_S", "300")  # a loaded machine may give 1 s of CPU only slowly
    monkeypatch.setenv("TURNSTREAM_TOOL_LATENCY_MS", "0")
    reload_settings()
    yield
    reload_settings()


async def beside(runaway, *args) -> tuple[BaseException | object, list]:
    """`runaway` together with a stream of ordinary calls in the other children."""
    async def ordinary() -> list:
        results = []
        for city in ["Paris", "London", "Tokyo", "Berlin", "Rome", "Madrid"] * 3:
            results.append(await sandbox.run(tools.weather, city))
            await asyncio.sleep(0.1)
        return results
    outcome, others = await asyncio.gather(sandbox.run(runaway, *args), ordinary(), return_exceptions=True)
    return outcome, others


def test_a_call_over_its_cpu_time_is_stopped_alone():
    outcome, others = asyncio.run(beside(spin))
    assert isinstance(outcome, tools.ToolFailure) and "CPU time" in str(outcome)
    assert [r["city"] for r in others][:2] == ["Paris", "London"] and len(others) == 18


def test_a_call_over_its_memory_fails_alone():
    outcome, others = asyncio.run(beside(hog_memory))
    assert isinstance(outcome, tools.ToolFailure) and "memory" in str(outcome)
    assert len(others) == 18


def test_a_call_over_its_wall_time_is_stopped(monkeypatch):
    monkeypatch.setenv("TURNSTREAM_TOOL_WALL_S", "1")
    monkeypatch.setenv("TURNSTREAM_TOOL_CPU_S", "600")
    reload_settings()
    with pytest.raises(tools.ToolFailure, match="ran longer than 1 s"):
        asyncio.run(sandbox.run(spin))


def test_the_pool_serves_calls_after_a_child_was_killed():
    async def after_a_kill():
        with pytest.raises(tools.ToolFailure):
            await sandbox.run(spin)
        return await asyncio.gather(*(sandbox.run(tools.calculator, f"{i} * 2") for i in range(10)))
    assert [r["value"] for r in asyncio.run(after_a_kill())] == [i * 2 for i in range(10)]


@pytest.mark.parametrize("expression", ["(((9**99)**99)**99)**99", "9**99**99", "(10**99)**99",
                                        "2**2**2**2**2**2**2**2**2**2**2**2**2**2**2**2", "1e308 * 10"])
def test_the_calculator_refuses_results_too_large_at_once(expression):
    with pytest.raises(tools.ToolFailure, match="too large"):
        tools.calculator(expression)


def test_the_calculator_still_computes_large_results_within_the_bound():
    assert tools.calculator("2**100")["value"] == 2**100
    assert tools.calculator("9**99")["value"] == 9**99

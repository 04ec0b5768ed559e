"""Pure functions: key building, settings, the rules reasoner, the built-in tools, tool configs."""

import json
import re

import pytest

from shared import keys
from shared.events import StepEvent
from shared.progress import entry_order
from shared.settings import Settings
from workers.toolserver import tools
from workers.mcp.config import ToolsConfigError, parse_config
from workers.reasoners.base import TurnContext
from workers.reasoners.rules import RulesReasoner

ALL_TOOLS = [{"name": n, "description": "", "input_schema": {}} for n in
             ("weather", "search_kb", "calculator", "my_orders", "create_ticket")]


def plan(prompt: str, tools=ALL_TOOLS, **context) -> list[dict]:
    return RulesReasoner().decide(TurnContext(prompt=prompt, tools=tools, **context))


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "x" * 65, "../etc", "a b", None, 5, "-lead"])
def test_keys_refuse_bad_ids(bad):
    with pytest.raises(keys.InvalidId):
        keys.progress_channel(bad, "m1")


def test_key_names():
    assert keys.progress_channel("s1", "m1") == "agent:progress:{s1:m1}"
    assert keys.progress_log("s1", "m1") == "agent:progress-log:{s1:m1}"
    assert keys.turn_record("s1", "m1") == "agent:turn:s1:m1"


def test_single_instance_mode_gives_each_store_a_db():
    settings = Settings(REDIS_URL="redis://example:7000/0")
    assert [settings.store_url(r) for r in ("broker", "progress", "exec_cache", "auth_memo")] == [
        "redis://example:7000/0", "redis://example:7000/1", "redis://example:7000/2", "redis://example:7000/3"]


def test_store_urls_come_from_the_seed_names(monkeypatch):
    monkeypatch.setenv("EXEC_CACHE_REDIS_URL", "redis://cache:1/0")
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert Settings().store_url("exec_cache") == "redis://cache:1/0"


def test_entry_ids_order_numerically():
    assert entry_order("10-0") > entry_order("9-5")
    assert entry_order("10-10") > entry_order("10-9")


def test_step_event_rejects_unknown_steps():
    with pytest.raises(ValueError):
        StepEvent(step="dance", status="started")


def test_rules_reasoner_plans_weather_calculator_and_search():
    assert plan("weather in Paris and London?") == [
        {"tool": "weather", "args": {"city": "Paris"}}, {"tool": "weather", "args": {"city": "London"}}]
    assert plan("what is 2 + 3 * 4") == [{"tool": "calculator", "args": {"expression": "2 + 3 * 4"}}]
    assert plan("how long does shipping take?") == [
        {"tool": "search_kb", "args": {"query": "how long does shipping take?"}}]
    only_search = [t for t in ALL_TOOLS if t["name"] == "search_kb"]
    assert plan("weather in Paris", tools=only_search)[0]["tool"] == "search_kb"
    assert plan("weather in Paris", tools=[]) == []


def test_rules_reasoner_follows_up_on_history_and_on_results():
    weather_turn = [{"prompt": "weather in Paris?", "answer": "...", "tools": ["weather"]}]
    assert plan("And in Berlin?", history=weather_turn) == [{"tool": "weather", "args": {"city": "Berlin"}}]
    assert plan("And in Berlin?")[0]["tool"] == "search_kb"
    orders = [{"tool": "my_orders", "status": "ok", "result": {"orders": [
        {"order_id": "A-1", "placed": "2026-01-01"}, {"order_id": "A-2", "placed": "2026-02-01"}]}}]
    prompt = "open a ticket about my latest order"
    assert plan(prompt) == [{"tool": "my_orders", "args": {}}]
    second = plan(prompt, rounds=[orders])
    assert [(c["tool"], c["args"]["subject"]) for c in second] == [("create_ticket", "Problem with order A-2")]
    assert plan("weather in Paris", rounds=[orders]) == [], "after results, nothing more unless a rule needs it"


def test_calculator_is_safe_and_exact():
    assert tools.calculator("2 + 3 * 4")["value"] == 14
    assert tools.calculator("7 / 2")["value"] == 3.5
    for hostile in ["__import__('os')", "2 ** 1000", "1/0", "a + 1", "True + 1"]:
        with pytest.raises(tools.ToolFailure):
            tools.calculator(hostile)


def test_weather_search_and_orders_read_the_shipped_data():
    assert tools.weather("Berlin")["temp_c"] == 9
    with pytest.raises(tools.ToolFailure):
        tools.weather("Atlantis")
    hits = tools.search_kb("refund my order")["hits"]
    assert hits[0]["title"] == "Refund policy"
    json.dumps(hits)
    alice = tools.my_orders(tools.Caller("alice", "acme", ("analyst",)))
    assert [o["order_id"] for o in alice["orders"]] == ["A-1001", "A-1017"]
    assert tools.my_orders(tools.Caller("alice", "other"))["orders"] == [], "orders are per tenant and user"
    with pytest.raises(tools.ToolFailure):
        tools.my_orders(tools.Caller())


def test_create_ticket_is_admin_only_and_appends_a_ticket(tmp_path):
    path = tmp_path / "tickets.jsonl"
    with pytest.raises(tools.ToolFailure, match="admin-only"):
        tools.create_ticket(tools.Caller("bob", "acme", ("analyst",)), "help", tickets_file=path)
    first = tools.create_ticket(tools.Caller("root", "acme", ("admin",)), "printer on fire", tickets_file=path)
    second = tools.create_ticket(tools.Caller("root", "acme", ("admin",)), "printer on fire", tickets_file=path)
    assert first["ticket_id"] != second["ticket_id"], "a side effect: every call opens a new ticket"
    assert [json.loads(line)["ticket_id"] for line in path.read_text().splitlines()] == [
        first["ticket_id"], second["ticket_id"]]


def test_tools_config_accepts_stdio_and_http_servers_and_names_mistakes():
    servers = parse_config(json.dumps({"mcpServers": {
        "fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
        "remote": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer x"}}}}), "test")
    assert (servers["fs"].command, servers["fs"].url) == ("npx", None)
    assert (servers["remote"].command, servers["remote"].url) == (None, "http://127.0.0.1:9/mcp")
    for bad, needle in [("{", "not valid JSON"), ('{"mcpServers": {}}', "empty"),
                        ('{"mcpServers": {"x": {"command": "a", "url": "http://b"}}}', "exactly one"),
                        ('{"mcpServers": {"x": {}}}', "exactly one")]:
        with pytest.raises(ToolsConfigError, match=needle):
            parse_config(bad, "test")


def test_finding_arithmetic_takes_linear_time_on_hostile_prompts():
    from workers.reasoners.rules import find_arithmetic

    assert find_arithmetic("What is the weather in Paris? Also 1/0 + 1") == "1/0 + 1"
    assert find_arithmetic("1999 was a year") is None
    assert find_arithmetic("1 " * 20000 + "x") is None  # cubic backtracking made this take hours


def test_a_turn_record_reads_back_what_it_wrote():
    from shared.turns import TurnRecord

    payload = {"session_id": "s1", "message_id": "m1", "prompt": "hi", "user": "alice", "tenant": "acme",
               "roles": ["analyst"]}
    record = TurnRecord(status="queued", session_id="s1", message_id="m1", owner="acme/alice", prompt="hi",
                        created_at=1700000000.5, updated_at=1700000001.25, payload=payload)
    as_redis_returns_it = {name: str(value) for name, value in record.to_hash().items()}
    assert TurnRecord.restore(as_redis_returns_it) == record
    assert record.public() == {"session_id": "s1", "message_id": "m1", "status": "queued", "step": "",
                               "prompt": "hi", "created_at": 1700000000.5, "updated_at": 1700000001.25}
    later = TurnRecord.restore({**as_redis_returns_it, "status": "done", "answer": "hello", "redeliveries": "2"})
    assert (later.final, later.answer, later.redeliveries) == (True, "hello", 2)


def test_the_page_reads_its_names_from_the_server():
    from flask import Flask

    from shared import vocabulary
    from web.ui import ui

    app = Flask(__name__)
    app.register_blueprint(ui)
    response = app.test_client().get("/vocabulary.js")
    assert response.status_code == 200 and response.mimetype == "text/javascript"
    assert f"export const EVENT_TYPES = {json.dumps(list(vocabulary.EVENT_TYPES))};" in response.text
    assert f"export const FINAL_STATUSES = {json.dumps(sorted(vocabulary.FINAL_STATUSES))};" in response.text
    assert f"export const TOOL_DENIED = {json.dumps(vocabulary.TOOL_DENIED)};" in response.text


def test_the_page_scripts_hold_no_copy_of_a_status_or_event_name():
    """The scripts compare a turn's, step's or tool call's status, and dispatch on an event type,
    only through the names /vocabulary.js exports."""
    import re
    from pathlib import Path

    from shared import vocabulary

    names = {v for v in vocabulary.for_browser().values() if isinstance(v, str)}
    copies = []
    for script in sorted((Path(__file__).parent.parent / "web" / "static").glob("*.js")):
        text = script.read_text()
        copies += [f"{script.name}: {m.group(0)}" for m in re.finditer(r"\.(status|type)\s*[!=]==\s*\"(\w+)\"", text)
                   if m.group(2) in names]
        copies += [f"{script.name}: {m.group(0)}" for m in re.finditer(r"(?:^|[{,])\s*(\w+):\s*(?:this\.\w+|\")", text, re.M)
                   if m.group(1) in names]
    assert copies == []


def test_every_settable_default_is_a_settings_field_and_no_fixed_one_is():
    from shared import defaults

    fields = Settings.model_fields
    assert sorted(name for name in defaults.SETTABLE if name.lower() not in fields) == []
    assert {name: fields[name.lower()].default for name in defaults.SETTABLE} == \
        {name: getattr(defaults, name) for name in defaults.SETTABLE}
    assert sorted(name for name in defaults.FIXED if name.lower() in fields) == []
    assert defaults.SETTABLE.isdisjoint(defaults.FIXED) and "REASONER" in defaults.SETTABLE


def _readme_settings_rows() -> list[str]:
    """The rows of the README's two settings tables (Configuration, Operations settings)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = []
    for heading in ("\n## Configuration\n", "\n### Operations settings\n"):
        section = readme.split(heading, 1)[1]
        table = section[section.index("| variable"):].split("\n\n", 1)[0]
        rows += table.splitlines()[2:]  # past the header and its rule
    return rows


def _names_in_row(row: str) -> set[str]:
    """The variables a row names, with its shorthand expanded: `TURNSTREAM_OPENAI_BASE_URL`,
    `_API_KEY` names TURNSTREAM_OPENAI_API_KEY (the first name's head, then the shorthand)."""
    full = re.findall(r"`([A-Z][A-Z0-9_<>]+)`", row)
    heads = {full[0][:i] for i, c in enumerate(full[0]) if c == "_"} if full else set()
    return set(full) | {head + short for short in re.findall(r"`(_[A-Z0-9_]+)`", row) for head in heads}


def test_the_readme_settings_tables_name_every_setting_and_nothing_else():
    """A user reads the settings in the README: every Settings field is a row there (shorthand
    rows count), and every TURNSTREAM_ variable a row names is a setting or a `turnstream dev` port."""
    from shared import defaults

    named = set().union(*map(_names_in_row, _readme_settings_rows()))
    variables = {f"TURNSTREAM_{name}" for name in defaults.SETTABLE} | set(defaults.STORE_URL_ENV.values())
    assert sorted(variables - named) == []

    fields = {f"TURNSTREAM_{name.upper()}" for name in Settings.model_fields}
    dev_ports = {"TURNSTREAM_PORT", "TURNSTREAM_<STORE>_PORT"}
    written = {name for row in _readme_settings_rows() for name in re.findall(r"`(TURNSTREAM_[A-Z0-9_<>]+)`", row.split("|")[1])}
    assert sorted(written - fields - dev_ports) == []


@pytest.mark.parametrize("transport", ["Transport", "SentinelTransport"])
def test_a_broker_over_tls_follows_a_demotion_too(transport):
    # kombu connects with connection_class_ssl for rediss:// (or broker_use_ssl): that class must
    # turn a demotion into a lost connection like the plain one, or the worker exits on it
    import redis
    from workers import broker_transport
    channel = getattr(broker_transport, transport).Channel
    assert issubclass(channel.connection_class, broker_transport.FollowsDemotion)
    assert issubclass(channel.connection_class_ssl, broker_transport.FollowsDemotion)
    assert issubclass(channel.connection_class_ssl, redis.SSLConnection)
    if transport == "SentinelTransport":
        from redis.sentinel import SentinelManagedConnection
        assert issubclass(channel.connection_class_ssl, SentinelManagedConnection)


def _view(port: int, epoch: int, flags: str = "master") -> dict:
    """A SENTINEL MASTER reply as redis-py parses it."""
    return {"ip": "127.0.0.1", "port": port, "config-epoch": epoch, "flags": set(flags.split(","))}


def test_a_write_on_the_new_master_is_kept_while_other_sentinels_still_name_the_old():
    from shared.redis_stores import replaced_by
    here = ("127.0.0.1", 7001)
    # the leader switched to 7001 (epoch 3); two sentinels have not heard of it yet
    assert replaced_by([_view(7000, 2), _view(7001, 3), _view(7000, 2)], here) is None
    assert replaced_by([_view(7001, 3)] * 3, here) is None
    assert replaced_by([], here) is None  # no sentinel answers: nothing known against it


def test_a_write_on_a_master_being_replaced_is_refused():
    from shared.redis_stores import replaced_by
    old = ("127.0.0.1", 7000)
    # before the switch only the leader knows, by its flag
    assert replaced_by([_view(7000, 2), _view(7000, 2, "master,failover_in_progress"), _view(7000, 2)], old)
    # after it the leader's newer configuration names the new master, the others lagging behind
    assert "7001" in replaced_by([_view(7000, 2), _view(7001, 3), _view(7000, 2)], old)

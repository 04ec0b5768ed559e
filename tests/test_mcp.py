"""The MCP client against the built-in tool server, over stdio and over streamable HTTP:
tool lists, calls, an unknown tool, a tool error, the caller's identity, and the tool-list cache."""

import json

import psutil
import pytest

from shared.cli import processes
from shared.settings import Settings
from workers.mcp.client import McpClient, ToolCallError, UnknownTool
from workers.mcp.config import ServerSpec, builtin_server, parse_config

ALICE = {"user": "alice", "tenant": "acme", "roles": ["analyst"]}
ADMIN = {"user": "root", "tenant": "acme", "roles": ["admin"]}


@pytest.fixture(scope="module")
def tickets_file(tmp_path_factory):
    return tmp_path_factory.mktemp("tickets") / "tickets.jsonl"


@pytest.fixture(scope="module")
def http_url(tmp_path_factory, tickets_file):
    base = tmp_path_factory.mktemp("toolserver")
    port = processes.free_port()
    server = processes.tool_server({"TURNSTREAM_TOOL_LATENCY_MS": "0", "TURNSTREAM_REPORT_DURATION_S": "2",
                                    "TURNSTREAM_TICKETS_FILE": str(tickets_file)}, port, base).start()
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["stdio", "http"])
def client(request, tickets_file):
    settings = Settings(tool_latency_ms=0, report_duration_s=2, tickets_file=str(tickets_file))
    if request.param == "stdio":
        spec = builtin_server(settings)
    else:
        spec = ServerSpec(url=request.getfixturevalue("http_url"))
    client = McpClient(settings, servers={"builtin": spec})
    yield client
    client.close()


def test_lists_the_builtin_tools_with_schemas_and_policies(client):
    tools = {t["name"]: t for t in client.list_tools()}
    assert set(tools) == {"weather", "search_kb", "calculator", "my_orders", "create_ticket", "sales_report"}
    assert tools["weather"]["input_schema"]["required"] == ["city"]
    assert tools["weather"]["server"] == "builtin"
    assert tools["my_orders"]["cache_declaration"]["cache"] == "user"
    assert tools["create_ticket"]["cache_declaration"] == {"cache": "never"}


def test_a_slow_tools_progress_reaches_the_caller_while_it_runs(client):
    reports = []
    result = client.call_tool("sales_report", {}, ALICE, on_progress=lambda *report: reports.append(report))
    assert result == {"user": "alice", "orders": 2, "total_eur": 288.5, "by_status": {"delivered": 1, "shipped": 1}}
    assert reports, "progress arrived before the result"
    assert all(total == 4 for _, total, _ in reports)
    assert [progress for progress, _, _ in reports] == sorted(progress for progress, _, _ in reports)
    assert {message for _, _, message in reports} <= {"Collecting orders", "Totalling by item",
                                                      "Comparing with last period", "Writing the summary", "Done"}


def test_calls_return_json_results(client):
    assert client.call_tool("weather", {"city": "Paris"}, ALICE)["temp_c"] == 14
    assert client.call_tool("calculator", {"expression": "6 * 7 + 1"}, ALICE) == {"expression": "6 * 7 + 1",
                                                                                 "value": 43}


def test_an_unknown_tool_and_a_tool_error_raise_clear_errors(client):
    with pytest.raises(UnknownTool, match="no configured MCP server offers a tool named 'teleport'"):
        client.call_tool("teleport", {}, ALICE)
    with pytest.raises(ToolCallError, match="no weather data for 'Atlantis'"):
        client.call_tool("weather", {"city": "Atlantis"}, ALICE)
    with pytest.raises(ToolCallError, match="city"):
        client.call_tool("weather", {}, ALICE)
    assert client.call_tool("weather", {"city": "Rome"}, ALICE)["city"] == "Rome", "the session survives errors"


def test_the_caller_identity_travels_with_each_call(client):
    assert [o["order_id"] for o in client.call_tool("my_orders", {}, ALICE)["orders"]] == ["A-1001", "A-1017"]
    with pytest.raises(ToolCallError, match="needs to know the caller"):
        client.call_tool("my_orders", {})
    with pytest.raises(ToolCallError, match="admin-only"):
        client.call_tool("create_ticket", {"subject": "help"}, ALICE)
    ticket = client.call_tool("create_ticket", {"subject": "printer on fire"}, ADMIN)
    tickets = [json.loads(line) for line in open(client.settings.tickets_file)]
    assert tickets[-1]["ticket_id"] == ticket["ticket_id"] and tickets[-1]["opened_by"] == "acme/root"


def test_tool_lists_are_cached_briefly(client):
    client.list_tools(refresh=True)
    listed_at = client._catalog_at
    client.list_tools()
    assert client._catalog_at == listed_at, "within the TTL the cached list is served"
    client.list_tools(refresh=True)
    assert client._catalog_at > listed_at


def _toolservers() -> set[int]:
    """The tool server processes themselves (`python -m workers.toolserver`), not the children
    their sandbox starts (whose forkserver names the module it preloads)."""
    return {p.pid for p in psutil.Process().children(recursive=True)
            if " ".join(p.cmdline()).endswith("-m workers.toolserver")}


def test_a_stdio_server_that_dies_is_started_again_for_the_next_call():
    settings = Settings(tool_latency_ms=0)
    others = _toolservers()
    client = McpClient(settings, servers={"builtin": builtin_server(settings)})
    try:
        assert client.call_tool("calculator", {"expression": "1 + 1"})["value"] == 2
        (first,) = _toolservers() - others
        psutil.Process(first).kill()
        psutil.Process(first).wait(5)
        outcomes = []
        for _ in range(2):  # the call in flight when the pipe broke may fail; the next one reconnects
            try:
                outcomes.append(client.call_tool("calculator", {"expression": "2 + 2"})["value"])
                break
            except ToolCallError as exc:
                outcomes.append(str(exc))
        assert outcomes[-1] == 4, outcomes
        (second,) = _toolservers() - others - {first}
        assert second != first
    finally:
        client.close()


def test_a_dead_server_is_reported_and_the_others_still_serve(tmp_path):
    """The dead server refuses at once; the built-in one starts within the connect timeout users get
    (a shorter one here would fail on a loaded machine, where importing the MCP SDK alone takes seconds)."""
    settings = Settings(tool_latency_ms=0)
    servers = parse_config(json.dumps({"mcpServers": {"gone": {"url": "http://127.0.0.1:9/mcp"}}}), "test")
    client = McpClient(settings, servers={**servers, "builtin": builtin_server(settings)})
    try:
        assert "weather" in {t["name"] for t in client.list_tools()}
        assert set(client.server_errors) == {"gone"}
    finally:
        client.close()

"""A third-party MCP server works through the same client as ours: the reference `server-memory`
from npm (installed by `make test` into .run/npm), next to the built-in server over stdio."""

import pytest

from shared.cli.processes import REPO_ROOT
from shared.settings import Settings
from workers.mcp.client import McpClient, ToolCallError
from workers.mcp.config import ServerSpec, builtin_server

MEMORY_SERVER = REPO_ROOT / ".run" / "npm" / "node_modules" / ".bin" / "mcp-server-memory"
CALLER = {"user": "alice", "tenant": "acme", "roles": ["analyst"]}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    assert MEMORY_SERVER.exists(), f"{MEMORY_SERVER} is missing: `make test` installs it (deploy/install-mcp-reference.sh)"
    base = tmp_path_factory.mktemp("memory")
    settings = Settings(tool_latency_ms=0, tickets_file=str(base / "tickets.jsonl"))
    memory = ServerSpec(command=str(MEMORY_SERVER), env={"MEMORY_FILE_PATH": str(base / "memory.jsonl")})
    client = McpClient(settings, servers={"builtin": builtin_server(settings), "memory": memory})
    yield client
    client.close()


def test_tools_of_both_servers_are_listed_with_their_server(client):
    servers = {tool["name"]: tool["server"] for tool in client.list_tools(refresh=True)}
    assert servers["weather"] == "builtin"
    assert {"create_entities", "read_graph", "search_nodes"} <= {n for n, s in servers.items() if s == "memory"}


def test_a_third_party_tool_is_called_like_ours(client):
    client.call_tool("create_entities", {"entities": [{"name": "Paris", "entityType": "city",
                                                   "observations": ["light rain"]}]}, CALLER)
    graph = client.call_tool("read_graph", {}, CALLER)
    assert {"name": "Paris", "entityType": "city", "observations": ["light rain"]} in graph["entities"]
    assert client.call_tool("weather", {"city": "Paris"}, CALLER)["temp_c"] == 14


def test_a_third_party_tool_error_is_a_clear_error(client):
    with pytest.raises(ToolCallError):
        client.call_tool("create_relations", {"relations": "not a list"}, CALLER)

"""Which MCP servers a worker talks to: a tools config file, or JSON in the environment.

The format is the common `mcpServers` one, so configs written for other MCP clients work:

    {"mcpServers": {
        "builtin": {"command": "python", "args": ["-m", "workers.toolserver"]},
        "fs":      {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"]},
        "remote":  {"url": "http://tools.internal:8931/mcp", "headers": {"Authorization": "Bearer ..."}}}}

TURNSTREAM_MCP_SERVERS holds that JSON inline; TURNSTREAM_TOOLS_CONFIG names a file with it.
Neither set: the built-in server over stdio, spawned with the worker's own interpreter.

A stdio `command` of `python` or `python3` also means the worker's own interpreter
(sys.executable), so a config that runs a Python server gets the virtualenv the worker runs
in; any other command, an absolute path included, is run as written. Rejected: looking
`python` up on PATH, as a shell would. Under `make run` nothing puts .venv/bin on PATH, so
that finds the system's Python, which lacks the `mcp` package the server imports."""

import json
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.settings import Settings


WORKER_PYTHON = ("python", "python3")


class ServerSpec(BaseModel):
    """One MCP server: a stdio command, or a streamable-HTTP URL."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_transport(self) -> "ServerSpec":
        if bool(self.command) == bool(self.url):
            raise ValueError("a server needs exactly one of `command` (stdio) or `url` (streamable HTTP)")
        return self

    @model_validator(mode="after")
    def _python_is_ours(self) -> "ServerSpec":
        if self.command in WORKER_PYTHON:
            self.command = sys.executable
        return self


class ToolsConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    servers: dict[str, ServerSpec] = Field(alias="mcpServers")


class ToolsConfigError(ValueError):
    """The tools config is missing, unreadable or malformed; the message says which and where."""


def builtin_server(settings: Settings) -> ServerSpec:
    """The shipped tool server over stdio. A stdio child does not inherit our environment, so the
    settings it reads are passed explicitly."""
    return ServerSpec(command=sys.executable, args=["-m", "workers.toolserver"],
                      env={"TURNSTREAM_TOOL_LATENCY_MS": str(settings.tool_latency_ms),
                           "TURNSTREAM_REPORT_DURATION_S": str(settings.report_duration_s),
                           "TURNSTREAM_TICKETS_FILE": str(Path(settings.tickets_file).resolve()),
                           # the sandbox's limits (workers/toolserver/sandbox.py)
                           "TURNSTREAM_TOOL_PROCESSES": str(settings.tool_processes),
                           "TURNSTREAM_TOOL_CPU_S": str(settings.tool_cpu_s),
                           "TURNSTREAM_TOOL_MEMORY_MB": str(settings.tool_memory_mb),
                           "TURNSTREAM_TOOL_WALL_S": str(settings.tool_wall_s)})


def parse_config(text: str, source: str) -> dict[str, ServerSpec]:
    try:
        servers = ToolsConfig.model_validate(json.loads(text)).servers
    except json.JSONDecodeError as exc:
        raise ToolsConfigError(f"{source}: not valid JSON ({exc})") from exc
    except ValidationError as exc:
        raise ToolsConfigError(f"{source}: {exc}") from exc
    if not servers:
        raise ToolsConfigError(f"{source}: mcpServers is empty")
    return servers


def load_servers(settings: Settings) -> dict[str, ServerSpec]:
    if settings.mcp_servers:
        return parse_config(settings.mcp_servers, "TURNSTREAM_MCP_SERVERS")
    if settings.tools_config:
        path = Path(settings.tools_config)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ToolsConfigError(f"TURNSTREAM_TOOLS_CONFIG={path}: {exc.strerror}") from exc
        return parse_config(text, str(path))
    return {"builtin": builtin_server(settings)}

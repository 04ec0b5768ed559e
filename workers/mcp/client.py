"""The workers' MCP client: persistent sessions to every configured server, on one loop thread.

Nothing here knows our own tool server: a server is a stdio command or a streamable-HTTP
URL from the tools config (workers.mcp.config), and any MCP server works the same way.

Each process owns one McpClient (mcp_client()). It starts after fork (workers.celery_app wires it to
worker_process_init, or worker_init for pools that do not fork), never before: a loop thread
and live pipes do not survive a fork. Sessions open lazily, stay open across tasks, and
reopen after a server dies. Tool lists are cached for TURNSTREAM_MCP_TOOLS_TTL_S."""

import asyncio
import errno
import json
import logging
import os
import re
import threading
import time
from collections import deque
from contextlib import AsyncExitStack
from typing import Any, Callable

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, CallToolResult, Tool

from shared.settings import Settings, get_settings
from workers.mcp.config import ServerSpec, load_servers
from workers.mcp.loop_thread import LoopThread
from workers.mcp.meta import CACHE_META, CACHE_SCOPES, CALLER_META

log = logging.getLogger(__name__)

_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")


class ToolCallError(Exception):
    """A tool call that did not produce a result: the tool said so, or its server failed."""


class UnknownTool(ToolCallError):
    """No configured server offers a tool by that name."""


class ServerUnavailable(ToolCallError):
    """A server whose session could not be opened; the message names it and its first real error."""


STDERR_TAIL_LINES = 20
FAILURE_TEXT_CHARS = 300


class StderrTail:
    """A stdio server's stderr: forwarded to our log line by line, its last lines kept, so a
    server that dies at start can be reported by what it said (a traceback's last line, an
    npm error) rather than by the closed pipe it left behind. Read on the loop thread."""

    def __init__(self, server: str, loop: asyncio.AbstractEventLoop):
        self.server = server
        self.lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._partial = b""
        self._closed = False
        self._loop = loop
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self.errlog = os.fdopen(write_fd, "w")  # what the child's stderr is dup'ed from
        loop.add_reader(self._read_fd, self.drain)

    def drain(self) -> None:
        """Read whatever the server wrote so far (never blocks)."""
        while not self._closed:
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self.lines.append(line)
                    log.info("MCP server %s: %s", self.server, line)

    def last_words(self) -> str:
        self.drain()
        pending = self._partial.decode(errors="replace").strip()
        lines = [*self.lines, pending] if pending else list(self.lines)
        return lines[-1][:FAILURE_TEXT_CHARS] if lines else ""

    def close(self) -> None:
        if self._closed:
            return
        self.drain()
        self._closed = True
        self._loop.remove_reader(self._read_fd)
        for close in (self.errlog.close, lambda: os.close(self._read_fd)):
            try:
                close()
            except OSError:
                pass


def first_error(exc: BaseException) -> BaseException:
    """The first real error under task-group wrappers (ExceptionGroup of ExceptionGroups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _refused(exc: BaseException) -> bool:
    return any(isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED
               or "connection refused" in str(e).lower() or "connect call failed" in str(e).lower()
               for e in _chain(exc))


def server_failure(name: str, spec: ServerSpec, exc: BaseException, stderr: str = "",
                   connect_timeout_s: float | None = None) -> str:
    """Why a server's session could not be opened, in one clause naming the server."""
    exc = first_error(exc)
    if spec.command:
        where = f"the MCP server {name} ({os.path.basename(spec.command)})"
    else:
        where = f"the MCP server {name} at {spec.url}"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer within {connect_timeout_s or 0:g} s"
    if spec.command:
        if isinstance(exc, FileNotFoundError):
            return f"{where} could not start: {spec.command} was not found"
        if isinstance(exc, OSError) and not stderr:
            return f"{where} could not start: {exc.strerror or exc}"
        if stderr:
            return f"{where} exited: {stderr}"
        return f"{where} closed its connection without saying why"
    if _refused(exc):
        return f"{where}: connection refused"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"{where} answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx2.TimeoutException):
        return f"{where} timed out"
    text = " ".join(str(exc).split())[:FAILURE_TEXT_CHARS]
    return f"{where} failed: {text or type(exc).__name__}"


def declared_cache(tool: Tool) -> dict:
    """What the tool declares for the guards, or a safe default from its MCP annotations:
    only a tool that says it is read-only may be cached, and then for its callers' tenant."""
    declared = (tool.meta or {}).get(CACHE_META)
    if isinstance(declared, dict) and declared.get("cache") in CACHE_SCOPES:
        return declared
    read_only = bool(tool.annotations and tool.annotations.read_only_hint)
    return {"cache": "tenant" if read_only else "never"}


def result_payload(result: CallToolResult) -> Any:
    """A call result as JSON: structured content if the server sent it, else its text (parsed if JSON)."""
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    text = "\n".join(texts)
    if result.is_error:
        raise ToolCallError(text or "the tool reported an error without a message")
    if result.structured_content is not None:
        return result.structured_content
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text or not result.content:
        return {"text": text}
    return {"content": [block.model_dump(mode="json", exclude_none=True) for block in result.content]}


Progress = Callable[[float, float | None, str | None], None]


class ProgressRelay:
    """Carries a tool's MCP progress notifications from the loop thread to the task waiting for
    the call, which forwards the latest one every tick: the loop thread never touches Redis
    (the publisher's pool belongs to the task's thread or hub), and a chatty tool costs a few
    events a second, not one per notification. A deque's append and pop are atomic, so the
    two threads share it without a lock (a gevent-patched lock cannot be used across them)."""

    def __init__(self, forward: Progress):
        self._forward = forward
        self._latest: deque[tuple[float, float | None, str | None]] = deque(maxlen=1)

    async def receive(self, progress: float, total: float | None, message: str | None) -> None:
        self._latest.append((progress, total, message))

    def flush(self) -> None:
        try:
            progress, total, message = self._latest.popleft()
        except IndexError:
            return
        self._forward(progress, total, message)


class _Session:
    """One server's session, held open by a task on the loop (anyio scopes must exit where they began)."""

    def __init__(self, name: str, spec: ServerSpec, settings: Settings):
        self.name = name
        self.spec = spec
        self.settings = settings
        self._client: Client | None = None
        self._stop: asyncio.Event | None = None
        self._holder: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._stderr: StderrTail | None = None

    async def _client_for(self, stack: AsyncExitStack) -> Client:
        timeout = self.settings.mcp_call_timeout_s
        if self.spec.command:
            params = StdioServerParameters(command=self.spec.command, args=self.spec.args,
                                           env=self.spec.env or None, cwd=self.spec.cwd)
            self._stderr = StderrTail(self.name, asyncio.get_running_loop())
            stack.callback(self._stderr.close)
            target: Any = stdio_client(params, errlog=self._stderr.errlog)
        elif self.spec.headers:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=self.spec.headers, timeout=httpx2.Timeout(30.0, read=300.0)))
            target = streamable_http_client(self.spec.url, http_client=http)
        else:
            target = self.spec.url
        return Client(target, read_timeout_seconds=timeout, cache=None)

    async def _hold(self, ready: asyncio.Future) -> None:
        try:
            async with AsyncExitStack() as stack:
                client = await stack.enter_async_context(await self._client_for(stack))
                self._client = client
                ready.set_result(client)
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported to whoever waits for the session
            if not ready.done():
                ready.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("MCP server %s: session ended: %s", self.name, exc)
        finally:
            self._client = None

    async def client(self) -> Client:
        async with self._lock:
            if self._client is not None and self._holder is not None and not self._holder.done():
                return self._client
            self._stop = asyncio.Event()
            ready = asyncio.get_running_loop().create_future()
            self._holder = asyncio.get_running_loop().create_task(self._hold(ready))
            try:
                return await asyncio.wait_for(asyncio.shield(ready), self.settings.mcp_connect_timeout_s)
            except Exception as exc:
                stderr = self._stderr.last_words() if self._stderr is not None else ""
                await self.close()
                message = server_failure(self.name, self.spec, exc, stderr, self.settings.mcp_connect_timeout_s)
                log.warning("%s", message)
                raise ServerUnavailable(message) from exc
            except BaseException:
                await self.close()
                raise

    def broken(self) -> None:
        """Forget a session whose transport failed; the next call opens a new one."""
        if self._stop is not None:
            self._stop.set()
        self._client = None

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._holder is not None:
            try:
                await asyncio.wait_for(self._holder, 10)
            except BaseException:  # noqa: BLE001 - closing must not fail the shutdown
                self._holder.cancel()
        self._client = None


_TRANSPORT_ERRORS = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError,
                     httpx2.TransportError)


def _connection_failure(exc: BaseException) -> bool:
    """The session itself is gone (not just one request failing or timing out)."""
    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    return isinstance(exc, _TRANSPORT_ERRORS)


class McpClient:
    """Every configured server's session, and the merged, briefly cached tool catalogue."""

    def __init__(self, settings: Settings | None = None, servers: dict[str, ServerSpec] | None = None):
        self.settings = settings or get_settings()
        self.pid = os.getpid()
        self.servers = servers if servers is not None else load_servers(self.settings)
        self._thread = LoopThread()
        self._sessions = {name: _Session(name, spec, self.settings) for name, spec in self.servers.items()}
        self._catalog: dict[str, dict] = {}
        self._catalog_at = 0.0
        self.server_errors: dict[str, str] = {}
        self._catalog_lock = threading.Lock()

    # --- running on the loop ---------------------------------------------------------
    async def _list_server(self, session: _Session) -> list[Tool]:
        for attempt in (1, 2):
            client = await session.client()
            try:
                tools, cursor = [], None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        return tools
            except Exception as exc:
                if attempt == 2 or not _connection_failure(exc):
                    raise
                session.broken()  # listing is safe to retry on a fresh session
        return []

    async def _list_all(self) -> dict[str, list[Tool] | BaseException]:
        names = list(self._sessions)
        timeout = self.settings.mcp_connect_timeout_s + self.settings.mcp_call_timeout_s
        results = await asyncio.gather(
            *(asyncio.wait_for(self._list_server(self._sessions[n]), timeout) for n in names), return_exceptions=True)
        return dict(zip(names, results))

    async def _call(self, server: str, tool: str, args: dict, meta: dict | None,
                    relay: ProgressRelay | None = None) -> CallToolResult:
        session = self._sessions[server]
        client = await session.client()
        try:
            # With a progress callback the SDK sends a progress token, which is what lets the
            # tool report notifications/progress at all.
            return await client.call_tool(tool, args, meta=meta, progress_callback=relay.receive if relay else None)
        except Exception as exc:
            if _connection_failure(exc):
                session.broken()  # not retried: the call may have had a side effect
            raise

    async def _close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()), return_exceptions=True)

    # --- called from tasks (threads or greenlets) --------------------------------------
    def list_tools(self, refresh: bool = False) -> list[dict]:
        """Every configured server's tools as JSON tool specs; servers that fail are left out
        (and named in `server_errors`) so one broken server does not take the others down."""
        with self._catalog_lock:
            fresh = time.monotonic() - self._catalog_at < self.settings.mcp_tools_ttl_s
            if refresh or not fresh or not self._catalog:
                timeout = self.settings.mcp_connect_timeout_s + self.settings.mcp_call_timeout_s + 5
                self._catalog = self._merge(self._thread.run(self._list_all(), timeout))
                self._catalog_at = time.monotonic()
            return list(self._catalog.values())

    def _merge(self, listed: dict[str, list[Tool] | BaseException]) -> dict[str, dict]:
        catalog: dict[str, dict] = {}
        self.server_errors = {}
        for server, tools in listed.items():
            if isinstance(tools, BaseException):
                self.server_errors[server] = (str(tools) if isinstance(tools, ServerUnavailable) else
                                              server_failure(server, self.servers[server], tools, "",
                                                             self.settings.mcp_call_timeout_s))
                log.warning("MCP server %s: cannot list tools: %s", server, self.server_errors[server])
                continue
            for tool in tools:
                name = _NAME_OK.sub("_", tool.name)[:64]
                if name in catalog:
                    name = _NAME_OK.sub("_", f"{server}__{tool.name}")[:64]
                catalog[name] = {"name": name, "server": server, "remote_name": tool.name,
                                 "description": (tool.description or tool.title or "").strip(),
                                 "input_schema": tool.input_schema or {"type": "object", "properties": {}},
                                 "cache_declaration": declared_cache(tool)}
        return catalog

    def resolve(self, name: str) -> dict:
        """The catalogue entry of `name` (a lookup in the cached catalogue, refreshed once if missing)."""
        self.list_tools()
        tool = self._catalog.get(name)
        if tool is None:
            self.list_tools(refresh=True)
            tool = self._catalog.get(name)
        if tool is None:
            raise UnknownTool(f"no configured MCP server offers a tool named {name!r}")
        return tool

    def call_tool(self, name: str, args: dict, caller: dict | None = None, timeout: float | None = None,
                  on_progress: Progress | None = None) -> Any:
        """Call a tool by its catalogue name; its JSON result, or ToolCallError saying what failed.
        `on_progress(progress, total, message)` gets the tool's progress reports, coalesced to one
        every TURNSTREAM_TOOL_PROGRESS_COALESCE_S, in the calling thread."""
        spec = self.resolve(name)
        timeout = timeout or self.settings.mcp_call_timeout_s
        meta = {CALLER_META: caller} if caller else None
        relay = ProgressRelay(on_progress) if on_progress else None
        every = (self.settings.tool_progress_coalesce_s, relay.flush) if relay else None
        try:
            result = self._thread.run(self._call(spec["server"], spec["remote_name"], args, meta, relay),
                                      timeout + self.settings.mcp_connect_timeout_s, every=every)
        except TimeoutError as exc:
            raise ToolCallError(f"{name} timed out after {timeout:.0f}s") from exc
        except MCPError as exc:
            raise ToolCallError(f"{name}: {exc}") from exc
        except ToolCallError:
            raise
        except Exception as exc:
            raise ToolCallError(f"{name}: {server_failure(spec['server'], self.servers[spec['server']], exc)}") from exc
        return result_payload(result)

    def close(self, timeout: float = 15.0) -> None:
        if self._thread.alive:
            try:
                self._thread.run(self._close_all(), timeout)
            except Exception as exc:  # noqa: BLE001 - best effort at shutdown
                log.warning("closing MCP sessions: %s", exc)
            self._thread.stop()


_client: McpClient | None = None
_client_lock = threading.Lock()


def mcp_client() -> McpClient:
    """This process's client, created on first use in the process (never inherited across a fork)."""
    global _client
    client = _client
    if client is not None and client.pid == os.getpid():
        return client
    with _client_lock:
        if _client is None or _client.pid != os.getpid():
            _client = McpClient()
        return _client


def close_mcp_client() -> None:
    global _client
    with _client_lock:
        client, _client = _client, None
    if client is not None and client.pid == os.getpid():
        client.close()


def _forget_after_fork() -> None:
    global _client
    _client = None


os.register_at_fork(after_in_child=_forget_after_fork)

"""turnstream's built-in MCP tool server, written with the official `mcp` SDK (MCPServer).

Run it over stdio (`python -m workers.toolserver`, what workers spawn by default) or streamable
HTTP (`python -m workers.toolserver --http --port 8931`, URL http://127.0.0.1:8931/mcp).

Each tool declares, in its `_meta` under CACHE_META, how the execution cache may treat it: its
scope (`global`, `tenant`, `user`, or `never` for side effects) and TTL. Who may call what is the
permission guard's business (the shipped auth policy keeps create_ticket to admins), and
create_ticket refuses non-admins itself too. The caller's identity arrives in each request's
`_meta` under CALLER_META; the client sets it from the signed token, never from the model."""

import asyncio
import logging
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from workers.mcp.meta import CACHE_META, CALLER_META
from workers.toolserver import sandbox, tools

log = logging.getLogger(__name__)


def _cache(cache: str, ttl_s: int | None = None) -> dict[str, Any]:
    declared: dict[str, Any] = {"cache": cache}
    if ttl_s is not None:
        declared["ttl_s"] = ttl_s
    return {CACHE_META: declared}


def caller_of(ctx: Context) -> tools.Caller:
    meta = ctx.request_context.meta or {}
    caller = meta.get(CALLER_META) or {}
    if not isinstance(caller, dict):
        return tools.Caller()
    roles = caller.get("roles") or []
    return tools.Caller(user=caller.get("user"), tenant=caller.get("tenant"),
                        roles=tuple(r for r in roles if isinstance(r, str)))


async def _upstream() -> None:
    """The simulated upstream call: awaited, so concurrent calls overlap."""
    latency = tools.upstream_latency_s()
    if latency:
        await asyncio.sleep(latency)


async def _run(fn, *args, **kwargs) -> dict[str, Any]:
    """The tool's own code, in a child process under CPU and memory limits (sandbox)."""
    try:
        return await sandbox.run(fn, *args, **kwargs)
    except tools.ToolFailure as exc:
        raise ToolError(str(exc)) from exc


READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def build_server() -> MCPServer:
    server = MCPServer("turnstream-tools", version="1.0.0",
                       instructions="Demo tools: weather, help-center search, calculator, orders, tickets, sales report.")

    @server.tool(annotations=READ_ONLY, meta=_cache("global", ttl_s=600), structured_output=True)
    async def weather(city: str) -> dict[str, Any]:
        """Current weather for a city, e.g. city="Paris"."""
        await _upstream()
        return await _run(tools.weather, city)

    @server.tool(annotations=READ_ONLY, meta=_cache("global"), structured_output=True)
    async def search_kb(query: str, limit: int = 3) -> dict[str, Any]:
        """Search the help-center articles (passwords, refunds, shipping, reports, API limits, 2FA)."""
        await _upstream()
        return await _run(tools.search_kb, query, limit)

    @server.tool(annotations=READ_ONLY, meta=_cache("global"), structured_output=True)
    async def calculator(expression: str) -> dict[str, Any]:
        """Evaluate arithmetic, e.g. expression="6 * 7 + 1"."""
        return await _run(tools.calculator, expression)

    @server.tool(annotations=READ_ONLY, meta=_cache("user", ttl_s=60), structured_output=True)
    async def my_orders(ctx: Context, status: str | None = None) -> dict[str, Any]:
        """The signed-in user's own orders; optional status filter (processing, shipped, delivered)."""
        await _upstream()
        return await _run(tools.my_orders, caller_of(ctx), status)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False),
                 meta=_cache("never"), structured_output=True)
    async def create_ticket(ctx: Context, subject: str, body: str = "") -> dict[str, Any]:
        """Open a support ticket (admins only). It has a side effect: every call opens a new ticket."""
        await _upstream()
        return await _run(tools.create_ticket, caller_of(ctx), subject, body)

    @server.tool(annotations=READ_ONLY, meta=_cache("never"), structured_output=True)
    async def sales_report(ctx: Context) -> dict[str, Any]:
        """Generate the signed-in user's sales report (slow: takes several seconds, reports its progress)."""
        return await _report(ctx)

    return server


async def _report(ctx: Context) -> dict[str, Any]:
    """Works through the report's stages, telling the client after each (MCP notifications/progress;
    a no-op when the client sent no progress token). Never cached: a report is made fresh."""
    stages = tools.REPORT_STAGES
    pause = tools.report_duration_s() / len(stages)
    for done, stage in enumerate(stages):
        await ctx.report_progress(done, len(stages), stage)
        await asyncio.sleep(pause)
    await ctx.report_progress(len(stages), len(stages), "Done")
    return await _run(tools.sales_report, caller_of(ctx))

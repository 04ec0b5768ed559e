"""How workers reach tools: the MCP client, its server config, its loop thread and the `_meta`
keys our client and the built-in server agree on.

Rule: MCP only. Nothing here checks permissions or caches results (shared.guards does, around
any callable) and nothing here knows a turn. Importing this package loads nothing: the
built-in tool server imports `workers.mcp.meta` without the client or its SDK session code.

- `client`: one McpClient per process, with a session per configured server;
- `config`: which servers (the `mcpServers` format);
- `loop_thread`: the asyncio loop the SDK runs on, under threads or gevent;
- `meta`: the `_meta` keys (who the call is for, what a tool declares for the cache)."""

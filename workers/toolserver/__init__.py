"""The built-in MCP tool server that turnstream workers use by default (see workers.toolserver.server).

Rule: a process of its own, spawned by workers over stdio and reached only through MCP. It imports
no Celery, no Redis client and nothing of a turn: only the settings and the `_meta` keys
(workers.mcp.meta) it shares with our client."""

"""The `_meta` keys turnstream's MCP client and its built-in server agree on.

CALLER_META rides on every tool call: who the call is for (user, tenant, roles), taken from
the signed token, never from the model. CACHE_META is what a tool may declare about itself
for the execution cache: scope (`global`, `tenant`, `user`, or `never` for side effects) and
TTL (shared.guards.declarations: the declarations file wins over it). Servers that know neither
key simply ignore them; tools that declare nothing get a cache declaration derived from their
standard MCP annotations (workers.mcp.client.declared_cache)."""

CALLER_META = "io.turnstream/caller"
CACHE_META = "io.turnstream/policy"  # the wire name tool servers declare under (MCP _meta)
CACHE_SCOPES = ("global", "tenant", "user", "never")

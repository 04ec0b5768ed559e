"""The `_meta` keys turnstream's MCP client and its built-in server agree on.

CALLER_META rides on every tool call: who the call is for (user, tenant, roles), taken from
the signed token, never from the model. POLICY_META is what a tool may declare about itself
for the execution cache: scope (`global`, `tenant`, `user`, or `never` for side effects) and
TTL (shared/exec_cache.py: the declarations file wins over it). Servers that know neither key
simply ignore them; tools that declare nothing get a policy derived from their standard MCP
annotations."""

CALLER_META = "io.turnstream/caller"
POLICY_META = "io.turnstream/policy"
CACHE_SCOPES = ("global", "tenant", "user", "never")

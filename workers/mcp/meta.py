"""The `_meta` keys turnstream's MCP client and its built-in server agree on.

CALLER_META rides on every tool call: who the call is for (user, tenant, roles), taken from
the signed token, never from the model. POLICY_META is what a tool may declare about itself
for the execution cache: scope (`global`, `tenant`, `user`, or `never` for side effects) and
TTL (shared/exec_cache.py: the declarations file wins over it). IDEMPOTENCY_META rides on every call to a tool
that is not read-only: `<session id>/<message id>/<call id>`, the same on every retry of that
call, so a tool that honours it acts once (README, "Idempotency keys for tool authors").
Servers that know none of these keys simply ignore them; tools that declare nothing get a policy derived from their standard MCP
annotations."""

CALLER_META = "io.turnstream/caller"
POLICY_META = "io.turnstream/policy"
IDEMPOTENCY_META = "io.turnstream/idempotency_key"
CACHE_SCOPES = ("global", "tenant", "user", "never")

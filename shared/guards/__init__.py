"""The tool-call guards: the permission memo in front of a verifier, and the execution cache.

Rule: a guard needs a Redis and, for permissions, a verifier (the policy file or an identity
provider); nothing more. Nothing here knows Flask, Celery or MCP: `call.guarded_call` wraps any
callable, so the workers decide how a tool runs and the guards only decide whether it may and
whether it must.

- `auth_memo`: the permission memo (generations make invalidation O(1));
- `verifiers`: who answers a permission check the memo cannot;
- `declarations`: what a tool declares to the cache (scope, TTL, volatile fields);
- `exec_cache`: the single-flight execution cache;
- `call`: both guards around one call, in order;
- `degradation`: what a guard does when its Redis fails;
- `stats`: the per-minute guard outcome counts /ops shows."""

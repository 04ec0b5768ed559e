"""What both tiers speak and where they keep it: the vocabulary and the stores.

Rule: settings, defaults, Redis keys and store clients, the event schema, turn records, the
progress log and the Celery configuration that both the web tier and the workers import. No
Flask views, no Celery tasks, no process launching. Subpackages state their own rules:
`shared.guards` (the tool-call guards), `shared.cli` (the command and launchers, never imported
at runtime)."""

"""Code used by both the web tier and the workers: settings, Redis roles, keys, events, guards."""

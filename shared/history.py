"""Conversation history: each session's last N finished turns, on the broker instance (noeviction).

The reasoner reads them so a follow-up ("and in Berlin?") can use what came before. Only
finished turns are kept, newest last, each as JSON {owner, prompt, answer, tools}. Each entry
names its owner and `recall` returns only the caller's, so a history can never reach another
user even if the session's ownership were lost; writing it renews the owner key with it."""

import json

import redis

from shared import keys
from shared.redis_stores import client
from shared.settings import get_settings
from shared.turns import session_ttl_s


def remember(session_id: str, owner: str, prompt: str, answer: str, tools: list[str],
             r: redis.Redis | None = None) -> None:
    settings = get_settings()
    if settings.history_turns <= 0:
        return
    key = keys.session_history(session_id)
    ttl = session_ttl_s()
    pipe = (r or client("broker")).pipeline()
    pipe.rpush(key, json.dumps({"owner": owner, "prompt": prompt, "answer": answer, "tools": tools}))
    pipe.ltrim(key, -settings.history_turns, -1)
    pipe.expire(key, ttl)
    pipe.expire(keys.session_owner(session_id), ttl)
    pipe.execute()


def recall(session_id: str, owner: str, r: redis.Redis | None = None) -> list[dict]:
    """The session's last N turns that belong to `owner`, oldest first."""
    n = get_settings().history_turns
    if n <= 0:
        return []
    items = (json.loads(item) for item in (r or client("broker")).lrange(keys.session_history(session_id), -n, -1))
    return [item for item in items if item.get("owner") == owner]

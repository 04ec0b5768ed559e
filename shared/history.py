"""Conversation history: each session's last N finished turns, on the broker instance (noeviction).

The reasoner reads them so a follow-up ("and in Berlin?") can use what came before. Only
finished turns are kept, newest last, each as JSON {prompt, answer, tools}."""

import json

import redis

from shared import keys
from shared.redis_roles import client
from shared.settings import get_settings


def remember(session_id: str, prompt: str, answer: str, tools: list[str], r: redis.Redis | None = None) -> None:
    settings = get_settings()
    if settings.history_turns <= 0:
        return
    key = keys.session_history(session_id)
    pipe = (r or client("broker")).pipeline()
    pipe.rpush(key, json.dumps({"prompt": prompt, "answer": answer, "tools": tools}))
    pipe.ltrim(key, -settings.history_turns, -1)
    pipe.expire(key, settings.turn_status_ttl_s * 7)
    pipe.execute()


def recall(session_id: str, r: redis.Redis | None = None) -> list[dict]:
    """The session's last N turns, oldest first."""
    n = get_settings().history_turns
    if n <= 0:
        return []
    return [json.loads(item) for item in (r or client("broker")).lrange(keys.session_history(session_id), -n, -1)]

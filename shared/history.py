"""Conversation history: each session's last N finished turns, on the broker instance (noeviction).

The reasoner reads them so a follow-up ("and in Berlin?") can use what came before. Only
finished turns are kept, newest last, each as JSON {owner, prompt, answer, tools}. Each entry
names its owner and `recall` returns only the caller's, so a history can never reach another
user even if the session's ownership were lost; writing it renews the owner key with it. An
entry is written by the script that makes its turn done (shared.turns.finish_turn), so only
the delivery that finishes the turn writes it, in the same round trip."""

import json

import redis

from shared import keys
from shared.redis_stores import client
from shared.settings import get_settings
from shared.turns import finish_turn


def finish_with_answer(session_id: str, message_id: str, owner: str, prompt: str, answer: str, tools: list[str],
                       r: redis.Redis | None = None) -> tuple[str | None, bool]:
    """Move the turn to `done` with its answer and remember it, in one round trip (shared.turns.finish_turn):
    only the call that makes the turn done appends the entry. Returns the turn's status afterwards
    and whether this call made it done."""
    entry = json.dumps({"owner": owner, "prompt": prompt, "answer": answer, "tools": tools})
    return finish_turn(session_id, message_id, answer, entry, max(get_settings().history_turns, 0), r=r)


def recall(session_id: str, owner: str, r: redis.Redis | None = None) -> list[dict]:
    """The session's last N turns that belong to `owner`, oldest first."""
    n = get_settings().history_turns
    if n <= 0:
        return []
    items = (json.loads(item) for item in (r or client("broker")).lrange(keys.session_history(session_id), -n, -1))
    return [item for item in items if item.get("owner") == owner]

"""The permission memo against a real redis-server: batch lookups, TTLs, invalidation, revocation,
strict mode, the HTTP verifier, and failing closed."""

import os
from pathlib import Path

import pytest

from shared.guards.auth_memo import AuthMemo, invalidate, read_memo
from shared.guards.degradation import reset_breakers
from shared.guards.verifiers import HttpVerifier, PolicyFileVerifier, parse_policy
from shared.identity import Principal
from tests.guard_support import IdentityProvider, pooled

GUARD_STORE = "auth_memo"  # the guard_redis and r fixtures (tests/conftest.py) run this store
ALICE = Principal("alice", "acme", ("analyst",))
ALICE_VIEWER = Principal("alice", "acme", ("viewer",))
ADMIN = Principal("root", "acme", ("admin",))
TOOLS = ["weather", "search_kb", "calculator", "my_orders", "create_ticket", "t5", "t6", "t7", "t8", "t9"]

POLICY = """
[tenants."*".roles]
analyst = ["weather", "search_kb", "calculator", "my_orders"]
viewer = ["search_kb"]
admin = ["*"]

[tenants.globex.roles]
analyst = ["search_kb"]
"""


def write_policy(path: Path, text: str) -> None:
    """Replace the file atomically, as an operator's deploy would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def policy_file(tmp_path) -> Path:
    path = tmp_path / "policy.toml"
    write_policy(path, POLICY)
    return path


def memo_for(r, path: Path, **options) -> AuthMemo:
    return AuthMemo(r, PolicyFileVerifier(path), options.pop("allow_ttl_s", 1800), options.pop("deny_ttl_s", 60),
                    **options)


def calls(r, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_policy_rules():
    policy = parse_policy(POLICY)
    assert policy.allows(ALICE, "weather") and not policy.allows(ALICE, "create_ticket")
    assert policy.allows(ADMIN, "anything_at_all")
    assert not policy.allows(Principal("x", "acme", ()), "search_kb"), "no role, no tool"
    assert policy.allowed_tools(Principal("x", "acme", ("viewer", "analyst"))) >= {"weather", "search_kb"}
    globex = Principal("alice", "globex", ("analyst",))
    assert policy.allows(globex, "search_kb") and not policy.allows(globex, "weather"), "a tenant's role replaces *"
    with pytest.raises(ValueError):
        parse_policy("[tenants.acme]\nroels = {}\n")


def test_shipped_policy_keeps_create_ticket_for_admins():
    from shared.guards.verifiers import shipped_policy_path
    policy = parse_policy(shipped_policy_path().read_text())
    assert not policy.allows(ALICE, "create_ticket") and policy.allows(ADMIN, "create_ticket")
    assert policy.allows(ALICE, "weather")


def test_batch_preflight_is_one_round_trip_then_memo_hits(r, policy_file):
    memo = memo_for(r, policy_file)
    first = memo.preflight(ALICE, TOOLS)
    assert first.allowed == ["weather", "search_kb", "calculator", "my_orders"]
    assert set(first.denied) == {"create_ticket", "t5", "t6", "t7", "t8", "t9"}
    assert {d.memo for d in first.decisions.values()} == {"miss"}
    reads_before = calls(r, "mget"), calls(r, "get")
    second = memo.preflight(ALICE, TOOLS)
    assert (calls(r, "mget"), calls(r, "get")) == (reads_before[0] + 1, reads_before[1]), "one MGET for 10 tools"
    assert {d.memo for d in second.decisions.values()} == {"hit"}
    assert second.allowed == first.allowed


def test_allows_live_30_minutes_and_denies_less(r, policy_file):
    memo = memo_for(r, policy_file, deny_ttl_s=45)
    memo.preflight(ALICE, ["weather", "create_ticket"])
    assert 1790 < r.ttl("agent:auth:memo:{alice}:acme:weather") <= 1800
    assert 0 < r.ttl("agent:auth:memo:{alice}:acme:create_ticket") <= 45


def test_a_memo_made_for_other_roles_does_not_count(r, policy_file):
    memo = memo_for(r, policy_file)
    assert memo.check(ALICE, "weather").allowed
    as_viewer = memo.check(ALICE_VIEWER, "weather")
    assert (as_viewer.allowed, as_viewer.memo) == (False, "miss")


def test_invalidation_is_one_incr_and_applies_to_the_next_check(r, policy_file):
    memo = memo_for(r, policy_file)
    for i in range(300):
        memo.preflight(Principal(f"u{i}", "acme", ("analyst",)), ["weather", "search_kb"])
    assert {d.memo for d in memo.preflight(ALICE, ["weather", "search_kb"]).decisions.values()} == {"miss"}
    assert memo.check(ALICE, "weather").memo == "hit"
    commands_before = sum(v["calls"] for v in r.info("commandstats").values())
    invalidate(tool="weather", r=r)
    commands = sum(v["calls"] for v in r.info("commandstats").values()) - commands_before
    assert commands == 2, "one INCR (plus the INFO that counted it), however many memos exist"
    assert memo.check(ALICE, "weather").memo == "miss"
    assert memo.check(ALICE, "search_kb").memo == "hit", "other tools keep their memos"
    for target in ({"user": "alice"}, {"tenant": "acme"}, {"everything": True}):
        assert memo.check(ALICE, "search_kb").memo == "hit"
        invalidate(r=r, **target)
        assert memo.check(ALICE, "search_kb").memo == "miss", target
    with pytest.raises(ValueError):
        invalidate(r=r, user="alice", tool="weather")


def test_revoke_then_check_is_denied_at_once_with_zero_stale_allows_in_1000_cycles(r, policy_file):
    memo = memo_for(r, policy_file)
    granted = POLICY
    revoked = POLICY.replace('analyst = ["weather", "search_kb", "calculator", "my_orders"]',
                             'analyst = ["search_kb", "calculator", "my_orders"]')
    targets = [{"tool": "weather"}, {"user": "alice"}, {"tenant": "acme"}, {"everything": True}]
    stale_allows = missed_grants = 0
    for cycle in range(1000):
        write_policy(policy_file, granted)
        invalidate(r=r, **targets[cycle % 4])
        missed_grants += not memo.check(ALICE, "weather").allowed
        memo.check(ALICE, "weather")  # a memo hit, to be made stale by the revocation
        write_policy(policy_file, revoked)
        invalidate(r=r, **targets[(cycle + 1) % 4])
        stale_allows += memo.check(ALICE, "weather").allowed
    assert (stale_allows, missed_grants) == (0, 0)


def test_strict_mode_asks_the_verifier_every_time(r, policy_file):
    strict = memo_for(r, policy_file, strict=True)
    assert strict.check(ALICE, "weather").memo == "bypass"
    write_policy(policy_file, POLICY.replace('"weather", ', ""))
    decision = strict.check(ALICE, "weather")
    assert (decision.allowed, decision.memo) == (False, "bypass")
    assert r.dbsize() == 0, "strict mode neither reads nor writes memos"


def test_http_verifier_checks_misses_concurrently_and_fails_closed(r):
    idp = IdentityProvider().start()
    try:
        idp.grants[("acme", "alice")] = {"weather", "search_kb"}
        idp.delay_s = 0.2
        memo = AuthMemo(r, HttpVerifier(idp.url, timeout_s=2.0, concurrency=8), 1800, 60)
        result = memo.preflight(ALICE, ["weather", "search_kb", "calculator", "create_ticket"])
        assert result.allowed == ["weather", "search_kb"] and result.denied == ["calculator", "create_ticket"]
        assert idp.max_in_flight > 1, "the misses of a batch are verified concurrently"

        idp.down = True
        remembered = memo.preflight(ALICE, ["weather", "calculator"])
        assert remembered.allowed == ["weather"] and remembered.denied == ["calculator"], "memos still answer"
        unknown = memo.check(Principal("newcomer", "acme", ("analyst",)), "weather")
        assert (unknown.allowed, unknown.unavailable) == (False, True)
        assert "503" in unknown.error

        idp.down, idp.delay_s = False, 1.0
        slow = AuthMemo(r, HttpVerifier(idp.url, timeout_s=0.2, concurrency=8), 1800, 60)
        timed_out = slow.check(Principal("other", "acme", ("analyst",)), "weather")
        assert (timed_out.allowed, timed_out.unavailable) == (False, True)
        assert "did not answer" in timed_out.error
    finally:
        idp.stop()


def test_a_broken_policy_file_fails_closed(r, policy_file):
    memo = memo_for(r, policy_file)
    write_policy(policy_file, "[tenants.acme\nthis is not toml")
    decision = memo.check(ALICE, "weather")
    assert (decision.allowed, decision.unavailable) == (False, True) and "invalid" in decision.error
    assert not r.exists("agent:auth:memo:{alice}:acme:weather"), "no answer, no memo"


def test_with_the_memo_redis_down_the_verifier_decides_and_denies_stay_denied(guard_redis, policy_file):
    reset_breakers()
    r = pooled(guard_redis.env["AUTH_MEMO_REDIS_URL"])
    memo = memo_for(r, policy_file)
    memo.preflight(ALICE, ["weather", "create_ticket"])
    guard_redis.stop_redis("auth_memo")
    try:
        result = memo.preflight(ALICE, ["weather", "create_ticket"])
        assert result.allowed == ["weather"] and result.denied == ["create_ticket"]
        assert {d.memo for d in result.decisions.values()} == {"bypass"}
        write_policy(policy_file, POLICY.replace('"weather", ', ""))
        assert not memo.check(ALICE, "weather").allowed, "a revocation applies even without the memo"
    finally:
        guard_redis.restart_redis("auth_memo")
        reset_breakers()


def test_a_tool_name_no_key_can_hold_is_denied(r, policy_file):
    result = memo_for(r, policy_file, strict=False).preflight(ADMIN, ["weather", "bad:name*", "x" * 200])
    assert result.allowed == ["weather"] and set(result.denied) == {"bad:name*", "x" * 200}


def test_read_memo_needs_the_exact_stamp():
    assert read_memo("A|1.2.3.4|abc", "1.2.3.4|abc") is True
    assert read_memo("D|1.2.3.4|abc", "1.2.3.4|abc") is False
    assert read_memo("A|1.2.3.4|abc", "1.2.3.5|abc") is None
    assert read_memo("A|1.2.3.4|abc", "1.2.3.4|abd") is None
    assert read_memo(None, "x") is None and read_memo("garbage", "x") is None

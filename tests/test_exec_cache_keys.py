"""Execution-cache keys are pure functions: the same call hits, a different call misses."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.guards.declarations import Declarations, ToolSpec, normalize_name, parse_declarations
from shared.guards.exec_cache import cache_key, canonical_json, encode_exact, strip_volatile
from shared.identity import Principal

VOLATILE = Declarations().volatile
ALICE = Principal("alice", "acme", ("analyst",))
BOB = Principal("bob", "acme", ("analyst",))
CAROL = Principal("carol", "globex", ("analyst",))
WEATHER = ToolSpec("weather", cacheable=True, scope="global")
ORDERS = ToolSpec("my_orders", cacheable=True, scope="user")
KB = ToolSpec("search_kb", cacheable=True, scope="tenant")

names = st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=8).filter(
    lambda n: normalize_name(n) not in VOLATILE)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=10))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(names, inner, max_size=4)), max_leaves=12)
params = st.dictionaries(names, json_values, min_size=1, max_size=5)


def key(params_, spec=WEATHER, principal=ALICE):
    return cache_key(spec, params_, principal, VOLATILE)


def reorder(value):
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value


def sprinkle_volatile(value, depth=0):
    """The same JSON with fresh timestamps and request ids added at every object."""
    if isinstance(value, dict):
        return {**{k: sprinkle_volatile(v, depth + 1) for k, v in value.items()},
                "timestamp": 1700000000 + depth, "requestId": f"req-{depth}", "ui_hint": {"x": depth}}
    if isinstance(value, list):
        return [sprinkle_volatile(v, depth + 1) for v in value]
    return value


@settings(max_examples=150, deadline=None)
@given(params)
def test_key_order_and_volatile_fields_do_not_matter(p):
    assert key(reorder(p)) == key(p)
    assert key(sprinkle_volatile(p)) == key(p)


@settings(max_examples=150, deadline=None)
@given(params, names, json_values)
def test_a_different_name_or_value_misses(p, new_name, new_value):
    name = next(iter(p))
    if new_name not in p:
        renamed = {(new_name if k == name else k): v for k, v in p.items()}
        assert key(renamed) != key(p)
    if canonical_json(new_value) != canonical_json(p[name]):
        assert key({**p, name: new_value}) != key(p)


def test_names_are_kept():
    assert key({"a": 1}) != key({"b": 1})
    assert key({"a": {"b": 1}}) != key({"a": {"c": 1}})
    assert key({"a": [1, 2]}) != key({"a": [2, 1]}), "list order is meaningful"
    assert key({"a": 1}) != key({"a": 1.0}) and key({"a": 1}) != key({"a": True})


def test_volatile_names_match_without_case_or_separators_at_any_depth():
    base = {"city": "Paris", "opts": [{"unit": "C"}]}
    noisy = {"city": "Paris", "Request-ID": "r1", "opts": [{"unit": "C", "TIMESTAMP": 5, "session_token": "s"}]}
    assert key(noisy) == key(base)
    assert strip_volatile(noisy, VOLATILE) == base


def test_per_tool_volatile_fields_apply_to_that_tool_only():
    spec = ToolSpec("weather", cacheable=True, scope="global", volatile=frozenset({"unitshint"}))
    assert key({"city": "Paris", "units_hint": "x"}, spec) == key({"city": "Paris"}, spec)
    other = ToolSpec("calculator", cacheable=True, scope="global")
    assert key({"expression": "1", "units_hint": "x"}, other) != key({"expression": "1"}, other)


@settings(max_examples=100, deadline=None)
@given(params)
def test_user_scope_never_crosses_users(p):
    assert key(p, ORDERS, ALICE) != key(p, ORDERS, BOB)
    assert key(p, ORDERS, ALICE).result != key(p, ORDERS, BOB).result
    assert key(p, KB, ALICE) == key(p, KB, BOB) != key(p, KB, CAROL)
    assert key(p, WEATHER, ALICE) == key(p, WEATHER, CAROL)


def test_key_names_carry_tool_and_scope():
    k = key({"q": 1}, ORDERS, ALICE)
    assert k.result.startswith("agent:exec:result:{my_orders:user.acme.alice:")
    assert len(k.digest) == 64


def test_non_string_names_and_non_json_values_are_refused():
    with pytest.raises(TypeError):
        key({1: "a"})
    with pytest.raises(ValueError):
        key({"x": math.nan})
    with pytest.raises(TypeError):
        key({"x": object()})


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_encode_exact_round_trips_json(value):
    import json
    text = encode_exact(value)
    assert text is not None and json.loads(text) == value


def test_encode_exact_refuses_what_json_would_change():
    assert encode_exact((1, 2)) is None
    assert encode_exact({1: "a"}) is None
    assert encode_exact(math.inf) is None
    assert encode_exact({"s": {1, 2}}) is None


def test_declarations_parse_and_default_to_not_cacheable():
    decls = parse_declarations('[global]\nvolatile = ["Trace-Token"]\n'
                               '[tools.a]\ncacheable = true\nscope = "tenant"\nttl_s = 5\nvolatile = ["x_y"]\n')
    assert decls.tools["a"] == ToolSpec("a", True, "tenant", 5, frozenset({"xy"}))
    assert "tracetoken" in decls.volatile and "requestid" in decls.volatile
    assert decls.spec("unknown").cacheable is False
    with pytest.raises(ValueError):
        parse_declarations('[tools.a]\nscope = "planet"\n')
    with pytest.raises(ValueError):
        parse_declarations('[tools.a]\ncachable = true\n')


def test_shipped_declarations_never_cache_the_side_effecting_tool():
    from shared.guards.declarations import load_declarations
    decls = load_declarations()
    assert decls.spec("create_ticket").cacheable is False
    assert decls.spec("my_orders").scope == "user"


def test_a_tool_can_declare_its_own_policy_but_the_file_wins():
    decls = parse_declarations('[tools.weather]\ncacheable = false\n')
    assert decls.spec("weather", {"cache": "global"}).cacheable is False, "the operator's file wins"
    assert decls.spec("lookup", {"cache": "tenant", "ttl_s": 60, "volatile": ["Trace_Id"]}) == ToolSpec(
        "lookup", True, "tenant", 60, frozenset({"traceid"}))
    for declared in (None, {}, {"cache": "never"}, {"cache": "planet"}, "global"):
        assert decls.spec("lookup", declared).cacheable is False
    assert decls.spec("lookup", {"cache": "user", "ttl_s": True}).ttl_s is None

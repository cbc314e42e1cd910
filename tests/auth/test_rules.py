"""Rules decide as Go Micro's do: public and signed-in scopes, wildcards, priority, deny wins a
tie, and no matching rule denies (401 for no account, 403 for one)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_micro.auth import Access, Account, Resource, Rule
from asgi_micro.auth.rules import decide, ordered, verify
from asgi_micro.errors import AUTH_ID, Forbidden, Unauthorized

HELLO = Resource("service", "greeter", "Greeter.Hello")
ADA = Account("ada", scopes=("user",))
ROOT = Account("root", scopes=("admin", "user"))


def rule(
    id: str, scope: str, endpoint: str = "*", access: str = "grant", priority: int = 0
) -> Rule:
    return Rule(id, scope, Resource("service", "greeter", endpoint), Access(access), priority)


def allowed(rules: list[Rule], account: Account | None, resource: Resource = HELLO) -> bool:
    try:
        verify(ordered(rules), account, resource)
    except (Unauthorized, Forbidden):
        return False
    return True


def test_no_rule_denies_with_401_without_an_account_and_403_with_one() -> None:
    with pytest.raises(Unauthorized) as anonymous:
        verify([], None, HELLO, reason="token expired")
    assert anonymous.value.id == AUTH_ID
    assert "token expired" in anonymous.value.detail
    with pytest.raises(Forbidden) as signed_in:
        verify([], ADA, HELLO)
    assert "no rule grants it" in signed_in.value.detail


def test_public_scope_admits_everyone_and_signed_in_scope_only_accounts() -> None:
    assert allowed([rule("public", "")], None)
    assert allowed([rule("public", "")], ADA)
    assert not allowed([rule("any", "*")], None)
    assert allowed([rule("any", "*")], ADA)


def test_a_scope_admits_the_accounts_that_hold_it() -> None:
    rules = [rule("admins", "admin")]
    assert allowed(rules, ROOT)
    assert not allowed(rules, ADA)
    assert not allowed(rules, None)


def test_wildcards_in_resources() -> None:
    assert allowed([rule("all", "*", "Greeter.*")], ADA)
    assert not allowed([rule("other", "*", "Other.*")], ADA)
    everything = Rule("all", "*", Resource("*", "*", "*"))
    assert allowed([everything], ADA, Resource("topic", "billing", "user.created"))
    topic = Rule("t", "*", Resource("topic", "greeter", "user.*"))
    assert allowed([topic], ADA, Resource("topic", "greeter", "user.created"))
    assert not allowed([topic], ADA, Resource("service", "greeter", "user.created"))


def test_the_highest_priority_decides() -> None:
    rules = [rule("grant", "*", priority=1), rule("deny", "*", access="deny", priority=2)]
    assert not allowed(rules, ADA)
    rules = [rule("grant", "*", priority=3), rule("deny", "*", access="deny", priority=2)]
    assert allowed(rules, ADA)


def test_deny_wins_a_tie() -> None:
    rules = [rule("grant", "user"), rule("deny", "user", access="deny")]
    assert not allowed(rules, ADA)
    assert not allowed(list(reversed(rules)), ADA)


def test_a_rule_for_others_does_not_decide() -> None:
    """A deny for admins at a higher priority says nothing about a user."""
    rules = [rule("no-admins", "admin", access="deny", priority=5), rule("users", "user")]
    assert allowed(rules, ADA)
    assert not allowed(rules, ROOT)


def test_endpoint_names_are_exact_so_spelling_cannot_slip_past() -> None:
    rules = [rule("deny", "*", "GET /admin", access="deny", priority=1), rule("all", "*")]
    assert not allowed(rules, ADA, Resource("service", "greeter", "GET /admin"))
    # Another spelling is another endpoint (which the router would not find): not a loophole
    # of the rules, which match names, never paths.
    assert decide(ordered(rules), ADA, Resource("service", "greeter", "GET /admin"))
    assert decide(ordered(rules), ADA, Resource("service", "greeter", "GET /Admin")) == rules[1]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "*", "user", "admin"]),
            st.sampled_from(["grant", "deny"]),
            st.integers(-3, 3),
        ),
        max_size=8,
    )
)
def test_the_order_of_storage_never_changes_a_decision(specs: list[tuple[str, str, int]]) -> None:
    rules = [
        rule(f"r{i}", scope, access=access, priority=p)
        for i, (scope, access, p) in enumerate(specs)
    ]
    for account in (None, ADA, ROOT):
        assert allowed(rules, account) == allowed(list(reversed(rules)), account)


def test_rules_round_trip_and_reject_bad_input() -> None:
    original = Rule("r", "user", Resource("topic", "greeter", "user.*"), Access.DENY, 7)
    assert Rule.from_dict(original.to_dict()) == original
    with pytest.raises(ValueError, match="resource type"):
        Resource("url", "greeter", "/x")
    with pytest.raises(ValueError, match="rule id"):
        Rule("", "*", HELLO)
    with pytest.raises(ValueError, match="priority"):
        Rule("r", "*", HELLO, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Rule("r", "*", HELLO, access="maybe")  # type: ignore[arg-type]

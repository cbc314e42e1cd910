"""Resilience policies per target against real nodes in this process (memory registry): the
breaker opens, fails fast, half-opens and closes; the bulkhead bounds concurrency; the retry
budget caps retries; fallbacks; endpoint over service; a node answering 503 is ejected;
policies from configuration."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.client import Client, ClientCall
from asgi_micro.client.guards import CircuitBreaker
from asgi_micro.client.outliers import OutlierDetector, unavailable_answer
from asgi_micro.client.policies import Breaker, Bulkhead, Policies, Policy, RetryBudget
from asgi_micro.client.retry import Backoff
from asgi_micro.client.selector import RoundRobin
from asgi_micro.fastapi import CurrentService
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve, until

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "policies.py"


class Ask(BaseModel):
    fail_with: int = 0
    sleep: float = 0.0
    hold: bool = False


class Reply(BaseModel):
    node: str


@dataclass
class NodeState:
    """What a node saw, and how it answers: ``answer`` is a status every call fails with."""

    requests: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    answer: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def node_app(service: Service, state: NodeState) -> FastAPI:
    router = MicroRouter("Flaky")

    async def handle(req: Ask, me: Service) -> Reply:
        state.requests += 1
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            if req.hold:
                await state.gate.wait()
            if req.sleep:
                await asyncio.sleep(req.sleep)
            status = req.fail_with or state.answer
            if status:
                raise errors.error_for_status(status)("asked to fail")
            return Reply(node=me.id)
        finally:
            state.in_flight -= 1

    @router.rpc(idempotent=True)
    async def safe(req: Ask, me: CurrentService) -> Reply:
        return await handle(req, me)

    @router.rpc()
    async def unsafe(req: Ask, me: CurrentService) -> Reply:
        return await handle(req, me)

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def nodes(
    registry: MemoryRegistry, count: int = 1
) -> AsyncIterator[tuple[str, list[NodeState]]]:
    name = f"flaky-{uuid.uuid4().hex[:8]}"
    states = [NodeState() for _ in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        for state in states:
            service = Service(name, registry=registry, drain_grace=0.1)
            await stack.enter_async_context(serve(node_app(service, state)))
            await service.wait_registered()
        yield name, states


@contextlib.asynccontextmanager
async def client_of(registry: MemoryRegistry, **options: Any) -> AsyncIterator[Client]:
    client = Client(registry=registry, backoff=Backoff(initial=0.001), **options)
    try:
        yield client
    finally:
        await client.aclose()


def breaker_of(client: Client, service: str, endpoint: str) -> CircuitBreaker:
    breaker = client.guards.target(service, endpoint).breaker
    assert breaker is not None
    return breaker


async def test_the_breaker_opens_fails_fast_half_opens_and_closes() -> None:
    registry = MemoryRegistry()
    async with nodes(registry) as (name, [node]):
        breaker = Breaker(failure_rate=0.5, min_calls=4, window=60, open_for=2.0, probes=2)
        policies = Policies({name: Policy(breaker=breaker, retries=0)})
        async with client_of(registry, policies=policies) as client:
            call = client.call

            # Below the rate (1 in 4 failed, 3 in 7), then at it (4 of 8): open on the 8th call.
            for status in (503, 0, 0, 0, 500, 0, 504):
                with contextlib.suppress(errors.MicroError):
                    await call(name, "Flaky.Unsafe", {"fail_with": status})
            assert breaker_of(client, name, "Flaky.Unsafe").state == "closed"
            with pytest.raises(errors.ServiceUnavailable):
                await call(name, "Flaky.Unsafe", {"fail_with": 503})
            state = breaker_of(client, name, "Flaky.Unsafe")
            assert state.state == "open"

            # Open: fails fast, nothing reaches the node.
            reached = node.requests
            for _ in range(20):
                with pytest.raises(errors.ServiceUnavailable, match="open until") as raised:
                    await call(name, "Flaky.Unsafe", {})
                assert raised.value.id == errors.CLIENT_ID
            assert node.requests == reached
            assert "4 of 8 calls failed" in raised.value.detail

            # Half-open after open_for: two probes go through, a third call fails fast.
            await until(lambda: time.monotonic() > state.open_until, "the breaker's time up", 10)
            probes = [
                asyncio.create_task(call(name, "Flaky.Unsafe", {"hold": True})) for _ in range(2)
            ]
            await until(lambda: node.in_flight == 2, "both probes at the node", 10)
            with pytest.raises(errors.ServiceUnavailable, match="half-open"):
                await call(name, "Flaky.Unsafe", {})
            node.gate.set()
            await asyncio.gather(*probes)
            assert state.state == "closed"
            assert (await call(name, "Flaky.Unsafe", {}))["node"]

            # A failed probe opens it again at once.
            for _ in range(4):
                with pytest.raises(errors.ServiceUnavailable):
                    await call(name, "Flaky.Unsafe", {"fail_with": 503})
            assert state.state == "open"
            await until(lambda: time.monotonic() > state.open_until, "the breaker's time up", 10)
            reached = node.requests
            with pytest.raises(errors.ServiceUnavailable, match="asked to fail"):
                await call(name, "Flaky.Unsafe", {"fail_with": 503})
            assert node.requests == reached + 1
            with pytest.raises(errors.ServiceUnavailable, match=r"open until.*a probe call failed"):
                await call(name, "Flaky.Unsafe", {})
            assert node.requests == reached + 1


async def test_4xx_answers_do_not_open_the_breaker() -> None:
    registry = MemoryRegistry()
    async with nodes(registry) as (name, [node]):
        breaker = Breaker(failure_rate=0.5, min_calls=3, window=60, open_for=60)
        policies = Policies({name: Policy(breaker=breaker, retries=0)})
        async with client_of(registry, policies=policies) as client:
            for status in (404, 400, 409, 404, 403):  # the target is up, the requests wrong
                with pytest.raises(errors.MicroError) as raised:
                    await client.call(name, "Flaky.Unsafe", {"fail_with": status})
                assert raised.value.code == status
            for _ in range(2):
                with pytest.raises(errors.ServiceUnavailable, match="asked to fail"):
                    await client.call(name, "Flaky.Unsafe", {"fail_with": 503})
            assert breaker_of(client, name, "Flaky.Unsafe").state == "closed"  # 2 of 7
            assert node.requests == 7


async def test_a_breaker_is_kept_where_it_was_declared() -> None:
    registry = MemoryRegistry()
    async with nodes(registry) as (name, _):
        service_breaker = Breaker(failure_rate=1.0, min_calls=3, window=60, open_for=60)
        endpoint_breaker = Breaker(failure_rate=1.0, min_calls=100, window=60, open_for=60)
        policies = Policies(
            {
                name: Policy(breaker=service_breaker, retries=0),
                f"{name}/Flaky.Unsafe": Policy(breaker=endpoint_breaker),
            }
        )
        async with client_of(registry, policies=policies) as client:
            for _ in range(3):
                with pytest.raises(errors.ServiceUnavailable, match="asked to fail"):
                    await client.call(name, "Flaky.Safe", {"fail_with": 503})
            with pytest.raises(errors.ServiceUnavailable, match="open until"):
                await client.call(name, "Flaky.Safe", {})
            # Another endpoint without a breaker of its own shares the service's...
            with pytest.raises(errors.ServiceUnavailable, match="open until"):
                await client.call(name, "Flaky.Other", {})
            # ...and one with its own is not held by the service's.
            assert (await client.call(name, "Flaky.Unsafe", {}))["node"]


async def test_the_bulkhead_bounds_calls_in_flight_and_rejects_the_overflow() -> None:
    registry = MemoryRegistry()
    async with nodes(registry) as (name, [node]):
        policies = Policies({name: Policy(bulkhead=Bulkhead(max_concurrent=2, max_queue=1))})
        async with client_of(registry, policies=policies) as client:
            calls = [
                asyncio.create_task(client.call(name, "Flaky.Unsafe", {"hold": True}))
                for _ in range(5)
            ]
            await until(lambda: node.in_flight == 2, "two calls at the node", 10)
            await until(lambda: sum(call.done() for call in calls) == 2, "the overflow", 10)
            rejected = [call for call in calls if call.done()]
            for call in rejected:
                with pytest.raises(errors.ServiceUnavailable, match=r"bulkhead .* is full"):
                    call.result()
            await asyncio.sleep(0.2)  # the queued one waits, and does not reach the node
            assert node.requests == 2
            node.gate.set()
            replies = await asyncio.gather(*(call for call in calls if call not in rejected))
            assert len(replies) == 3
            assert node.most_in_flight == 2

            # A call queued past its deadline ends with Timeout and frees its place.
            node.gate.clear()
            held = [
                asyncio.create_task(client.call(name, "Flaky.Unsafe", {"hold": True}))
                for _ in range(2)
            ]
            await until(lambda: node.in_flight == 2, "two calls at the node", 10)
            with pytest.raises(errors.Timeout, match="bulkhead"):
                await client.call(name, "Flaky.Unsafe", {}, timeout=0.2)
            node.gate.set()
            await asyncio.gather(*held)
            bulkhead = client.guards.target(name, "Flaky.Unsafe").bulkhead
            assert bulkhead is not None
            assert bulkhead.waiting == 0


async def test_the_retry_budget_caps_retries() -> None:
    registry = MemoryRegistry()
    async with nodes(registry, 2) as (name, states):
        unbounded = Policies({name: Policy(retries=3)})
        budget = RetryBudget(ratio=0.2, min_per_second=0, window=60)
        bounded = Policies({name: Policy(retries=3, retry_budget=budget)})
        for policies, expected in ((unbounded, 10 * 4), (bounded, 10 + 2)):
            before = sum(state.requests for state in states)
            async with client_of(registry, policies=policies) as client:
                for _ in range(10):
                    with pytest.raises(errors.ServiceUnavailable):
                        await client.call(name, "Flaky.Safe", {"fail_with": 503})
            assert sum(state.requests for state in states) - before == expected

        # The minimum per second: retries allowed with no calls to earn them.
        floor = Policies({name: Policy(retries=3, retry_budget=RetryBudget(0, 0.05, 60))})
        before = sum(state.requests for state in states)
        async with client_of(registry, policies=floor) as client:
            for _ in range(5):
                with pytest.raises(errors.ServiceUnavailable):
                    await client.call(name, "Flaky.Safe", {"fail_with": 503})
        assert sum(state.requests for state in states) - before == 5 + 3


async def test_the_fallback_answers_for_an_unavailable_target() -> None:
    registry = MemoryRegistry()
    seen: list[tuple[str, int]] = []

    async def fallback(call: ClientCall, error: errors.MicroError) -> dict[str, str]:
        seen.append((call.endpoint, error.code))
        return {"node": "fallback"}

    async with nodes(registry) as (name, [node]):
        breaker = Breaker(failure_rate=0.5, min_calls=4, window=60, open_for=60)
        policies = Policies({name: Policy(fallback=fallback, breaker=breaker, retries=0)})
        async with client_of(registry, policies=policies) as client:
            # A handler's bug and a bad request are not hidden.
            with pytest.raises(errors.InternalServerError):
                await client.call(name, "Flaky.Unsafe", {"fail_with": 500})
            with pytest.raises(errors.BadRequest):
                await client.call(name, "Flaky.Unsafe", {"fail_with": 400})
            for status in (503, 504):
                reply = await client.call(name, "Flaky.Unsafe", {"fail_with": status})
                assert reply == {"node": "fallback"}
            assert breaker_of(client, name, "Flaky.Unsafe").state == "open"  # 3 of 4 failed
            reached = node.requests
            assert await client.call(name, "Flaky.Unsafe", {}) == {"node": "fallback"}
            assert node.requests == reached
            assert seen == [("Flaky.Unsafe", 503), ("Flaky.Unsafe", 504), ("Flaky.Unsafe", 503)]
        no_nodes = Policies({"nowhere": Policy(fallback=fallback)})
        async with client_of(registry, policies=no_nodes) as client:
            assert await client.call("nowhere", "X.Y", {}) == {"node": "fallback"}


async def test_an_endpoint_policy_beats_its_service_policy_field_by_field() -> None:
    registry = MemoryRegistry()

    def fallback(call: ClientCall, error: errors.MicroError) -> str:
        return f"fallback after {error.code}"

    async with nodes(registry) as (name, _):
        policies = Policies(
            {
                name: Policy(timeout=0.3, fallback=fallback),
                f"{name}/Flaky.Unsafe": Policy(timeout=3.0),
            },
            default=Policy(retries=0),
        )
        async with client_of(registry, policies=policies) as client:
            # The service's timeout, then its fallback, for an endpoint with no policy.
            assert await client.call(name, "Flaky.Safe", {"sleep": 1.0}) == "fallback after 408"
            # The endpoint's timeout.
            assert (await client.call(name, "Flaky.Unsafe", {"sleep": 1.0}))["node"]
            # The caller's own timeout beats both; the fallback is inherited.
            assert (
                await client.call(name, "Flaky.Unsafe", {"sleep": 1.0}, timeout=0.3)
                == "fallback after 408"
            )
            target = client.guards.target(name, "Flaky.Unsafe")
            assert (target.policy.timeout, target.policy.retries) == (3.0, 0)


async def test_a_node_answering_503_is_ejected_and_the_others_take_its_calls() -> None:
    registry = MemoryRegistry()
    async with nodes(registry, 2) as (name, [sick, healthy]):
        sick.answer = 503
        outliers = OutlierDetector(base_ejection=60, max_ejection=60)
        async with client_of(
            registry, strategy=RoundRobin(), retries=0, outliers=outliers
        ) as client:
            failures = 0
            for _ in range(20):
                try:
                    await client.call(name, "Flaky.Unsafe", {})
                except errors.ServiceUnavailable:
                    failures += 1
            assert (sick.requests, failures) == (3, 3)  # three in a row eject it
            assert healthy.requests == 17

        # A handler's 500 is the same on every node: no ejection.
        sick.answer, sick.requests, healthy.requests = 500, 0, 0
        async with client_of(registry, strategy=RoundRobin(), retries=0) as client:
            for _ in range(20):
                with contextlib.suppress(errors.InternalServerError):
                    await client.call(name, "Flaky.Unsafe", {})
            assert sick.requests == healthy.requests == 10


def test_whose_5xx_ejects_a_node() -> None:
    assert unavailable_answer(errors.ServiceUnavailable(id="greeter"), "greeter")
    assert unavailable_answer(errors.BadGateway(id=""), "greeter")  # a proxy in front
    assert unavailable_answer(errors.GatewayTimeout(id=errors.SERVER_ID), "greeter")
    assert not unavailable_answer(errors.InternalServerError(id="greeter"), "greeter")
    # Relayed from the node's own client or another service: its dependency failed.
    assert not unavailable_answer(errors.ServiceUnavailable(id=errors.CLIENT_ID), "greeter")
    assert not unavailable_answer(errors.ServiceUnavailable(id="inventory"), "greeter")


def config_fallback(call: ClientCall, error: errors.MicroError) -> dict[str, str]:
    return {"node": f"config fallback for {call.service}"}


async def test_policies_declared_in_configuration_are_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = MemoryRegistry()
    async with nodes(registry) as (name, [node]):
        declared = {
            "*": {"retries": 0},
            name: {
                "breaker": {"failure_rate": 1.0, "min_calls": 2, "window": 60, "open_for": 60},
                "fallback": "tests.client.test_policies:config_fallback",
            },
            f"{name}/Flaky.Safe": {"timeout": 0.25, "bulkhead": {"max_concurrent": 3}},
        }
        toml = tmp_path / "policies.toml"
        toml.write_text(
            f'["*"]\nretries = 0\n\n["{name}/Flaky.Safe"]\ntimeout = 0.25\n'
            f"retry_budget = {{ ratio = 0.1, min_per_second = 1, window = 5 }}\n"
        )
        from_toml = Policies.load(str(toml))
        assert from_toml.default == Policy(retries=0)
        assert from_toml.targets[f"{name}/Flaky.Safe"].retry_budget == RetryBudget(0.1, 1, 5)
        json_file = tmp_path / "policies.json"
        json_file.write_text(json.dumps(declared))
        assert Policies.load(str(json_file)).targets.keys() == {name, f"{name}/Flaky.Safe"}

        monkeypatch.setenv("MICRO_POLICIES", json.dumps(declared))
        caller = Service(f"caller-{uuid.uuid4().hex[:8]}", registry=registry)
        client = caller.client
        try:
            assert client.policies.default == Policy(retries=0)
            target = client.guards.target(name, "Flaky.Safe")
            assert target.policy.bulkhead == Bulkhead(max_concurrent=3)
            assert target.policy.timeout == 0.25
            for _ in range(2):
                reply = await client.call(name, "Flaky.Safe", {"fail_with": 503})
                assert reply == {"node": f"config fallback for {name}"}
            reached = node.requests
            assert (await client.call(name, "Flaky.Unsafe", {}))["node"].startswith("config")
            assert node.requests == reached  # the breaker from the config is open
        finally:
            await client.aclose()


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy fields: retrys"):
        Policies.from_dict({"greeter": {"retrys": 2}})
    with pytest.raises(ValueError, match="failure_rate"):
        Breaker(failure_rate=0)
    with pytest.raises(ValueError, match="max_concurrent"):
        Bulkhead(max_concurrent=0)
    with pytest.raises(ValueError, match="module:function"):
        Policies.from_dict({"greeter": {"fallback": "no_colon"}})
    assert not Policies()
    assert Policies(default=Policy(timeout=1.0))


async def test_the_docs_example_holds_calls_to_its_policies() -> None:
    spec = importlib.util.spec_from_file_location("docs_example_policies", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    registry = MemoryRegistry()
    caller = Service(f"caller-{uuid.uuid4().hex[:8]}", registry=registry)
    example.configure(caller)
    try:
        # No inventory node at all: the fallback answers.
        reply = await caller.client.call("inventory", "Inventory.List", {})
        assert reply == {"items": [], "stale": True}
        reserve = caller.client.guards.target("inventory", "Inventory.Reserve").policy
        assert (reserve.retries, reserve.timeout, reserve.fallback) == (
            0,
            2.0,
            example.cached_stock,
        )
        assert caller.client.guards.target("billing", "Billing.Charge").policy.timeout == 3.0
    finally:
        await caller.client.aclose()

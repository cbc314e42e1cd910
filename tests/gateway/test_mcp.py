"""``asgi-micro mcp``: the real console script as an MCP server, over stdio and Streamable HTTP,
in front of the example greeter (a process of its own) and services this test starts and stops,
talked to by the ``mcp`` SDK's own client, in both protocol eras: handshake (``mode="legacy"``,
``notifications/tools/list_changed``) and 2026-07-28 (``subscriptions/listen``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import orjson
import pytest
from fastapi import FastAPI
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ToolsListChanged
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.auth import Resource, Rule
from asgi_micro.auth import from_url as auth_from_url
from asgi_micro.gateway.mcp import TOOL_NAME_LENGTH, tool_name, tools_of
from asgi_micro.plugins import Parts
from asgi_micro.registry import Endpoint
from asgi_micro.store import from_url as store_from_url
from example_apps.greeter.messages import HelloRequest, HelloResponse
from tests.helpers import eventually, free_port, serve
from tests.processes import ASGI_MICRO, GREETER, ROOT, Server, environment

HELLO = "greeter__Greeter_Hello"
GREETINGS = "greeter__Greeter_Greetings"


# -- tools from endpoints, no processes ---------------------------------------------------------


def test_tool_names_are_what_model_apis_accept() -> None:
    assert tool_name("greeter", "Greeter.Hello") == HELLO
    assert tool_name("billing.eu-1", "Invoices.Send") == "billing_eu-1__Invoices_Send"
    long_a = tool_name("s" * 80, "Router.A")
    long_b = tool_name("s" * 80, "Router.B")
    assert len(long_a) == len(long_b) == TOOL_NAME_LENGTH
    assert long_a != long_b  # the digest of the whole tells them apart


def test_only_rpc_endpoints_that_take_one_request_become_tools() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    endpoints = {
        "svc": {
            "A.Unary": Endpoint("A.Unary", schema, schema, {"kind": "rpc", "description": "Do."}),
            "A.Server": Endpoint("A.Server", schema, schema, {"kind": "rpc", "stream": "server"}),
            "A.Bidi": Endpoint("A.Bidi", schema, schema, {"kind": "rpc", "stream": "bidi"}),
            "GET /": Endpoint("GET /", None, schema, {"kind": "http", "method": "GET"}),
        }
    }
    tools = tools_of(endpoints)
    assert set(tools) == {"svc__A_Unary", "svc__A_Server"}
    unary, server = tools["svc__A_Unary"], tools["svc__A_Server"]
    assert (unary.service, unary.endpoint, unary.streams) == ("svc", "A.Unary", False)
    assert unary.tool.description == "Do."
    assert unary.tool.input_schema == schema
    assert unary.tool.output_schema == schema
    assert server.streams
    assert server.tool.output_schema is None  # replies come as a list


# -- the gateway in a process of its own -------------------------------------------------------


class ShoutRequest(BaseModel):
    words: str


class ShoutReply(BaseModel):
    loud: str


def shouter(name: str, **options: Any) -> tuple[Service, FastAPI]:
    """A second service, ``Shout.Loud``, in this process and the test's mDNS domain."""
    service = Service(name, registry=os.environ["MICRO_REGISTRY"], broker="memory://", **options)
    router = MicroRouter("Shout")

    @router.rpc()
    async def loud(req: ShoutRequest) -> ShoutReply:
        """Say the words louder."""
        return ShoutReply(loud=req.words.upper())

    @router.rpc()
    async def secret(req: ShoutRequest) -> ShoutReply:
        """Whisper the words."""
        return ShoutReply(loud=req.words.lower())

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    return service, app


@contextlib.asynccontextmanager
async def running(service: Service, app: FastAPI) -> AsyncIterator[str]:
    async with serve(app) as address:
        await asyncio.wait_for(service.wait_registered(), 30)
        yield address


@contextlib.asynccontextmanager
async def greeter() -> AsyncIterator[Server]:
    server = Server(GREETER, ASGI_MICRO, ())
    try:
        await server.start()
        await server.ready()
        yield server
    finally:
        await server.close()


def over_stdio(env: Mapping[str, str] | None = None, **options: Any) -> Client:
    parameters = StdioServerParameters(
        command=ASGI_MICRO[0],
        args=["mcp", "--log-level", "info"],
        env={**environment(), **(env or {})},
        cwd=ROOT,
    )
    return Client(parameters, read_timeout_seconds=60, **options)


@contextlib.asynccontextmanager
async def gateway_over_http(env: Mapping[str, str] | None = None) -> AsyncIterator[str]:
    """``asgi-micro mcp --transport http`` on a free port: its endpoint's URL."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *ASGI_MICRO, "mcp", "--transport", "http", "--port", str(port), "--log-level", "info",
        cwd=ROOT,
        env={**environment(), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx.AsyncClient(trust_env=False) as http:

            async def listening() -> bool:
                assert process.returncode is None, "the gateway exited early"
                try:
                    await http.get(url, timeout=1.0)
                except httpx.TransportError:
                    return False
                return True

            await eventually(listening, timeout=30, interval=0.1, message="the gateway listens")
        yield url
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


@contextlib.asynccontextmanager
async def over_http(url: str, token: str | None = None, **options: Any) -> AsyncIterator[Client]:
    """An agent on Streamable HTTP, with ``token`` in its ``Authorization`` header."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, trust_env=False, timeout=60.0) as http,
        Client(
            streamable_http_client(url, http_client=http), read_timeout_seconds=60, **options
        ) as client,
    ):
        yield client


async def tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


async def listed(client: Client, *names: str) -> dict[str, types.Tool]:
    """The tools, once ``names`` are among them (the gateway may not have heard yet)."""

    async def found() -> dict[str, types.Tool] | None:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        return tools if set(names) <= tools.keys() else None

    result = await eventually(found, timeout=30, interval=0.3, message=f"tools {names}")
    assert result is not None
    return result


def reply_of(result: types.CallToolResult) -> Any:
    assert not result.is_error, result
    [content] = result.content
    assert isinstance(content, types.TextContent)
    return orjson.loads(content.text)


def error_of(result: types.CallToolResult) -> dict[str, Any]:
    assert result.is_error, result
    [content] = result.content
    assert isinstance(content, types.TextContent)
    error: dict[str, Any] = orjson.loads(content.text)
    return error


async def check_greeter_tools(client: Client) -> None:
    tools = await listed(client, HELLO, GREETINGS)
    hello = tools[HELLO]
    assert hello.description == "Greet one person."
    assert hello.input_schema == HelloRequest.model_json_schema()
    assert hello.output_schema == HelloResponse.model_json_schema()
    assert "greeter__Greeter_Chat" not in tools  # a stream of requests is no tool
    assert "greeter__GET__" not in tools  # nor a plain route

    result = await client.call_tool(HELLO, {"name": "Ada"})
    assert reply_of(result) == {"message": "Hello Ada"}
    assert result.structured_content == {"message": "Hello Ada"}

    streamed = await client.call_tool(GREETINGS, {"name": "Ada", "count": 2})
    assert reply_of(streamed) == [{"message": "Hello Ada (1)"}, {"message": "Hello Ada (2)"}]

    invalid = await client.call_tool(HELLO, {"name": 42})
    assert error_of(invalid)["code"] == 400  # the service's own answer, in Go Micro's shape


@pytest.mark.slow
async def test_stdio_lists_calls_and_follows_services_that_come_and_go() -> None:
    name = f"shout-{uuid.uuid4().hex[:8]}"
    loud = tool_name(name, "Shout.Loud")
    async with greeter(), over_stdio() as client:
        await check_greeter_tools(client)

        async with client.listen(tools_list_changed=True) as changes:
            service, app = shouter(name)
            async with running(service, app):
                event = await asyncio.wait_for(anext(changes), 30)
                assert isinstance(event, ToolsListChanged)
                tools = await listed(client, loud)
                assert tools[loud].description == "Say the words louder."
                assert reply_of(await client.call_tool(loud, {"words": "hi"})) == {"loud": "HI"}
            await asyncio.wait_for(anext(changes), 30)
            assert loud not in await tool_names(client)
            assert HELLO in await tool_names(client)


@pytest.mark.slow
async def test_streamable_http_lists_calls_and_tells_a_legacy_session_of_changes() -> None:
    name = f"shout-{uuid.uuid4().hex[:8]}"
    loud = tool_name(name, "Shout.Loud")
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with greeter(), gateway_over_http() as url:
        async with over_http(url) as modern:
            await check_greeter_tools(modern)
        async with over_http(url, mode="legacy", message_handler=on_message) as legacy:
            await check_greeter_tools(legacy)
            service, app = shouter(name)
            async with running(service, app):
                await asyncio.wait_for(changed.wait(), 30)
                changed.clear()
                await listed(legacy, loud)
                reply = await legacy.call_tool(loud, {"words": "hey"})
                assert reply_of(reply) == {"loud": "HEY"}
            await asyncio.wait_for(changed.wait(), 30)
            assert loud not in await tool_names(legacy)


@pytest.mark.slow
async def test_with_auth_on_a_token_sees_and_calls_only_what_its_rules_grant(
    tmp_path: Path,
) -> None:
    name = f"vault-{uuid.uuid4().hex[:8]}"
    loud, secret = tool_name(name, "Shout.Loud"), tool_name(name, "Shout.Secret")
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    auth_url = f"jwt://?keys={tmp_path / 'keys.json'}"
    store = store_from_url(store_url)
    async with store, auth_from_url(auth_url, parts=Parts(service="test", store=store)) as auth:
        made = await auth.generate("ada", scopes=["reader"])
        await auth.grant(Rule("readers", "reader", Resource("service", name, "Shout.Loud")))
        tokens = await auth.token(id="ada", secret=made.secret)
    ada = tokens.access_token

    service, app = shouter(name, store=store_url, auth=auth_url)
    settings = {"MICRO_AUTH": auth_url, "MICRO_STORE": store_url}
    async with running(service, app), gateway_over_http(settings) as url:
        async with over_http(url, ada) as reader, over_http(url) as stranger:
            tools = await listed(reader, loud)
            assert secret not in tools  # the rule grants ada Shout.Loud alone
            assert reply_of(await reader.call_tool(loud, {"words": "hi"})) == {"loud": "HI"}
            refused = error_of(await reader.call_tool(secret, {"words": "hi"}))
            assert (refused["code"], refused["id"]) == (403, "asgi_micro.auth")

            assert {loud, secret}.isdisjoint(await tool_names(stranger))
            unknown = error_of(await stranger.call_tool(loud, {"words": "hi"}))
            assert unknown["code"] == 401

        # On stdio the token comes from the environment; the service checks it again.
        async with over_stdio(settings | {"MICRO_MCP_TOKEN": ada}) as agent:
            await listed(agent, loud)
            assert reply_of(await agent.call_tool(loud, {"words": "yo"})) == {"loud": "YO"}

"""``asgi-micro publish`` and ``asgi-micro subscribe``: what they print, their argument errors,
and one shell publishing to another through a real broker (NATS JetStream, a stream of the
test's own) in processes of their own, Ctrl-C included."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from asgi_micro.broker import Event
from asgi_micro.broker.memory import MemoryBroker
from asgi_micro.cli import app
from asgi_micro.cli.events import event_json, listen, show_event
from tests.broker.backend_nats import HOST, PORT, delete_stream, namespace
from tests.helpers import require_server
from tests.processes import ASGI_MICRO, ROOT, asgi_micro, environment

runner = CliRunner()


@pytest.fixture(autouse=True)
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded broker (the default) keeps its outbox under the working directory."""
    monkeypatch.chdir(tmp_path)


def invoke(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def event(body: bytes, content_type: str = "application/json", deliveries: int = 1) -> Event:
    headers = {"ce-id": "e1", "ce-type": "user.created", "content-type": content_type}
    return Event("user.created", "e1", headers, body, deliveries)


# -- what an event looks like -----------------------------------------------------------------


def test_an_event_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    headers = {
        "ce-id": "e1",
        "ce-source": "users",
        "content-type": "application/json",
        "micro-tenant": "acme",
    }
    show_event(Event("user.created", "e1", headers, b'{"name":"Ada"}', 2))
    assert capsys.readouterr().out == (
        "event e1 on user.created, delivery 2\n"
        "  ce-id: e1\n"
        "  ce-source: users\n"
        "  content-type: application/json\n"
        "  micro-tenant: acme\n"
        '{\n  "name": "Ada"\n}\n\n'
    )


@pytest.mark.parametrize(
    ("body", "content_type", "value", "encoding"),
    [
        (b'{"name":"Ada"}', "application/json", {"name": "Ada"}, "json"),
        (b"[1,2]", "application/cloudevents+json; charset=utf-8", [1, 2], "json"),
        (b"{not json", "application/json", "{not json", "utf-8"),  # shown as it came
        (b"hello", "text/plain", "hello", "utf-8"),
        (
            b"\x82\xa1a\x01",
            "application/msgpack",
            base64.b64encode(b"\x82\xa1a\x01").decode(),
            "base64",
        ),
    ],
)
def test_an_event_as_json(body: bytes, content_type: str, value: Any, encoding: str) -> None:
    found = event_json(event(body, content_type, deliveries=3))
    assert found == {
        "topic": "user.created",
        "id": "e1",
        "deliveries": 3,
        "headers": {"ce-id": "e1", "ce-type": "user.created", "content-type": content_type},
        "body": value,
        "encoding": encoding,
    }


def test_a_binary_body_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    show_event(event(b"\xff\x00", "application/octet-stream"))
    assert capsys.readouterr().out.endswith("<2 bytes, base64> /wA=\n\n")


# -- listening, in this process -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def listening(
    url: str, topic: str, **options: Any
) -> AsyncIterator[tuple[asyncio.Task[None], list[Event]]]:
    shown: list[Event] = []
    ready = asyncio.Event()
    async with MemoryBroker(url) as broker:
        task = asyncio.create_task(listen(broker, topic, shown.append, ready=ready.set, **options))
        await asyncio.wait_for(ready.wait(), 5)
        try:
            yield task, shown
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_listen_shows_each_event_until_count() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    async with MemoryBroker(url, source="users") as publisher:
        async with listening(url, "user.created", count=2) as (task, shown):
            first = await publisher.publish(
                "user.created", b'{"name":"Ada"}', headers={"micro-tenant": "acme"}
            )
            second = await publisher.publish("user.created", b"\x00", content_type="x/bin")
            await asyncio.wait_for(task, 5)  # returns by itself after two
        assert [e.id for e in shown] == [first, second]
        assert shown[0].headers["micro-tenant"] == "acme"
        assert shown[0].source == "users"


async def test_listen_runs_until_cancelled() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    async with MemoryBroker(url) as publisher, listening(url, "t") as (task, shown):
        for number in range(3):
            await publisher.publish("t", str(number).encode())
        for _ in range(100):
            if len(shown) == 3:
                break
            await asyncio.sleep(0.01)
        assert [e.body for e in shown] == [b"0", b"1", b"2"]
        assert not task.done()


async def test_a_queue_member_that_stops_at_count_leaves_the_rest_to_the_group() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    async with MemoryBroker(url) as publisher:
        async with listening(url, "jobs", queue="workers", count=1) as (task, first):
            for number in range(3):
                await publisher.publish("jobs", str(number).encode())
            await asyncio.wait_for(task, 5)
        async with listening(url, "jobs", queue="workers", count=2) as (task, rest):
            await asyncio.wait_for(task, 5)
    assert [e.body for e in first] == [b"0"]
    assert sorted(e.body for e in rest) == [b"1", b"2"]  # none lost, none printed twice


# -- arguments ------------------------------------------------------------------------------------


def test_publish_on_the_in_process_broker_prints_an_id_and_says_it_reaches_nobody() -> None:
    code, stdout, stderr = invoke(
        "publish", "user.created", '{"name": "Ada"}', "-m", "a=b", "--broker", "memory://"
    )
    assert code == 0
    assert len(stdout.strip()) == 32
    int(stdout, 16)
    assert "memory:// is a broker inside this command" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish", "user.created", "{not json"], "not valid JSON"),
        (["publish", "user created", "{}"], "a topic is dot-separated words"),
        (["publish", "t", "{}", "--content-type", "text/plain"], "no codec writes 'text/plain'"),
        (
            ["publish", "t", '{"a": 1}', "--content-type", "application/protobuf"],
            "without its message type",
        ),
        (["publish", "t", "{}", "-m", "novalue"], "expected key=value"),
        (["publish", "t", "{}", "--broker", "etcetera://"], "unknown broker scheme 'etcetera'"),
        (["publish", "t", "{}", "--timeout", "0"], "--timeout"),
        (["subscribe", "t", "--count", "0"], "--count"),
        (["subscribe", "t", "--broker", "etcetera://"], "unknown broker scheme 'etcetera'"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    code, stdout, stderr = invoke(*args)
    assert (code, stdout) == (2, "")
    assert message in " ".join(stderr.split())  # rich boxes wrap long lines


def test_the_broker_comes_from_micro_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_BROKER", "etcetera://somewhere")
    code, _, stderr = invoke("publish", "t", "{}")
    assert code == 2
    assert "etcetera://somewhere" in stderr


# -- from one shell to another, through NATS ----------------------------------------------------


@contextlib.asynccontextmanager
async def nats_namespace() -> AsyncIterator[str]:
    require_server("NATS", HOST, PORT)
    url = namespace()
    try:
        yield url
    finally:
        await delete_stream(url)


async def started_subscriber(*args: str) -> asyncio.subprocess.Process:
    """``asgi-micro subscribe ARGS`` in a process of its own, once it listens."""
    process = await asyncio.create_subprocess_exec(
        *ASGI_MICRO,
        "subscribe",
        *args,
        cwd=ROOT,
        env=environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
    except BaseException:
        process.kill()
        await process.communicate()
        raise
    assert line.startswith(b"listening on "), line
    return process


async def finished(process: asyncio.subprocess.Process, timeout: float = 30) -> tuple[str, str]:
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    return stdout.decode(), stderr.decode()


@pytest.mark.slow
async def test_an_event_from_one_shell_reaches_a_subscriber_in_another() -> None:
    async with nats_namespace() as url:
        subscriber = await started_subscriber(
            "user.created", "--broker", url, "--queue", "greeter", "--count", "2", "--json"
        )
        first = await asgi_micro(
            "publish",
            "user.created",
            '{"name": "Ada"}',
            "--broker",
            url,
            "-m",
            "tenant=acme",
            "--timeout",
            "60",
        )
        assert first.returncode == 0, first
        second = await asgi_micro(
            "publish",
            "user.created",
            '{"name": "Bob"}',
            "--content-type",
            "application/msgpack",
            env={"MICRO_BROKER": url},
        )
        assert second.returncode == 0, second
        stdout, stderr = await finished(subscriber)
    assert subscriber.returncode == 0, stderr
    events = [orjson.loads(line) for line in stdout.splitlines()]
    assert [e["id"] for e in events] == [first.stdout.strip(), second.stdout.strip()]
    ada, bob = events
    assert (ada["body"], ada["encoding"], ada["deliveries"]) == ({"name": "Ada"}, "json", 1)
    assert ada["headers"]["micro-tenant"] == "acme"
    assert ada["headers"]["ce-source"] == "asgi-micro-cli"
    deadline = int(ada["headers"]["micro-deadline"]) / 1000
    assert time.time() + 30 < deadline < time.time() + 61
    assert bob["headers"]["content-type"] == "application/msgpack"
    assert bob["encoding"] == "base64"
    assert "secret" not in stderr


@pytest.mark.slow
async def test_ctrl_c_stops_a_subscriber_cleanly() -> None:
    async with nats_namespace() as url:
        subscriber = await started_subscriber("jobs", "--broker", url)
        published = await asgi_micro("publish", "jobs", "[1]", "--broker", url)
        assert published.returncode == 0, published
        assert subscriber.stdout is not None
        header = await asyncio.wait_for(subscriber.stdout.readline(), 30)
        assert header.decode() == f"event {published.stdout.strip()} on jobs, delivery 1\n"
        subscriber.send_signal(signal.SIGINT)
        _, stderr = await finished(subscriber)
    assert subscriber.returncode == 0
    assert "stopped after 1 event(s)" in stderr

"""``asgi-micro auth`` (accounts, rules, tokens, keys), ``call --token`` and ``describe``'s
registration column: the real console script in processes of its own, in a directory of the
test's own with a SQLite store and a key ring there, against a service with auth on that shares
both."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.auth import Access, KeyRing, Resource, Rule
from asgi_micro.auth.jwt import JWTAuth
from asgi_micro.auth.rules import ordered
from asgi_micro.fastapi import Context
from asgi_micro.registry import Node
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.store import from_url as store_from_url
from tests.helpers import free_port, mdns, serve
from tests.processes import ASGI_MICRO, CommandResult, environment, listing

WIDE = {"COLUMNS": "250"}  # a terminal where no table cell wraps


@dataclass
class Shell:
    """A shell in ``home``, where ``MICRO_STORE`` and ``MICRO_AUTH_KEYS`` name the test's."""

    home: Path

    @property
    def store(self) -> str:
        return f"sqlite:///{self.home / 'store.db'}"

    @property
    def keys(self) -> Path:
        return self.home / "auth" / "keys.json"

    async def __call__(
        self, *args: str, input: str | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        """``asgi-micro ARGS`` to the end, ``input`` on its stdin. (``tests.processes.asgi_micro``
        runs at the root of the repository and gives no stdin.)"""
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *ASGI_MICRO,
            *args,
            cwd=self.home,
            env={
                **environment(),
                "MICRO_STORE": self.store,
                "MICRO_AUTH_KEYS": str(self.keys),
                **(env or {}),
            },
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            data = None if input is None else input.encode()
            stdout, stderr = await asyncio.wait_for(process.communicate(data), 60.0)
        finally:
            if process.returncode is None:
                process.kill()
                await process.communicate()
        assert process.returncode is not None
        return CommandResult(
            args, process.returncode, stdout.decode(), stderr.decode(), started, time.monotonic()
        )

    def verifier(self) -> JWTAuth:
        """What a service on the same ring checks tokens with."""
        return JWTAuth(keys=KeyRing(self.keys, create=False))


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    home = tmp_path / "home"
    home.mkdir()
    return Shell(home)


def one_line_error(result: CommandResult, code: int, message: str) -> None:
    assert result.returncode == code, result
    assert result.stdout == "", result
    assert len(result.stderr.strip().splitlines()) == 1, result
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result


def secret_of(result: CommandResult) -> str:
    assert result.returncode == 0, result
    [line] = [line for line in result.stdout.splitlines() if line.startswith("secret: ")]
    return line.removeprefix("secret: ")


def access_token_of(result: CommandResult) -> str:
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    [at] = [number for number, line in enumerate(lines) if line.startswith("access token")]
    return lines[at + 1]


def table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


# -- accounts and tokens ----------------------------------------------------------------------


async def test_an_account_shows_its_secret_once_and_gets_tokens_that_verify(shell: Shell) -> None:
    created = await shell(
        "auth", "account", "create", "ada", "--scope", "admin", "--scope", "user", "-m", "team=ml"
    )
    secret = secret_of(created)
    assert "account ada (user), scopes: admin, user, metadata: team=ml" in created.stdout
    assert "only time the secret is shown" in created.stdout
    # Only a hash of it is kept, in the store of MICRO_STORE.
    stored = b"".join(path.read_bytes() for path in shell.home.glob("store.db*"))
    assert b"accounts/ada" in stored
    assert secret.encode() not in stored

    listed, listed_json, tokens, tokens_json, wrong, unknown = await asyncio.gather(
        shell("auth", "account", "list", env=WIDE),
        shell("auth", "account", "list", "--json"),
        shell("auth", "token", "--id", "ada", "--secret", "-", input=f"{secret}\n"),
        shell("auth", "token", "--id", "ada", "--secret", secret, "--json"),
        shell("auth", "token", "--id", "ada", "--secret", "-", input="not-the-secret\n"),
        shell("auth", "token", "--id", "nobody", "--secret", secret),
    )
    assert listed.returncode == 0, listed
    [row] = table_rows(listed.stdout)
    assert row[:4] == ["ada", "user", "admin, user", "team=ml"]
    assert row[4].endswith("Z")
    assert listed_json.returncode == 0, listed_json
    [account] = listed_json.json()
    assert set(account) == {"id", "type", "scopes", "metadata", "issuer", "created"}
    for shown in (listed, listed_json):
        assert secret not in shown.stdout + shown.stderr

    # The tokens verify on a service that shares the ring; the secret itself is never printed.
    verifier = shell.verifier()
    access = access_token_of(tokens)
    assert "refresh token, expires" in tokens.stdout
    assert secret not in tokens.stdout + tokens.stderr
    seen = verifier.verify_token(access)
    assert (seen.id, seen.type, seen.scopes, seen.metadata) == (
        "ada",
        "user",
        ("admin", "user"),
        {"team": "ml"},
    )
    assert tokens_json.returncode == 0, tokens_json
    issued = tokens_json.json()
    assert issued["token_type"] == "Bearer"
    assert 0 < issued["expiry"] - time.time() <= 900
    assert verifier.verify_token(issued["access_token"]).id == "ada"
    # The ring was made on first use, private to its owner.
    assert private(shell.keys)
    assert stat.S_IMODE(shell.keys.parent.stat().st_mode) == 0o700

    one_line_error(wrong, 1, "wrong account id or secret")
    assert "not-the-secret" not in wrong.stderr
    one_line_error(unknown, 1, "wrong account id or secret")

    # A refresh token is good once, and the error names no token.
    refreshed = await shell(
        "auth", "token", "--refresh-token", "-", "--json", input=issued["refresh_token"]
    )
    assert refreshed.returncode == 0, refreshed
    assert verifier.verify_token(refreshed.json()["access_token"]).id == "ada"
    again = await shell("auth", "token", "--refresh-token", issued["refresh_token"])
    one_line_error(again, 1, "revoked or used")
    assert issued["refresh_token"] not in again.stderr

    deleted = await shell("auth", "account", "delete", "ada")
    assert deleted.returncode == 0, deleted
    assert "deleted account 'ada'" in deleted.stdout
    after = await asyncio.gather(
        shell("auth", "account", "delete", "ada"),
        shell("auth", "account", "list"),
        shell("auth", "token", "--refresh-token", refreshed.json()["refresh_token"]),
    )
    one_line_error(after[0], 1, "no account 'ada'")
    assert (after[1].returncode, after[1].stdout) == (0, "no accounts\n")
    one_line_error(after[2], 1, "account of this refresh token was deleted")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["account", "create", "ada lovelace"], 2, "an account id is 1 to 255 letters"),
        (["account", "create", "ada", "-m", "team"], 2, "expected key=value, got 'team'"),
        (["token", "--id", "ada"], 2, "give --id and --secret"),
        (["token", "--refresh-token", "x", "--id", "ada"], 2, "not both"),
        (["token", "--id", "ada", "--secret", "-"], 2, "the secret is empty"),
        (["rule", "create", "r", "--scope", "x", "--resource", "service:greeter"], 2, "TYPE:NAME"),
        (["rule", "create", "r", "--scope", "x", "--resource", "queue:a:b"], 2, "resource type"),
        (["rule", "delete", "nope"], 1, "no rule 'nope'"),
        (["account", "list", "--auth", "bogus://"], 2, "unknown auth scheme 'bogus'"),
        (["account", "create", "ada", "--auth", "noop://"], 1, "auth is off (noop://)"),
        (["keys", "show"], 1, "no key ring at"),
        (["keys", "rotate", "--auth", "noop://"], 1, "has no key ring"),
    ],
)
async def test_errors_are_one_line(shell: Shell, args: list[str], code: int, message: str) -> None:
    one_line_error(await shell("auth", *args, input=""), code, message)
    assert not shell.keys.exists()  # none of these makes a key ring


# -- rules ------------------------------------------------------------------------------------


async def test_rules_are_listed_in_the_order_the_guard_applies_them(shell: Shell) -> None:
    specs = [
        ("a-open", "*", "service:billing:GET /items/{item_id}", "grant", "10"),
        ("b-block", "", "service:billing:Billing.Refund", "deny", "10"),
        ("c-low", "user", "service:billing:*", "grant", "0"),
        ("d-high", "admin", "topic:billing:orders:created", "grant", "20"),
    ]
    created = await asyncio.gather(
        *(
            shell(
                "auth",
                "rule",
                "create",
                id,
                "--scope",
                scope,
                "--resource",
                resource,
                "--access",
                access,
                "--priority",
                priority,
            )
            for id, scope, resource, access, priority in specs
        )
    )
    for result in created:
        assert result.returncode == 0, result
    assert "created rule 'b-block': deny (everyone) service:billing:Billing.Refund" in (
        created[1].stdout
    )

    listed, listed_json = await asyncio.gather(
        shell("auth", "rule", "list", env=WIDE), shell("auth", "rule", "list", "--json")
    )
    # Highest priority first; at a tie the deny before the grant.
    expected = ["d-high", "b-block", "a-open", "c-low"]
    assert [row[0] for row in table_rows(listed.stdout)] == expected
    assert table_rows(listed.stdout)[0] == [
        "d-high",
        "admin",
        "topic:billing:orders:created",
        "grant",
        "20",
    ]
    rules = [Rule.from_dict(data) for data in listed_json.json()]
    assert [rule.id for rule in rules] == expected == [rule.id for rule in ordered(rules)]
    assert rules[0].resource == Resource("topic", "billing", "orders:created")
    assert rules[2].resource == Resource("service", "billing", "GET /items/{item_id}")

    # What a service reads from the same store.
    async with store_from_url(shell.store) as store, JWTAuth(store=store) as auth:
        assert ordered(await auth.rules()) == [
            Rule("d-high", "admin", Resource("topic", "billing", "orders:created"), priority=20),
            Rule("b-block", "", Resource("service", "billing", "Billing.Refund"), Access.DENY, 10),
            Rule(
                "a-open", "*", Resource("service", "billing", "GET /items/{item_id}"), priority=10
            ),
            Rule("c-low", "user", Resource("service", "billing", "*")),
        ]

    deleted = await shell("auth", "rule", "delete", "b-block")
    assert (deleted.returncode, deleted.stdout) == (0, "deleted rule 'b-block'\n")
    remaining = await shell("auth", "rule", "list", "--json")
    assert [rule["id"] for rule in remaining.json()] == ["d-high", "a-open", "c-low"]


# -- keys -------------------------------------------------------------------------------------


async def test_rotating_the_keys_keeps_the_tokens_signed_before(shell: Shell) -> None:
    secret = secret_of(await shell("auth", "account", "create", "ada"))
    before = access_token_of(await shell("auth", "token", "--id", "ada", "--secret", secret))
    verifier = shell.verifier()  # a service that read the ring before the rotation
    assert verifier.verify_token(before).id == "ada"
    [old] = [key["kid"] for key in (await shell("auth", "keys", "show")).json()["keys"]]

    rotated = await shell("auth", "keys", "rotate", "--json")
    assert rotated.returncode == 0, rotated
    new = rotated.json()["kid"]
    assert new != old
    assert rotated.json()["verifying"] == [old, new]
    assert private(shell.keys)

    shown, after = await asyncio.gather(
        shell("auth", "keys", "show"), shell("auth", "token", "--id", "ada", "--secret", secret)
    )
    jwks = shown.json()
    assert [key["kid"] for key in jwks["keys"]] == [old, new]
    assert not any("d" in key for key in jwks["keys"])  # public parts only
    token = access_token_of(after)
    assert orjson.loads(_segment(token))["kid"] == new
    # The service meets the new kid, reads the ring again, and still takes the old token.
    assert verifier.verify_token(token).id == "ada"
    assert verifier.verify_token(before).id == "ada"
    assert shell.verifier().verify_token(before).id == "ada"

    # A ring given inline is rotated at its source; the error shows none of it.
    inline = shell.keys.read_text()
    refused = await shell("auth", "keys", "rotate", env={"MICRO_AUTH_KEYS": inline})
    one_line_error(refused, 1, "rotated where it comes from")
    private_part = orjson.loads(inline)["keys"][0]["d"]
    assert private_part not in refused.stderr


def _segment(token: str) -> bytes:
    head = token.split(".")[0]
    return base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))


# -- call --token and describe ----------------------------------------------------------------


class Peek(BaseModel):
    what: str


class Seen(BaseModel):
    caller: str
    what: str


REQUEST = '{"what": "gold"}'
GOLD = {"caller": "ada", "what": "gold"}


def vault_app(service: Service) -> FastAPI:
    router = MicroRouter("Vault")

    @router.rpc()
    async def peek(req: Peek, ctx: Context) -> Seen:
        return Seen(caller=ctx.account.id, what=req.what)

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    return app


@dataclass
class Vault:
    service: Service
    address: str
    ada: str  # an access token of an account the rules grant
    bob: str  # one of an account they do not

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def grpc_address(self) -> str:
        node = self.service.registrar.node
        assert node is not None
        return node.metadata["grpc"]


@contextlib.asynccontextmanager
async def vault(shell: Shell) -> AsyncIterator[Vault]:
    """A service with auth on, on the shell's store and ring, whose rule grants only ada."""
    name = f"vault-{uuid.uuid4().hex[:8]}"
    made = await asyncio.gather(
        shell("auth", "account", "create", "ada", "--scope", "reader"),
        shell("auth", "account", "create", "bob", "--scope", "other"),
        shell(
            "auth", "rule", "create", "readers", "--scope", "reader", "--resource",
            f"service:{name}:Vault.*",
        ),
    )  # fmt: skip
    assert made[2].returncode == 0, made[2]
    ada, bob = (
        access_token_of(result)
        for result in await asyncio.gather(
            shell("auth", "token", "--id", "ada", "--secret", secret_of(made[0])),
            shell("auth", "token", "--id", "bob", "--secret", secret_of(made[1])),
        )
    )
    service = Service(
        name,
        registry=os.environ["MICRO_REGISTRY"],
        store=shell.store,
        broker="memory://",
        auth=f"jwt://?keys={shell.keys}",
    )
    async with serve(vault_app(service)) as address:
        await service.wait_registered()
        yield Vault(service, address, ada, bob)


@contextlib.asynccontextmanager
async def impostor(name: str, version: str) -> AsyncIterator[list[bytes]]:
    """A node registered by hand under ``name``, with no proof: it records what reaches it."""
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            received.append(await asyncio.wait_for(reader.read(65536), 2.0))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", free_port())
    port = server.sockets[0].getsockname()[1]
    fake = ServiceRecord(name, version, nodes=[Node(f"{name}-impostor", f"127.0.0.1:{port}")])
    registry = mdns()
    async with registry, server:
        await registry.register(fake, ttl=30)
        try:
            yield received
        finally:
            await registry.deregister(fake)


def registrations(result: CommandResult) -> dict[str, str]:
    """``describe --json``'s verdict on each node, by node id."""
    assert result.returncode == 0, result
    nodes = [node for record in result.json() for node in record["nodes"]]
    return {node["id"]: node["registration"] for node in nodes}


async def test_call_with_a_token_and_which_nodes_describe_trusts(shell: Shell) -> None:
    async with vault(shell) as service:
        name, ada, bob = service.name, service.ada, service.bob
        calls = await asyncio.gather(
            shell("call", name, "Vault.Peek", REQUEST),
            shell("call", name, "Vault.Peek", REQUEST, "--transport", "grpc"),
            shell("call", name, "Vault.Peek", REQUEST, "--token", ada, "--address",
                  service.address),
            shell("call", name, "Vault.Peek", REQUEST, "--token", "-", "--transport", "grpc",
                  "--address", service.grpc_address, input=ada),
            shell("call", name, "Vault.Peek", REQUEST, "--token", bob, "--address",
                  service.address),
            shell("call", name, "Vault.Peek", REQUEST, "--token", "two words", "--address",
                  service.address),
        )  # fmt: skip
        async with impostor(name, service.service.version):
            # describe waits out a browse window for every node: four at once on two cores
            # have heard only the first node within the default 1.5 s
            every = listing()
            described, described_json, off, elsewhere = await asyncio.gather(
                shell("describe", name, env={**WIDE, **every}),
                shell("describe", name, "--json", env=every),
                shell("describe", name, "--json", env={**every, "MICRO_AUTH": "noop://"}),
                shell(
                    "describe", name, "--json", env={**every, "MICRO_AUTH_KEYS": "other/keys.json"}
                ),
            )

    without, without_grpc, http, grpc, forbidden, malformed = calls
    for refused in (without, without_grpc):
        assert refused.returncode == 1, refused
        error = orjson.loads(refused.stderr)
        assert (error["code"], error["id"]) == (401, "asgi_micro.auth")
    for allowed in (http, grpc):
        assert allowed.returncode == 0, allowed
        assert allowed.json() == GOLD
    assert forbidden.returncode == 1, forbidden
    assert orjson.loads(forbidden.stderr)["code"] == 403
    one_line_error(malformed, 2, "the token is not a bearer token")
    for result in calls:
        for token in (ada, bob, "two words"):
            assert token not in result.stdout + result.stderr

    # Of the two nodes under the name, only the service's own proves its registration...
    real, fake = service.service.id, f"{name}-impostor"
    rows = {row[0]: row for row in table_rows(described.stdout) if row[0] in (real, fake)}
    assert rows[real][-1] == "verified"
    assert "auth=(proof)" in rows[real][2]  # the proof itself is summed up, not shown
    assert rows[fake][-1] == "unverified"
    assert registrations(described_json) == {real: "verified", fake: "unverified"}
    assert registrations(off) == {real: "auth off", fake: "auth off"}
    # ...under the ring the service shares: a shell without it trusts none, and makes none.
    assert registrations(elsewhere) == {real: "unverified", fake: "unverified"}
    assert not (shell.home / "other").exists()


async def test_a_token_sent_by_name_goes_only_to_nodes_that_prove_their_registration(
    shell: Shell,
) -> None:
    async with vault(shell) as service, impostor(service.name, "latest") as received:
        calls = await asyncio.gather(
            shell("call", service.name, "Vault.Peek", REQUEST, "--token", service.ada),
            shell("call", service.name, "Vault.Peek", REQUEST, "--token", service.ada,
                  "--transport", "grpc"),
            *(shell("call", service.name, "Vault.Peek", REQUEST, "--token", service.ada)
              for _ in range(3)),
        )  # fmt: skip
    for result in calls:
        assert result.returncode == 0, result
        assert result.json() == GOLD
    assert received == []

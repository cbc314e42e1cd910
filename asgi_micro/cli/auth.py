"""``asgi-micro auth``: accounts, rules, tokens and signing keys, from a shell.

    asgi-micro auth account create ada --scope admin      # prints the secret, this once
    asgi-micro auth token --id ada --secret -             # the secret read from stdin
    asgi-micro auth rule create admins --scope admin --resource service:greeter:*
    asgi-micro auth keys rotate

They work on what the services of the deployment use: the store of ``--store``
(``MICRO_STORE``), where accounts and rules live, and the key ring of ``--auth``
(``MICRO_AUTH``, ``jwt://``) and ``MICRO_AUTH_KEYS``. An account's secret is printed once, by
``account create``, and tokens only by ``token``: never in a list or an error. Errors go to
standard error in one line, exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import getpass
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from ..auth import DEFAULT_URL, Access, Account, Auth, KeyRing, Resource, Rule, Tokens, from_url
from ..auth.guard import Guard
from ..auth.keys import algorithm_named
from ..auth.rules import ordered
from ..errors import MicroError
from ..plugins import MissingDependency, Parts
from ..store import DEFAULT_URL as DEFAULT_STORE
from ..store import Store
from ..store import from_url as store_from_url
from .common import JsonOption, MetadataOption, console, errors, pairs, print_json, print_table
from .store import StoreOption

if TYPE_CHECKING:
    from ..registry import Node

__all__ = ["CLI_SERVICE", "AuthOption", "app", "read_secret", "registration_check"]

T = TypeVar("T")

CLI_SERVICE = "asgi-micro-cli"
"""The service name the command's auth is built with."""

AuthOption = Annotated[
    str,
    typer.Option(
        "--auth",
        envvar="MICRO_AUTH",
        help="Auth URL: jwt:// (keys from MICRO_AUTH_KEYS or .micro/auth/keys.json), "
        "jwt://?keys=PATH, noop://.",
    ),
]

app = typer.Typer(
    help="Accounts, rules, tokens and signing keys.", no_args_is_help=True, add_completion=False
)
accounts = typer.Typer(help="Accounts: who may sign in.", no_args_is_help=True)
rules = typer.Typer(help="Rules: which scopes may call what.", no_args_is_help=True)
keys = typer.Typer(help="The key ring that signs and verifies tokens.", no_args_is_help=True)
app.add_typer(accounts, name="account")
app.add_typer(rules, name="rule")
app.add_typer(keys, name="keys")


class AccountType(enum.StrEnum):
    user = "user"
    service = "service"


# -- accounts ---------------------------------------------------------------------------------


@accounts.command("create")
def create_account(
    id: Annotated[str, typer.Argument(help="The account id, e.g. ada or billing.")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", "-s", help="A scope; repeat for more.")
    ] = None,
    type: Annotated[AccountType, typer.Option("--type", help="A person or a service.")] = (
        AccountType.user
    ),
    metadata: MetadataOption = None,
    store: StoreOption = DEFAULT_STORE,
    auth: AuthOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Create (or replace) the account ID and print its secret: the only time it is shown."""
    extra = _pairs(metadata)

    async def go(backend: Auth) -> tuple[Account, bool]:
        existed = await backend.account(id) is not None
        made = await backend.generate(id, scopes=scope or (), type=type.value, metadata=extra)
        return made, existed

    account, replaced = _with_auth(store, auth, as_json, go)
    note = "This is the only time the secret is shown: keep it now (only its hash is stored)."
    if as_json:
        print_json({**account.public(), "secret": account.secret})
        errors.print(note)
        return
    if replaced:
        console.print(f"replaced account {id!r}: its old secret no longer works")
    scopes = ", ".join(account.scopes) or "none"
    described = f"account {account.id} ({account.type}), scopes: {scopes}"
    if account.metadata:
        described += f", metadata: {_compact(account.metadata)}"
    console.print(described, highlight=False)
    console.print(f"secret: {account.secret}", highlight=False)
    console.print(note)


@accounts.command("list")
def list_accounts(
    store: StoreOption = DEFAULT_STORE,
    auth: AuthOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Print the accounts (never a secret, nor its hash)."""
    found = sorted(_with_auth(store, auth, as_json, lambda a: a.accounts()), key=lambda a: a.id)
    _listing(
        "accounts",
        [account.public() for account in found],
        ("id", "type", "scopes", "metadata", "created"),
        [
            (a.id, a.type, ", ".join(a.scopes), _compact(a.metadata), _time(a.created))
            for a in found
        ],
        as_json,
    )


@accounts.command("delete")
def delete_account(
    id: Annotated[str, typer.Argument(help="The account id.")],
    store: StoreOption = DEFAULT_STORE,
    auth: AuthOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Delete the account ID: its refresh tokens stop working now, its access tokens when they
    expire."""
    if not _with_auth(store, auth, as_json, lambda a: a.delete(id)):
        _fail(f"no account {id!r}", 1)
    if as_json:
        print_json({"id": id, "deleted": True})
    else:
        console.print(
            f"deleted account {id!r}: its refresh tokens stop working now, "
            "its access tokens when they expire"
        )


# -- tokens -----------------------------------------------------------------------------------


@app.command()
def token(
    id: Annotated[str | None, typer.Option("--id", help="The account id.")] = None,
    secret: Annotated[
        str | None,
        typer.Option("--secret", help="The account's secret; - reads it from stdin.", metavar="S"),
    ] = None,
    refresh_token: Annotated[
        str | None,
        typer.Option(
            "--refresh-token", help="A refresh token instead (good once); - reads it from stdin."
        ),
    ] = None,
    expiry: Annotated[
        float | None,
        typer.Option("--expiry", min=1.0, help="Seconds the access token lives (jwt:// ttl)."),
    ] = None,
    store: StoreOption = DEFAULT_STORE,
    auth: AuthOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Print an access token and a refresh token, for --id and --secret or a --refresh-token."""
    if refresh_token is not None:
        if id is not None or secret is not None:
            _fail("give --id and --secret, or --refresh-token, not both", 2)
        refresh = read_secret(refresh_token, "refresh token")
        tokens = _with_auth(
            store, auth, as_json, lambda a: a.token(refresh_token=refresh, expiry=expiry)
        )
    elif id is not None and secret is not None:
        password = read_secret(secret, "secret")
        tokens = _with_auth(
            store, auth, as_json, lambda a: a.token(id=id, secret=password, expiry=expiry)
        )
    else:
        _fail("give --id and --secret (- reads it from stdin), or --refresh-token", 2)
    if as_json:
        print_json(tokens.to_dict())
    else:
        _print_tokens(tokens)


def _print_tokens(tokens: Tokens) -> None:
    left = f"in {tokens.expires_in():.0f}s"
    console.print(f"access token, expires {_time(tokens.expiry)} ({left}):")
    console.print(tokens.access_token, highlight=False)
    console.print(f"refresh token, expires {_time(tokens.refresh_expiry)} (good once):")
    console.print(tokens.refresh_token, highlight=False)


def read_secret(value: str, what: str) -> str:
    """``value``, or for ``-`` a line from stdin (asked for without echo on a terminal), so
    that a secret need not be in the shell's history."""
    if value == "-":
        if sys.stdin.isatty():
            value = getpass.getpass(f"{what}: ")
        else:
            value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        _fail(f"the {what} is empty", 2)
    return value


# -- rules ------------------------------------------------------------------------------------


@rules.command("create")
def create_rule(
    id: Annotated[str, typer.Argument(help="The rule id.")],
    scope: Annotated[
        str,
        typer.Option(
            "--scope", help="The scope it applies to: '' everyone, '*' any signed-in account."
        ),
    ],
    resource: Annotated[
        str,
        typer.Option(
            "--resource",
            metavar="TYPE:NAME:ENDPOINT",
            help="service:greeter:Greeter.*, service:greeter:GET /items/{item_id}, "
            "topic:greeter:user.created; * and a trailing * are patterns.",
        ),
    ],
    access: Annotated[Access, typer.Option("--access", help="Grant or deny.")] = Access.GRANT,
    priority: Annotated[int, typer.Option("--priority", help="Higher is looked at first.")] = 0,
    store: StoreOption = DEFAULT_STORE,
    auth: AuthOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Create (or replace) the rule ID."""
    with _reported(as_json):
        rule = Rule(id, scope, _resource(resource), access, priority)

    async def go(backend: Auth) -> bool:
        existed = any(known.id == id for known in await backend.rules())
        await backend.grant(rule)
        return existed

    replaced = _with_auth(store, auth, as_json, go)
    if as_json:
        print_json(rule.to_dict())
    else:
        console.print(f"{'replaced' if replaced else 'created'} rule {_describe(rule)}")


@rules.command("list")
def list_rules(
    store: StoreOption = DEFAULT_STORE,
    auth: AuthOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Print the rules in the order the guard looks at them: the first that applies decides."""
    found = ordered(_with_auth(store, auth, as_json, lambda a: a.rules()))
    _listing(
        "rules",
        [rule.to_dict() for rule in found],
        ("id", "scope", "resource", "access", "priority"),
        [(r.id, _scope(r.scope), str(r.resource), r.access, str(r.priority)) for r in found],
        as_json,
    )


@rules.command("delete")
def delete_rule(
    id: Annotated[str, typer.Argument(help="The rule id.")],
    store: StoreOption = DEFAULT_STORE,
    auth: AuthOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Delete the rule ID."""
    if not _with_auth(store, auth, as_json, lambda a: a.delete_rule(id)):
        _fail(f"no rule {id!r}", 1)
    if as_json:
        print_json({"id": id, "deleted": True})
    else:
        console.print(f"deleted rule {id!r}")


def _resource(spec: str) -> Resource:
    # The endpoint is last and may hold ':' of its own; a type and a service name never do.
    kind, _, rest = spec.partition(":")
    name, sep, endpoint = rest.partition(":")
    if not sep:
        raise ValueError(f"--resource is TYPE:NAME:ENDPOINT, e.g. service:greeter:*, got {spec!r}")
    return Resource(kind, name, endpoint)


def _describe(rule: Rule) -> str:
    return (
        f"{rule.id!r}: {rule.access} {_scope(rule.scope)} {rule.resource} "
        f"at priority {rule.priority}"
    )


def _scope(scope: str) -> str:
    return {"": "(everyone)", "*": "* (signed in)"}.get(scope, scope)


# -- keys -------------------------------------------------------------------------------------


@keys.command("rotate")
def rotate(
    algorithm: Annotated[
        str | None,
        typer.Option("--algorithm", help="EdDSA or RS256 for the new key (default: the ring's)."),
    ] = None,
    auth: AuthOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Make a new signing key; the one before it still verifies the tokens it signed until they
    expire. Services read the ring again when they meet the new key."""
    with _reported(as_json):
        ring = _ring(auth)
        if ring.path is None:
            _fail("a ring given as JSON (MICRO_AUTH_KEYS) is rotated where it comes from", 1)
        fresh = not ring.path.exists()
        if fresh:
            ring.load()  # makes the ring, with a key of the ring's algorithm
        if not fresh or (algorithm and algorithm_named(algorithm) != ring.signing.algorithm):
            ring.rotate(algorithm=algorithm)
        key = ring.signing
    verifying = [ring_key.kid for ring_key in ring if ring.find(ring_key.kid) is not None]
    if as_json:
        print_json({"kid": key.kid, "algorithm": key.algorithm, "verifying": verifying})
        return
    made = f"made the key ring {ring.path} with" if fresh else "rotated: new"
    console.print(f"{made} signing key {key.kid} ({key.algorithm})", highlight=False)
    console.print(f"{len(verifying)} key(s) verify tokens: {', '.join(verifying)}", highlight=False)


@keys.command("show")
def show(auth: AuthOption = DEFAULT_URL) -> None:
    """Print the public keys (JWKS) that verify the deployment's tokens."""
    with _reported(False):
        ring = _ring(auth)
        if ring.path is not None and not ring.path.exists():
            _fail(f"no key ring at {ring.path} (auth keys rotate makes one)", 1)
        ring.load()
        print_json(ring.jwks())


def _ring(url: str) -> KeyRing:
    ring = getattr(_auth(url), "keys", None)
    if not isinstance(ring, KeyRing):
        _fail(f"the auth {url or DEFAULT_URL!r} has no key ring here", 1)
    return ring


# -- shared with describe and call ------------------------------------------------------------


def registration_check(url: str) -> Callable[[str, Node], bool] | None:
    """Whether a node's registration proves it a node of its service under the local key ring
    (``Service.trusts_node``); ``None`` when auth is off (``noop://``). Without a ring here no
    registration verifies, and none is made: looking must not create keys."""
    auth = _auth(url)
    if not auth.enabled:
        return None
    ring = getattr(auth, "keys", None)
    if isinstance(ring, KeyRing) and ring.path is not None and not ring.path.exists():
        return lambda service, node: False
    return Guard(auth, service=CLI_SERVICE, on=True).trusts


def _auth(url: str, store: Store | None = None) -> Auth:
    return from_url(url or DEFAULT_URL, parts=Parts(service=CLI_SERVICE, store=store))


def _with_auth(
    store_url: str, auth_url: str, as_json: bool, action: Callable[[Auth], Awaitable[T]]
) -> T:
    async def go() -> T:
        async with store_from_url(store_url) as store, _auth(auth_url, store) as auth:
            return await action(auth)

    with _reported(as_json):
        return asyncio.run(go())


@contextlib.contextmanager
def _reported(as_json: bool) -> Iterator[None]:
    """Errors as one line on stderr: 2 for what was asked wrong, 1 for what went wrong. (No
    message here holds a secret: the auth's errors never do.)"""
    try:
        yield
    except (ValueError, MissingDependency) as exc:
        _fail(str(exc), 2)
    except MicroError as exc:
        if as_json:
            sys.stderr.write(exc.to_json().decode() + "\n")
            raise typer.Exit(1) from None
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(str(exc), 1)


def _fail(message: str, code: int) -> NoReturn:
    errors.print(message)
    raise typer.Exit(code)


def _pairs(items: list[str] | None) -> dict[str, str]:
    try:
        return pairs(items or [])
    except typer.BadParameter as exc:
        _fail(exc.format_message(), 2)


def _listing(
    what: str,
    records: list[dict[str, object]],
    columns: tuple[str, ...],
    rows: list[tuple[str, ...]],
    as_json: bool,
) -> None:
    """A list command's output: the records as JSON, or a table of ``rows``."""
    if as_json:
        print_json(records)
        return
    if not rows:
        console.print(f"no {what}")
        return
    table = Table(*columns)
    for cells in rows:
        table.add_row(*(Text(cell) for cell in cells))
    print_table(table)


def _compact(mapping: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(mapping.items()))


def _time(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

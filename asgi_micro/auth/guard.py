"""What a service does with auth: check every call, name itself on every call it makes, and
prove its registrations.

Auth is *on* when the service is given an auth backend (``Service(auth="jwt://...")`` or
``MICRO_AUTH``) or ``MICRO_AUTH_DEFAULT=deny``. Then:

- **Every incoming call**, on every protocol (HTTP RPC and plain routes, streams, WebSocket,
  gRPC, events, the internal routes but health, the registry record, the broker's inbox and
  JWKS), passes the guard, the outermost server wrapper: the bearer token (``Authorization``
  header, gRPC ``authorization`` metadata, an event's ``authorization`` header) is verified
  (once: then cached until it expires), the account goes in the call's context, and the rules
  decide. No valid token where one is needed is a 401 (``UNAUTHENTICATED``), a token without
  the rule a 403 (``PERMISSION_DENIED``). With no rules at all and ``MICRO_AUTH_DEFAULT`` left
  ``open`` every call is allowed, and still only a verified token names its caller.
- **The caller's identity** (``Micro-From-Service``, ``from-service`` metadata) comes from the
  token of a ``service`` account and nothing else: whatever a caller sent under that name is
  dropped.
- **The service has an account of its own** (type ``service``, scopes ``service`` and
  ``service:<name>``, which rules name to grant a service) and a token for it, refreshed in the
  background well before it expires, which every call and publish to a node found through the
  registry carries. No call waits for a refresh.
- **Its node's registration carries a proof**: a token of use ``node`` naming the node's id and
  addresses, signed with the deployment's key ring. A client of a service whose auth is on
  skips nodes whose proof does not verify: a process without the ring cannot take a share of
  a service's traffic by registering under its name.

Off (the zero-config default), tokens are still read when a handler asks for the ``Account``,
and the start-up log says that every call is allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson
from joserfc import jws
from joserfc.errors import JoseError

from ..errors import MicroError, Unauthorized
from ..pipeline import Call, Gate, Next
from .base import Account, Auth
from .jwt import UnknownKey
from .rules import Access, Resource, Rule, decide, ordered, refuse

if TYPE_CHECKING:
    import httpx

    from ..broker.base import Event
    from ..context import Context
    from ..registry import Node

__all__ = ["PUBLIC_INTERNAL", "Guard", "bearer", "jwks_through"]

logger = logging.getLogger(__name__)

Default = Literal["open", "deny"]
PUBLIC_INTERNAL: Final = frozenset({"/_micro/health", "/_micro/registry", "/.well-known/jwks.json"})
"""Internal routes open to anyone: a probe, what mDNS peers fetch of a record too big for its
TXT record, and the public keys. (The broker's inbox is open too: each event in it is
checked on its own, by its own token.)"""
PROOF_KEY: Final = "auth"
"""The node metadata key of a registration's proof."""
LEARN_INTERVAL: Final = 10.0
"""Seconds between two fetches of one service's JWKS for keys the ring lacks."""
LEARN_TIMEOUT: Final = 2.0
EVENT_TOKEN_AGE: Final = 86400.0
"""How long the token made for one event stays good: an event may wait in its broker far longer
than a call's token lives (an event older than this is refused; replay it from its dead letter
by publishing it again)."""
_BEARER: Final = "bearer "
_DECISIONS: Final = 4096
_UNDECIDED: Final[Any] = object()
_SERVICE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def bearer(authorization: str | None) -> tuple[str | None, str]:
    """The token of an ``Authorization: Bearer <token>`` value, or ``None`` and why not."""
    if authorization is None:
        return None, "no token"
    if authorization[:7].lower() != _BEARER or len(authorization) < 8:
        return None, "the Authorization header is not 'Bearer <token>'"
    token = authorization[7:]
    if token != token.strip() or " " in token:
        return None, "the Authorization header is not 'Bearer <token>'"
    return token, ""


class Guard(Gate):
    """The auth of one service: a ``Gate`` (its outermost server wrapper), ``identity`` (the
    token its calls carry), ``proof``/``trusts`` (registrations), the rules in force."""

    def __init__(
        self,
        auth: Auth,
        *,
        service: str,
        on: bool,
        default: Default = "open",
        rules_refresh: float = 5.0,
    ) -> None:
        if default not in ("open", "deny"):
            raise ValueError(f"MICRO_AUTH_DEFAULT is 'open' or 'deny', got {default!r}")
        self.auth = auth
        self.service = service
        self.on = on and auth.enabled
        self.default: Default = default
        self.rules_refresh = rules_refresh
        self.rules: list[Rule] = []
        self.account = Account(service, "service", ("service", f"service:{service}"))
        self._token: str | None = None
        self._token_expires = 0.0
        self._proof: str | None = None
        self._proof_for: tuple[str, ...] = ()
        self._proof_expires = 0.0
        self._trusted: dict[str, tuple[dict[str, Any] | None, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.teacher: Callable[[str], Awaitable[Mapping[str, Any]]] | None = None
        """Fetches a service's JWKS through the registry (set by the service)."""
        self._asked: dict[str, float] = {}
        self._decisions: dict[tuple[str, str, tuple[str, ...] | None], Rule | None] = {}
        # Authorization value -> (account, until when, endpoints it was admitted to).
        self._admitted: dict[str | None, tuple[Account | None, float, set[str]]] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.on:
            if self.auth.enabled:
                logger.warning(
                    "%s: auth is open: every caller may call every endpoint. Set "
                    "MICRO_AUTH_DEFAULT=deny (or MICRO_AUTH=jwt://) to enforce rules",
                    self.service,
                )
            return
        await self.auth.start()
        existing = await self.auth.account(self.service)
        if existing is None or existing.type != "service":
            await self.auth.generate(
                self.service, scopes=self.account.scopes, type="service"
            )  # its secret is not kept: the service signs its own tokens with the ring
        self._mint()
        await self.load_rules()
        self._tasks = [
            asyncio.create_task(self._refresh_identity(), name=f"auth identity {self.service}"),
            asyncio.create_task(self.follow_rules(), name=f"auth rules {self.service}"),
        ]
        logger.info(
            "%s: auth on (%s); %d rule(s) in force, default %s",
            self.service,
            self.auth,
            len(self.rules),
            self.default,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def load_rules(self) -> None:
        rules = ordered(await self.auth.rules())
        if rules != self.rules:
            self.rules = rules
            self._decisions = {}
            self._admitted = {}

    @property
    def enforcing(self) -> bool:
        """Whether rules decide (some rules, or deny by default), rather than every call
        being allowed."""
        return self.on and (bool(self.rules) or self.default == "deny")

    # -- incoming calls -----------------------------------------------------------------------

    async def __call__(self, call: Call, next: Next) -> Any:
        """The server wrapper: who calls, and whether they may."""
        if call.protocol != "event":
            return await super().__call__(call, next)  # admit
        # An event carries a token made for it alone: verified against the event.
        context, event = call.context, call.state.get("event")
        account, reason, error, _ = self._verify(context.authorization, event)
        if isinstance(error, UnknownKey) and await self._learn(context.authorization):
            account, reason, error, _ = self._verify(context.authorization, event)
        self._decide(context, account, reason, call.endpoint, "topic")
        return await next(call)

    def admit(self, context: Context, endpoint: str, protocol: str) -> Awaitable[None] | None:
        """A call (not an event): decided at once, unless its token is signed with a key the
        ring lacks, which is first learnt where the guard can (see ``_learn``). A token (or
        no token) once admitted to an endpoint is admitted again at the cost of a look-up,
        until it expires or the rules or keys change: this runs on every call."""
        authorization = context.authorization
        admitted = self._admitted.get(authorization)
        if admitted is not None and endpoint in admitted[2] and time.time() < admitted[1]:
            _name_caller(context, admitted[0])
            return None
        account, reason, error, until = self._verify(authorization, None)
        if isinstance(error, UnknownKey) and self.teacher is not None:
            return self._admit_learning(context, endpoint, authorization, reason)
        self._decide(context, account, reason, endpoint, "service")
        if error is None:  # not a token that failed: it may yet pass
            if admitted is None or time.time() >= admitted[1]:
                if len(self._admitted) >= _DECISIONS:
                    self._admitted.clear()
                admitted = self._admitted[authorization] = (account, until, set())
            admitted[2].add(endpoint)
        return None

    async def _admit_learning(
        self, context: Context, endpoint: str, authorization: str | None, reason: str
    ) -> None:
        account, reason = await self.learn_and_verify(authorization, reason=reason)
        self._decide(context, account, reason, endpoint, "service")

    def check(self, context: Any, endpoint: str, kind: str) -> None:
        """Decide on a call to ``endpoint`` without going through the pipeline."""
        account, reason = self.account_of(context.authorization)
        self._decide(context, account, reason, endpoint, kind)

    def _decide(
        self, context: Any, account: Account | None, reason: str, endpoint: str, kind: str
    ) -> None:
        _name_caller(context, account)
        if self.rules or self.default == "deny":
            # Decided once per endpoint and set of scopes, until the rules change.
            key = (kind, endpoint, account.scopes if account is not None else None)
            decided = self._decisions.get(key, _UNDECIDED)
            if decided is _UNDECIDED:
                if len(self._decisions) >= _DECISIONS:
                    self._decisions.clear()
                resource = Resource(kind, self.service, endpoint)
                decided = self._decisions[key] = decide(self.rules, account, resource)
            if decided is None or decided.access != Access.GRANT:
                refuse(decided, account, Resource(kind, self.service, endpoint), reason)

    def account_of(self, authorization: str | None) -> tuple[Account | None, str]:
        """The account a call's ``Authorization`` value proves, or ``None`` and why not."""
        account, reason, _, _ = self._verify(authorization, None)
        return account, reason

    def caller(self, authorization: str | None) -> tuple[Account | None, str, bool]:
        """``account_of``, and whether the token failed only for want of its key, which
        ``learn_and_verify`` may then find."""
        account, reason, error, _ = self._verify(authorization, None)
        return account, reason, isinstance(error, UnknownKey)

    async def identify(
        self, authorization: str | None, *, ask: str | None = None
    ) -> tuple[Account | None, str]:
        """``account_of``, except that a token signed by a key the ring lacks first makes the
        guard learn the deployment's keys (see ``learn_and_verify``)."""
        account, reason, unknown_key = self.caller(authorization)
        if unknown_key:
            return await self.learn_and_verify(authorization, ask=ask, reason=reason)
        return account, reason

    async def learn_and_verify(
        self, authorization: str | None, *, ask: str | None = None, reason: str = ""
    ) -> tuple[Account | None, str]:
        """After a token failed for want of its key: learn the deployment's keys (see
        ``_learn``: from the service the token names, else from ``ask``; a gateway asks the
        service the call is for), and verify it again if that found any. ``reason`` is why
        it failed, kept when nothing was learnt."""
        if await self._learn(authorization, ask):
            return self.account_of(authorization)
        return None, reason

    def _verify(
        self, authorization: str | None, event: Event | None
    ) -> tuple[Account | None, str, MicroError | None, float]:
        """An access token for a call; for an event, the token made for that event alone.
        The account (``None`` and why not), the error that refused the token, and until when
        the answer holds (for good without a token; see ``Auth.verified``)."""
        token, reason = bearer(authorization)
        if token is None:
            return None, reason, None, float("inf")
        try:
            if event is None:
                account, until = self.auth.verified(token)
                return account, "", None, until
            account = self.auth.verify_event(
                token, topic=event.topic, event_id=event.id, body=event.body
            )
            return account, "", None, 0.0
        except MicroError as exc:
            return None, exc.detail, exc, 0.0

    async def _learn(self, authorization: str | None, ask: str | None = None) -> bool:
        """After a token signed by a key the ring lacks: ask the service it names (a service
        account's token), else ``ask``, for its JWKS, through the registry, from nodes whose
        registration verifies (so, holders of the ring), and take the keys it has that this
        ring lacks (a rotation not read here yet). At most once per ``LEARN_INTERVAL`` per
        service, so that tokens with made-up kids cannot make the guard fetch again and
        again."""
        teacher = self.teacher
        token, _ = bearer(authorization)
        if teacher is None or token is None:
            return False
        subject = _unverified_service(token) or ask
        now = time.monotonic()
        if subject is None or self._asked.get(subject, 0.0) > now:
            return False
        self._asked[subject] = now + LEARN_INTERVAL
        try:
            jwks = await asyncio.wait_for(teacher(subject), LEARN_TIMEOUT)
            learnt = self.auth.learn(jwks)
        except Exception as exc:
            logger.info("%s: could not fetch the JWKS of %s: %s", self.service, subject, exc)
            return False
        if learnt:
            logger.info("%s: learnt key(s) %s from %s", self.service, ", ".join(learnt), subject)
        return bool(learnt)

    def jwks(self) -> dict[str, Any]:
        """The public keys of the deployment (none with auth off)."""
        return self.auth.jwks() if self.auth.enabled else {"keys": []}

    def check_internal(self, context: Any, path: str) -> None:
        """An internal route: open when ``PUBLIC_INTERNAL``, else covered by the rules."""
        if self.on and path.rstrip("/") not in PUBLIC_INTERNAL:
            self.check(context, f"GET {path.rstrip('/')}", "service")

    # -- outgoing calls -----------------------------------------------------------------------

    def event_identity(self, topic: str, event_id: str, body: bytes) -> str | None:
        """``Bearer <token>`` for one event the service publishes: bound to its topic, id and
        body, so that a subscriber (or a dead letter) holds nothing that works for a call or
        for another event. ``None`` when auth is off."""
        if not self.on:
            return None
        token = self.auth.event_token(
            self.account, topic=topic, event_id=event_id, body=body, expiry=EVENT_TOKEN_AGE
        )
        return f"Bearer {token}"

    def identity(self) -> str | None:
        """``Bearer <token>`` of the service's own account, for its calls; ``None`` when auth
        is off."""
        token = self._token
        return f"Bearer {token}" if token is not None else None

    def _mint(self) -> None:
        self._token = self.auth.issue(self.account, expiry=self._ttl())
        self._token_expires = time.time() + self._ttl()

    def _ttl(self) -> float:
        return float(getattr(self.auth, "ttl", 900.0))

    async def _refresh_identity(self) -> None:
        while True:
            # A third of the lifetime left: calls never carry a token about to expire.
            await asyncio.sleep(max(1.0, (self._token_expires - time.time()) - self._ttl() / 3))
            try:
                self._mint()
            except Exception:
                logger.warning("%s: could not renew its token", self.service, exc_info=True)
                await asyncio.sleep(1.0)

    async def follow_rules(self) -> None:
        """Read the rules and the key ring again every ``rules_refresh``, until cancelled: a
        rotation elsewhere is signed with here (by a started guard, which has an identity)
        within one ``rules_refresh``. A gateway, which has none, runs this alone."""
        while True:
            await asyncio.sleep(self.rules_refresh)
            try:
                if self.auth.reload_keys():
                    self._admitted = {}
                    if self._tasks:
                        self._mint()
                        self._proof = None
                await self.load_rules()
            except Exception:  # the store is away: the rules known last stay in force
                logger.warning("%s: could not reload the auth rules", self.service, exc_info=True)

    # -- registrations ------------------------------------------------------------------------

    def proof(self, node: Node | None) -> Mapping[str, str]:
        """The node metadata that proves ``node`` is this service's: a token naming it."""
        if not self.on or node is None:
            return {}
        bound = _bound(node)
        now = time.time()
        if self._proof is None or bound != self._proof_for or now > self._proof_expires:
            ttl = self._ttl()
            self._proof = self.auth.issue(
                self.account, expiry=ttl, use="node", claims={"node": list(bound)}
            )
            self._proof_for = bound
            self._proof_expires = now + ttl * 2 / 3
        return {PROOF_KEY: self._proof}

    def trusts(self, service: str, node: Node) -> bool:
        """Whether ``node``'s registration proves it a node of ``service`` (always, when auth
        is off). Verified proofs are cached until they expire; refused ones for a while."""
        if not self.on:
            return True
        proof = node.metadata.get(PROOF_KEY)
        if not proof:
            return False
        now = time.time()
        cached = self._trusted.get(proof)
        if cached is None or now >= cached[1]:
            try:
                claims: dict[str, Any] | None = self.auth.verify_claims(proof, use="node")
                until = float(claims["exp"]) if claims is not None else now
            except Unauthorized:
                claims, until = None, now + 30.0
            if len(self._trusted) >= 4096:
                self._trusted.clear()
            cached = self._trusted[proof] = (claims, until)
        claims = cached[0]
        return (
            claims is not None
            and claims.get("sub") == service
            and claims.get("type") == "service"
            and tuple(claims.get("node") or ()) == _bound(node)
        )


def _name_caller(context: Any, account: Account | None) -> None:
    """The verified caller in the call's context; ``from-service`` only from a service's
    token."""
    context.account = account
    metadata = context.metadata
    if account is not None and account.type == "service":
        metadata["from-service"] = account.id
    elif "from-service" in metadata:
        del metadata["from-service"]


def _bound(node: Node) -> tuple[str, ...]:
    """What a proof binds: the node's id and every address it serves on."""
    return (node.id, node.address, node.metadata.get("grpc", ""))


def jwks_through(http: Callable[..., httpx.AsyncClient]) -> Callable[[str], Awaitable[Any]]:
    """A guard's ``teacher`` that fetches a service's JWKS with ``http`` (``Client.http``: a
    node of the service, chosen among those whose registration verifies)."""

    async def fetch(service: str) -> Any:
        async with http(timeout=LEARN_TIMEOUT) as client:
            response = await client.get(f"http://{service}/.well-known/jwks.json")
            response.raise_for_status()
            return response.json()

    return fetch


def _unverified_service(token: str) -> str | None:
    """The service a token claims to be from, read without verifying it (only to know whom to
    ask for keys: nothing is trusted from it)."""
    try:
        claims = orjson.loads(jws.extract_compact(token.encode()).payload)
    except (JoseError, orjson.JSONDecodeError):
        return None
    if not isinstance(claims, dict) or claims.get("type") != "service":
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) and _SERVICE_NAME.fullmatch(subject) else None

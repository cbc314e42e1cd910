"""``Config``: a typed model loaded from layered sources, kept current while it runs.

Every load reads all sources, merges them in order (each over the ones before, all over the
model's defaults), validates the whole result and only then swaps it in, so readers see either
the old config or the new one, never a mix. A change that does not load or validate is logged
with the reason (field paths and sources, never values) and the config in force stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Self, TypeVar

from pydantic import BaseModel, ValidationError
from watchfiles import awatch

from ..plugins import Lifecycle
from .paths import check_path, flatten, is_secret, lookup, mask, merge, value_at
from .sources import DEFAULTS, ConfigError, Source, default_sources

__all__ = ["Callback", "Change", "Config", "Setting", "Watch"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

Callback = Callable[["Change"], Awaitable[None] | None]
"""Called with each ``Change``; sync or async."""

_END: Final = object()


@dataclass(frozen=True, slots=True)
class Change:
    """The value at ``path`` went from ``old`` to ``new`` (``None`` where there was none);
    ``source`` set the new value, ``paths`` are the leaves that changed."""

    path: str
    old: Any
    new: Any
    source: str
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Setting:
    """One leaf of the config: its dotted path, value, the source that set it, and whether it
    is a secret (shown masked)."""

    path: str
    value: Any
    source: str
    secret: bool


@dataclass(frozen=True, slots=True)
class _Snapshot(Generic[M]):
    value: M
    provenance: dict[str, str]
    """The source of every leaf of ``value``."""


class Watch(Generic[M]):
    """Changes of one path, from the moment ``Config.watch`` made it until ``aclose()`` or
    the config stops: ``async for change in config.watch("db.pool")``."""

    def __init__(self, config: Config[M], path: str) -> None:
        self.path = path
        self._config = config
        self._queue: asyncio.Queue[Change | object] = asyncio.Queue()
        self._closed = False
        config._watches.add(self)

    def _put(self, item: Change | object) -> None:
        if not self._closed:
            self._queue.put_nowait(item)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._closed = True
            self._config._watches.discard(self)
            raise StopAsyncIteration
        assert isinstance(item, Change)
        return item

    async def aclose(self) -> None:
        """Stop receiving changes; iteration ends once those queued are taken."""
        self._config._watches.discard(self)
        self._put(_END)
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Config(Lifecycle, Generic[M]):
    """The settings ``model`` validated from ``sources`` (``default_sources()`` when not given:
    ``.env`` and ``MICRO_CONFIG_*`` variables), reloaded while started when a source's file
    changes (``watchfiles``) or a source reports a change (the store source polls).

    ``value`` is the model in force; ``source_of(path)`` names the source that set a value;
    ``watch(path)`` and ``on_change(callback)`` follow changes. ``start()`` raises
    ``ConfigError`` when the first load fails; ``start``/``stop`` are idempotent.
    """

    def __init__(
        self,
        model: type[M],
        *,
        sources: Sequence[Source] | None = None,
        watch_files: bool = True,
        force_polling: bool | None = None,
    ) -> None:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"Config takes a pydantic model class, got {model!r}")
        self.model = model
        self.sources: list[Source] = list(default_sources() if sources is None else sources)
        self._rank = {DEFAULTS: 0}
        for rank, source in enumerate(self.sources, 1):
            if source.name in self._rank:
                raise ValueError(f"two config sources are named {source.name!r}")
            self._rank[source.name] = rank
        self.watch_files = watch_files
        self.force_polling = force_polling
        self._snapshot: _Snapshot[M] | None = None
        self._watches: set[Watch[M]] = set()
        self._callbacks: dict[int, tuple[str, Callback]] = {}
        self._callback_tasks: dict[int, asyncio.Task[None]] = {}
        self._keys = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self._started = False

    # -- reading ------------------------------------------------------------------------------

    @property
    def value(self) -> M:
        """The validated config in force."""
        return self._require().value

    def source_of(self, path: str = "") -> str:
        """The name of the source that set the value at ``path`` (``"defaults"`` when none
        did); for a model, the highest of the sources that set any value inside it."""
        snapshot = self._require()
        check_path(self.model, path)
        found = [
            source
            for leaf, source in snapshot.provenance.items()
            if not path or leaf == path or leaf.startswith(f"{path}.")
        ]
        if not found:
            value_at(snapshot.value, path)  # raises LookupError for a path with no value
            return lookup(snapshot.provenance, path) or DEFAULTS
        return max(found, key=self._rank.__getitem__)

    def settings(self) -> list[Setting]:
        """Every leaf of the config with its source, in field order; secrets are marked."""
        snapshot = self._require()
        return [
            Setting(path, value, snapshot.provenance[path], is_secret(path, value))
            for path, value in flatten(snapshot.value).items()
        ]

    # -- following changes --------------------------------------------------------------------

    def watch(self, path: str = "") -> Watch[M]:
        """The changes of the value at ``path`` (``""``: the whole config) from now on."""
        check_path(self.model, path)
        return Watch(self, path)

    def on_change(self, callback: Callback, path: str = "") -> Callable[[], None]:
        """Call ``callback(change)`` for each change at ``path``, in order, while started; a
        failing callback is logged. Returns a function that unsubscribes it."""
        check_path(self.model, path)
        key = next(self._keys)
        self._callbacks[key] = (path, callback)
        if self._started:
            self._start_callback(key)

        def unsubscribe() -> None:
            self._callbacks.pop(key, None)
            task = self._callback_tasks.pop(key, None)
            if task is not None:
                task.cancel()

        return unsubscribe

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load and validate (``ConfigError`` if that fails), then follow the sources."""
        async with self._lock:
            if self._started:
                return
            async with self._reload_lock:
                self._snapshot = await self._load()
            self._dirty.clear()
            self._stopping.clear()
            self._tasks = [asyncio.create_task(self._reloader(), name="config reloader")]
            if self.watch_files:
                watching = asyncio.Event()
                self._tasks.append(
                    asyncio.create_task(self._watch_files(watching), name="config files")
                )
                await watching.wait()
            for source in self.sources:
                self._tasks.append(
                    asyncio.create_task(self._follow(source), name=f"config {source.name}")
                )
            self._started = True
            for key in self._callbacks:
                self._start_callback(key)

    async def stop(self) -> None:
        """Stop following the sources and end every watch; ``value`` stays readable."""
        async with self._lock:
            if not self._started:
                return
            self._started = False
            self._stopping.set()
            tasks = [*self._tasks, *self._callback_tasks.values()]
            self._tasks, self._callback_tasks = [], {}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for source in self.sources:
                try:
                    await source.aclose()
                except Exception:
                    logger.exception("closing %s failed", source.name)
            for watch in list(self._watches):
                await watch.aclose()

    async def reload(self) -> bool:
        """Load every source now and put the result in force if it validates; ``False`` (and
        a warning logged) when it does not, keeping the config in force."""
        async with self._reload_lock:
            try:
                snapshot = await self._load()
            except ConfigError as exc:
                logger.warning("config change rejected, keeping the config in force: %s", exc)
                return False
            old, self._snapshot = self._snapshot, snapshot
            if old is not None:
                self._announce(old, snapshot)
            return True

    def __repr__(self) -> str:
        names = ", ".join(source.name for source in self.sources)
        return f"Config({self.model.__name__}, sources=[{names}])"

    # -- internals ----------------------------------------------------------------------------

    def _require(self) -> _Snapshot[M]:
        if self._snapshot is None:
            raise RuntimeError("the config is not loaded yet: await config.start() first")
        return self._snapshot

    async def _load(self) -> _Snapshot[M]:
        data: dict[str, Any] = {}
        provenance: dict[str, str] = {}
        for source in self.sources:
            merge(data, await source.load(self.model), source.name, provenance)
        try:
            value = self.model.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_reasons(self.model, exc, provenance)) from None
        leaves = flatten(value)
        return _Snapshot(value, {path: lookup(provenance, path) or DEFAULTS for path in leaves})

    def _announce(self, old: _Snapshot[M], new: _Snapshot[M]) -> None:
        before, after = flatten(old.value), flatten(new.value)
        changed = [
            path
            for path in [*before, *(path for path in after if path not in before)]
            if path not in before or path not in after or before[path] != after[path]
        ]
        if not changed:
            return
        for path in changed:
            logger.info(
                "config %s: %r -> %r (%s)",
                path,
                mask(path, before.get(path)),
                mask(path, after.get(path)),
                new.provenance.get(path, DEFAULTS),
            )
        for watch in list(self._watches):
            paths = tuple(path for path in changed if _within(path, watch.path))
            if not paths:
                continue
            source = max(
                (new.provenance.get(path, DEFAULTS) for path in paths), key=self._rank.__getitem__
            )
            watch._put(
                Change(
                    watch.path,
                    _value_or_none(old, watch.path),
                    _value_or_none(new, watch.path),
                    source,
                    paths,
                )
            )

    async def _reloader(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reload()
            except Exception:
                logger.exception("config reload failed; keeping the config in force")

    async def _follow(self, source: Source) -> None:
        try:
            async for _ in source.changes():
                self._dirty.set()
        except Exception:
            logger.exception("%s stopped reporting changes", source.name)

    async def _watch_files(self, watching: asyncio.Event) -> None:
        """Set ``watching`` once changes are caught: ``awatch`` sets up its watcher before it
        first suspends, and ``watching.wait()`` returns no sooner than that."""
        targets: set[Path] = set()
        for source in self.sources:
            for path in source.files:
                if path.parent.is_dir():
                    targets.add(path.parent.resolve() / path.name)
        watching.set()
        if not targets:
            return
        directories = sorted({str(path.parent) for path in targets})
        try:
            async for _ in awatch(
                *directories,
                watch_filter=lambda _change, path: Path(path) in targets,
                stop_event=self._stopping,
                recursive=False,
                force_polling=self.force_polling,
                step=20,
            ):
                self._dirty.set()
        except Exception:
            logger.exception("config file watching stopped (%s)", ", ".join(directories))

    def _start_callback(self, key: int) -> None:
        path, callback = self._callbacks[key]
        watch = self.watch(path)
        self._callback_tasks[key] = asyncio.create_task(
            self._run_callback(callback, watch), name=f"config callback {callback!r}"
        )

    async def _run_callback(self, callback: Callback, watch: Watch[M]) -> None:
        try:
            async for change in watch:
                try:
                    result = callback(change)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("config callback %r failed on %s", callback, change.path)
        finally:
            with contextlib.suppress(Exception):
                await watch.aclose()


def _within(leaf: str, path: str) -> bool:
    return not path or leaf == path or leaf.startswith(f"{path}.") or path.startswith(f"{leaf}.")


def _value_or_none(snapshot: _Snapshot[Any], path: str) -> Any:
    try:
        return value_at(snapshot.value, path)
    except LookupError:
        return None


def _reasons(model: type[BaseModel], exc: ValidationError, provenance: dict[str, str]) -> str:
    reasons = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        path = ".".join(str(part) for part in error["loc"])
        source = lookup(provenance, path) if path else None
        origin = f" (from {source})" if source else ""
        reasons.append(f"{path or model.__name__}: {error['msg']}{origin}")
    return f"{model.__name__} does not validate: " + "; ".join(reasons)

"""After start-up, leave what start-up made out of the garbage collector's rounds.

CPython's cyclic garbage collector walks every container object it tracks in a full
collection, and a full collection comes whenever enough objects have survived since the
last one. A server's start-up leaves hundreds of thousands of objects that live as long as the
process (modules, models, routes, the registry's records); each call leaves a few survivors
(what calls in flight hold), so under load full collections come over and over and walk the
whole start-up heap each time. ``gc.freeze()`` moves the objects alive now to a permanent
generation that collections skip; reference counting still frees them. Measured on
``asgi-micro api`` under load (``perf``, one run each): the collector's three busiest functions
took 9.6% of the gateway's CPU, 4.7% with the heap frozen (``benchmarks/gateway.py``,
``--no-gc-freeze``, compares the throughput).

The cost: an object frozen now that later becomes part of unreachable cycles is never
collected. Start-up objects live for the process's life, so this is the trade servers such as
Instagram's make; it is process-wide, so it is the process owner's choice:
``MICRO_GC_FREEZE=true`` (``asgi-micro run`` and ``asgi-micro api`` set it unless it is set).
"""

from __future__ import annotations

import gc
import logging

__all__ = ["freeze_startup_heap"]

logger = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect what start-up left unreachable, then freeze the rest; the number of objects
    the collector now skips."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("froze %d objects of the start-up heap", frozen)
    return frozen

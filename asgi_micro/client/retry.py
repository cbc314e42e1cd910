"""When a failed call is tried again, and after how long.

A request is retried only when repeating it is safe:

- ``ConnectionFailed``: nothing was sent, so any request may go to another node;
- for an idempotent endpoint also ``ConnectionLost`` (it may have been processed, which is
  harmless for it) and the statuses 408, 502, 503 and 504.

Retries go to a node not tried yet when there is one, after an exponential backoff with full
jitter, and never past the caller's deadline: a delay that would end after it ends the loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import ConnectionFailed, ConnectionLost, MicroError

__all__ = ["RETRYABLE_STATUSES", "Backoff", "retryable"]

RETRYABLE_STATUSES = frozenset({408, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Backoff:
    """``initial * multiplier ** (retry - 1)``, capped at ``maximum``, drawn uniformly from zero
    up to that (full jitter, so that many clients retrying do not retry in step)."""

    initial: float = 0.01
    multiplier: float = 2.0
    maximum: float = 1.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.multiplier < 1 or self.maximum < self.initial:
            raise ValueError("need 0 <= initial <= maximum and multiplier >= 1")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** max(retry - 1, 0))
        return random.uniform(0, ceiling)


def retryable(error: MicroError, *, idempotent: bool, from_client: str) -> bool:
    """Whether ``error`` allows another attempt; ``from_client`` is the id the client gives its
    own errors (its own timeout means the deadline is spent, which no retry can help)."""
    if isinstance(error, ConnectionFailed):
        return True
    if not idempotent:
        return False
    if isinstance(error, ConnectionLost):
        return True
    return error.code in RETRYABLE_STATUSES and error.id != from_client

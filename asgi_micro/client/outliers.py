"""Outlier ejection: a node that keeps failing is left out of selection for a while.

After ``consecutive_failures`` transport failures in a row (it refused or dropped connections)
a node is ejected for ``base_ejection`` seconds, doubled at each ejection in a row up to
``max_ejection``. When the time is up it is eligible again, on probation: one more failure ejects
it again at once, one success clears its record. If every candidate is ejected the selector
ignores ejection rather than failing fast forever, as Envoy's panic threshold does.

Only failures of the node itself count: a 4xx or 5xx the node answered with says the node is up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..registry import Node

__all__ = ["OutlierDetector"]

_MAX_TRACKED = 1024


@dataclass(slots=True)
class _Record:
    failures: int = 0
    ejections: int = 0  # in a row; sets the length of the next one
    ejected_until: float = 0.0


class OutlierDetector:
    def __init__(
        self,
        *,
        consecutive_failures: int = 3,
        base_ejection: float = 1.0,
        max_ejection: float = 30.0,
    ) -> None:
        if consecutive_failures < 1 or base_ejection <= 0 or max_ejection < base_ejection:
            raise ValueError("need consecutive_failures >= 1 and 0 < base_ejection <= max_ejection")
        self.consecutive_failures = consecutive_failures
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self._nodes: dict[str, _Record] = {}

    def failed(self, node: Node) -> None:
        if len(self._nodes) > _MAX_TRACKED:
            self._prune()
        record = self._nodes.setdefault(node.id, _Record())
        record.failures += 1
        on_probation = record.ejections > 0
        if record.failures >= self.consecutive_failures or on_probation:
            duration = min(self.base_ejection * 2**record.ejections, self.max_ejection)
            record.ejected_until = time.monotonic() + duration
            record.ejections += 1
            record.failures = 0

    def _prune(self) -> None:
        """Forget nodes long past their ejection: most are gone from the registry."""
        horizon = time.monotonic() - self.max_ejection
        for node_id, record in list(self._nodes.items()):
            if record.ejected_until < horizon:
                del self._nodes[node_id]

    def succeeded(self, node: Node) -> None:
        if node.id in self._nodes:
            del self._nodes[node.id]

    def ejected(self, node: Node, now: float | None = None) -> bool:
        record = self._nodes.get(node.id)
        if record is None:
            return False
        return (time.monotonic() if now is None else now) < record.ejected_until

    def eligible(self, nodes: Sequence[Node]) -> Sequence[Node]:
        """``nodes`` without the ejected ones; all of them when every one is ejected."""
        if not self._nodes:
            return nodes
        now = time.monotonic()
        healthy = [node for node in nodes if not self.ejected(node, now)]
        return healthy or nodes

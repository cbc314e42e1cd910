"""Choosing a node: filters narrow the candidates, a strategy picks one.

A strategy is a small object with one method, ``pick(service, nodes, load)``; ``load(node)`` is
the number of requests this client has outstanding on the node. Four come with the package:

    Random                 uniform; the default, as in Go Micro
    RoundRobin             each node in turn, per service
    LeastOutstanding       the node with the fewest requests in flight from this client
    PowerOfTwoChoices      the less loaded of two random nodes: nearly as even, far cheaper to keep
"""

from __future__ import annotations

import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence

from ..registry import Node
from ..registry import Service as ServiceRecord

__all__ = [
    "STRATEGIES",
    "LeastOutstanding",
    "PowerOfTwoChoices",
    "Random",
    "RoundRobin",
    "Strategy",
    "candidates",
    "strategy_named",
]

Load = Callable[[Node], int]


class Strategy(ABC):
    @abstractmethod
    def pick(self, service: str, nodes: Sequence[Node], load: Load) -> Node:
        """One of ``nodes`` (never empty) for a call to ``service``."""


class Random(Strategy):
    def pick(self, service: str, nodes: Sequence[Node], load: Load) -> Node:
        return random.choice(nodes)


class RoundRobin(Strategy):
    def __init__(self) -> None:
        self._turns: dict[str, Iterator[int]] = {}

    def pick(self, service: str, nodes: Sequence[Node], load: Load) -> Node:
        turn = self._turns.get(service)
        if turn is None:
            turn = self._turns[service] = itertools.count(random.randrange(1 << 16))
        # Sorted so that the turn walks the same order while the node set is unchanged.
        ordered = sorted(nodes, key=lambda node: node.id)
        return ordered[next(turn) % len(ordered)]


class LeastOutstanding(Strategy):
    def pick(self, service: str, nodes: Sequence[Node], load: Load) -> Node:
        lowest = min(load(node) for node in nodes)
        return random.choice([node for node in nodes if load(node) == lowest])


class PowerOfTwoChoices(Strategy):
    def pick(self, service: str, nodes: Sequence[Node], load: Load) -> Node:
        if len(nodes) == 1:
            return nodes[0]
        first, second = random.sample(list(nodes), 2)
        return first if load(first) <= load(second) else second


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "random": Random,
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
    "p2c": PowerOfTwoChoices,
}


def strategy_named(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; expected one of {sorted(STRATEGIES)}"
        ) from None


def candidates(
    records: Sequence[ServiceRecord],
    *,
    version: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Node]:
    """The nodes of ``records`` at ``version`` (every version if ``None``) whose metadata has
    every label in ``labels``."""
    nodes = []
    for record in records:
        if version is not None and record.version != version:
            continue
        for node in record.nodes:
            if labels and any(node.metadata.get(key) != value for key, value in labels.items()):
                continue
            nodes.append(node)
    return nodes

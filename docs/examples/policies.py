from typing import Any

from asgi_micro import Service
from asgi_micro.client import ClientCall
from asgi_micro.client.policies import Breaker, Bulkhead, Policies, Policy, RetryBudget
from asgi_micro.errors import MicroError


async def cached_stock(call: ClientCall, error: MicroError) -> dict[str, Any]:
    # The reply when inventory is unavailable (no node, an open breaker, a full bulkhead...).
    return {"items": [], "stale": True}


POLICIES = Policies(
    {
        "inventory": Policy(
            timeout=2.0,
            breaker=Breaker(failure_rate=0.5, min_calls=20, window=10, open_for=5, probes=1),
            retry_budget=RetryBudget(ratio=0.2, min_per_second=10, window=10),
            fallback=cached_stock,
        ),
        # An endpoint's policy beats its service's, field by field.
        "inventory/Inventory.Reserve": Policy(retries=0, bulkhead=Bulkhead(max_concurrent=8)),
    },
    default=Policy(timeout=3.0),
)


def configure(service: Service) -> None:
    service.client.policies = POLICIES  # or MICRO_POLICIES in the environment

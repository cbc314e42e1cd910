from asgi_micro import Service
from asgi_micro.client.outliers import OutlierDetector
from asgi_micro.client.retry import Backoff
from asgi_micro.client.selector import RoundRobin


async def configure(service: Service) -> None:
    client = service.client
    client.strategy = RoundRobin()  # or "random", "least_outstanding", "p2c"
    client.retries = 3  # extra attempts, each on another node when there is one
    client.backoff = Backoff(initial=0.02, maximum=0.5)
    client.outliers = OutlierDetector(consecutive_failures=3, base_ejection=1.0)


async def stock(service: Service, sku: str) -> dict[str, object]:
    # Only version 2 nodes in zone "eu-1"; the whole call, retries included, within 1 s.
    reply: dict[str, object] = await service.client.call(
        "inventory",
        "Inventory.Get",
        {"sku": sku},
        timeout=1.0,
        version="2.0.0",
        labels={"zone": "eu-1"},
    )
    return reply


async def plain_route(service: Service) -> int:
    # An httpx.AsyncClient whose hosts are service names.
    async with service.http() as http:
        response = await http.get("http://inventory/items/1")
        return response.status_code

from pydantic import BaseModel

from asgi_micro import Service, errors


class HelloRequest(BaseModel):
    name: str


class HelloResponse(BaseModel):
    message: str


async def greet(service: Service, name: str) -> str:
    try:
        reply = await service.client.call(
            "greeter",
            "Greeter.Hello",
            HelloRequest(name=name),
            response_model=HelloResponse,
            timeout=2.0,
            metadata={"tenant": "acme"},  # sent as Micro-Tenant, and onwards
        )
    except errors.BadRequest as exc:  # the server's 400, raised again here
        return f"invalid: {exc.detail}"
    return reply.message

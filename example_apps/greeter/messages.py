"""The greeter's messages, shared with its callers."""

from pydantic import BaseModel, Field


class HelloRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class HelloResponse(BaseModel):
    message: str

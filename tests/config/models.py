"""The settings models the config tests load."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class DB(BaseModel):
    host: str = "localhost"
    pool: int = Field(default=5, ge=1)
    password: SecretStr = SecretStr("default-password")


class Settings(BaseModel):
    db: DB = DB()
    greeting: str = "hi"
    api_token: str = ""
    tags: list[str] = []


class Layers(BaseModel):
    """One field per source, each set by that source and every source below it."""

    from_toml: str = "default"
    from_yaml: str = "default"
    from_json: str = "default"
    from_dotenv: str = "default"
    from_env: str = "default"
    from_store: str = "default"
    untouched: str = "default"

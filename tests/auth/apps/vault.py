"""A service that handles secrets, logging everything (DEBUG, every logger) to stderr: logs
in (``Vault.Login``: an account's id and secret for tokens), refreshes (``Vault.Refresh``) and
says who the caller is (``Vault.Me``, after calling itself through the registry with its own
token). ``IDENTITY_VAULT`` names it.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.fastapi import Account, Context
from tests.auth.apps.common import Ask, Replies, Seen, seen

logging.basicConfig(level=logging.DEBUG)

service = Service(os.environ["IDENTITY_VAULT"])
router = MicroRouter("Vault")


class Credentials(BaseModel):
    id: str
    secret: str


class Refresh(BaseModel):
    refresh_token: str


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str


@router.rpc()
async def login(req: Credentials) -> TokenPair:
    tokens = await service.auth.token(id=req.id, secret=req.secret)
    return TokenPair(access_token=tokens.access_token, refresh_token=tokens.refresh_token)


@router.rpc()
async def refresh(req: Refresh) -> TokenPair:
    tokens = await service.auth.token(refresh_token=req.refresh_token)
    return TokenPair(access_token=tokens.access_token, refresh_token=tokens.refresh_token)


@router.rpc(idempotent=True)
async def me(req: Ask, account: Account) -> Replies:
    """The caller's account, and what ``Vault.Echo`` saw of the vault calling it."""
    mine = Seen(node=service.id, note=req.note, account=account.id, account_type=account.type)
    itself = await service.client.call(service.name, "Vault.Echo", req, response_model=Seen)
    return Replies(replies=[mine, itself])


@router.rpc(idempotent=True)
async def echo(req: Ask, ctx: Context) -> Seen:
    return seen(service, ctx, req.note)


app = FastAPI(lifespan=service.lifespan)
app.include_router(router)

"""A synchronous client for an ASGI app in this process (the serving API is plain ASGI)."""

from __future__ import annotations

import asyncio

import httpx


class Client:
    """A synchronous view of httpx's ASGI transport (one event loop per call)."""

    def __init__(self, app) -> None:
        self.app = app

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, path, **kw)

        return asyncio.run(go())

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        if body is not None:
            kw["json"] = body
        return self.request("POST", path, **kw)

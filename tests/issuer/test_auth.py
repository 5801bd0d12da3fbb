"""The admin bearer-token dependency, on a bare FastAPI app."""

import httpx
import pytest
from fastapi import Depends, FastAPI

from issuer.auth import admin_dependency

TOKEN = "s3cret-admin-token"


def _app(token: str | None) -> FastAPI:
    app = FastAPI()

    @app.get("/admin/ping", dependencies=[Depends(admin_dependency(token))])
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
async def test_refuses_missing_and_wrong_tokens(headers: dict[str, str]) -> None:
    transport = httpx.ASGITransport(app=_app(TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/admin/ping", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_accepts_the_token() -> None:
    transport = httpx.ASGITransport(app=_app(TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/admin/ping", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


async def test_no_configured_token_disables_admin() -> None:
    transport = httpx.ASGITransport(app=_app(None))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for value in ("Bearer ", "Bearer \0"):
            response = await client.get("/admin/ping", headers={"Authorization": value})
            assert response.status_code == 401

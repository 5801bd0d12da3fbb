"""The HTTP API, in-process: JWKS caching headers, metadata, admin errors and tokens."""

import httpx
import jwt
import pytest

from issuer.app import create_app
from issuer.authority import Authority
from subscriber.clock import ManualClock
from subscriber.jwk import PRIVATE_MEMBERS
from tests.issuer.conftest import ISSUER, make_settings


async def test_jwks_headers_and_no_private_member(
    http: httpx.AsyncClient, authority: Authority
) -> None:
    response = await http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=900"
    snapshot = await authority.snapshot()
    assert response.headers["etag"] == f'"{snapshot.epoch}.{snapshot.version}"'
    body = response.json()
    assert len(body["keys"]) == 1
    assert not any(PRIVATE_MEMBERS & key.keys() for key in body["keys"])
    assert body["keyherald"] == {
        "version": 2, "epoch": snapshot.epoch, "states": {body["keys"][0]["kid"]: "active"},
        "digest": snapshot.meta["digest"],
    }  # fmt: skip


async def test_jwks_304_on_matching_if_none_match(
    http: httpx.AsyncClient, authority: Authority
) -> None:
    etag = (await http.get("/.well-known/jwks.json")).headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}'):
        response = await http.get("/.well-known/jwks.json", headers={"If-None-Match": header})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
    await authority.rotate()
    response = await http.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert response.status_code == 200 and response.headers["etag"] != etag
    assert len(response.json()["keys"]) == 2


async def test_jwks_bytes_are_precomputed(http: httpx.AsyncClient, authority: Authority) -> None:
    first = await authority.jwks()
    assert await authority.jwks() is first  # same version: same object, not rebuilt
    await authority.rotate()
    assert await authority.jwks() is not first


async def test_openid_configuration(http: httpx.AsyncClient, authority: Authority) -> None:
    body = (await http.get("/.well-known/openid-configuration")).json()
    assert body["issuer"] == "https://issuer.test"
    assert body["jwks_uri"] == "https://issuer.test/.well-known/jwks.json"
    assert body["id_token_signing_alg_values_supported"] == ["ES256"]
    assert body["keyherald"]["stream"] == authority.store.stream_key
    (announce,) = body["keyherald"]["announcement_keys"]
    assert announce["kty"] == "OKP" and announce["crv"] == "Ed25519" and "d" not in announce


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/keys"), ("GET", "/admin/plan"), ("POST", "/admin/rotate"),
        ("POST", "/admin/keys/abc/activate"), ("POST", "/admin/keys/abc/retire"),
        ("POST", "/admin/keys/abc/revoke"), ("POST", "/admin/tokens"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "test-admin-token-0123456789"])
async def test_admin_refuses_missing_and_wrong_tokens(
    http: httpx.AsyncClient, method: str, path: str, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = await http.request(method, path, headers=headers, json={})
    assert response.status_code == 401


async def test_admin_errors(
    http: httpx.AsyncClient, admin_headers: dict[str, str], authority: Authority
) -> None:
    response = await http.post("/admin/keys/unknown-kid/activate", headers=admin_headers)
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_kid"
    active = (await authority.keys())[0].kid
    response = await http.post(f"/admin/keys/{active}/retire", headers=admin_headers)
    assert response.status_code == 409
    assert response.json()["error"] == "illegal_transition"
    response = await http.post("/admin/keys/not%20a%20kid/revoke", headers=admin_headers)
    assert response.status_code == 422


async def test_admin_keys_plan_and_rotate(
    http: httpx.AsyncClient, admin_headers: dict[str, str], clock: ManualClock
) -> None:
    plan = (await http.get("/admin/plan", headers=admin_headers)).json()
    add, activate = plan["transitions"][:2]
    assert add == {"action": "add", "at": clock() + 84 * 86_400, "kid": None}
    assert activate == {"action": "activate", "at": clock() + 90 * 86_400, "kid": None}
    rotated = await http.post("/admin/rotate", headers=admin_headers)
    assert rotated.status_code == 201
    assert rotated.json()["version"] == 3
    new = rotated.json()["keys"][0]
    assert new["state"] == "pending" and new["activate_at"] == clock() + 6 * 86_400
    keys = (await http.get("/admin/keys", headers=admin_headers)).json()
    assert [k["state"] for k in keys] == ["active", "pending"]
    assert all("sealed" not in k for k in keys)
    plan = (await http.get("/admin/plan", headers=admin_headers)).json()
    assert plan["transitions"][0] == {
        "action": "activate", "at": clock() + 6 * 86_400, "kid": new["kid"],
    }  # fmt: skip


async def test_admin_tokens(
    http: httpx.AsyncClient, admin_headers: dict[str, str], clock: ManualClock
) -> None:
    body = {"sub": "user-1", "aud": "api", "ttl_s": 300, "claims": {"scope": "read"}}
    response = await http.post("/admin/tokens", headers=admin_headers, json=body)
    assert response.status_code == 200
    minted = response.json()
    jwks = jwt.PyJWKSet.from_dict((await http.get("/.well-known/jwks.json")).json())
    claims = jwt.decode(
        minted["token"], jwks[minted["kid"]].key, algorithms=["ES256"], audience="api",
        issuer="https://issuer.test", options={"verify_exp": False, "verify_iat": False,
                                              "verify_nbf": False},
    )  # fmt: skip
    assert claims["exp"] == minted["exp"] == int(clock()) + 300
    assert claims["scope"] == "read" and claims["sub"] == "user-1"


@pytest.mark.parametrize(
    "body",
    [
        {"sub": "u", "aud": "api", "ttl_s": 3601},
        {"sub": "u", "aud": "api", "ttl_s": 0},
        {"sub": "u", "aud": "api", "ttl_s": 60, "claims": {"exp": 1}},
        {"sub": "u", "ttl_s": 60},
        {"sub": "u", "aud": "api", "ttl_s": 60, "unknown": 1},
    ],
)
async def test_admin_tokens_bad_input_is_422(
    http: httpx.AsyncClient, admin_headers: dict[str, str], body: dict[str, object]
) -> None:
    response = await http.post("/admin/tokens", headers=admin_headers, json=body)
    assert response.status_code == 422


async def test_openapi_and_docs_are_off_by_default(http: httpx.AsyncClient) -> None:
    assert (await http.get("/docs")).status_code == 404
    assert (await http.get("/openapi.json")).status_code == 404


async def test_openapi_documents_every_route(redis, clock) -> None:
    app = create_app(
        settings=make_settings(openapi_docs=True), redis=redis, clock=clock, run_scheduler=False
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as http:
        assert (await http.get("/docs")).status_code == 200
        spec = (await http.get("/openapi.json")).json()
        assert set(spec["paths"]) >= {
            "/.well-known/jwks.json", "/.well-known/openid-configuration", "/admin/keys",
            "/admin/plan", "/admin/rotate", "/admin/keys/{kid}/activate",
            "/admin/keys/{kid}/retire", "/admin/keys/{kid}/revoke", "/admin/tokens",
        }  # fmt: skip
        assert "HTTPBearer" in spec["components"]["securitySchemes"]
        responses = spec["paths"]["/admin/keys/{kid}/activate"]["post"]["responses"]
        assert {"200", "401", "404", "409", "422"} <= set(responses)
        assert "409" not in spec["paths"]["/admin/rotate"]["post"]["responses"]

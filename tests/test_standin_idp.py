"""The stand-in IdP over real HTTP on 127.0.0.1: caching headers, 304s, rotations, tokens."""

import time

import httpx
import pytest

from keyherald.standin_idp import DISCOVERY_PATH, JWKS_PATH, TOKEN_PATH, StandInIdP
from subscriber.errors import InvalidToken
from subscriber.provider_jwks import load_provider_jwks
from subscriber.verify import VerifyOptions, verify_token
from watcher.poller import UpstreamPoller
from watcher.upstream import UpstreamClient


async def test_discovery_jwks_caching_headers_and_conditional_requests() -> None:
    idp = StandInIdP(alg="PS256", max_age_s=120)
    async with idp.serve() as url, httpx.AsyncClient(base_url=url) as http:
        discovery = (await http.get(DISCOVERY_PATH)).json()
        assert discovery["issuer"] == url == idp.issuer
        assert discovery["jwks_uri"] == url + JWKS_PATH
        assert discovery["id_token_signing_alg_values_supported"] == ["PS256"]
        first = await http.get(JWKS_PATH)
        assert first.status_code == 200
        assert first.headers["cache-control"] == "public, max-age=120"
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        same = await http.get(JWKS_PATH, headers={"If-None-Match": etag})
        assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
        by_date = await http.get(JWKS_PATH, headers={"If-Modified-Since": modified})
        assert by_date.status_code == 304
        assert (await http.get(JWKS_PATH, headers={"If-None-Match": '"other"'})).status_code == 200
        assert idp.not_modified == 2
        idp.publish_next()
        changed = await http.get(JWKS_PATH, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert len(changed.json()["keys"]) == 2
        idp.fail_next(429, retry_after="30")
        limited = await http.get(JWKS_PATH)
        assert limited.status_code == 429 and limited.headers["retry-after"] == "30"
        assert (await http.get("/nope")).status_code == 404


@pytest.mark.parametrize("alg", ["RS256", "PS384", "ES512", "EdDSA"])
async def test_tokens_verify_with_the_published_keys_through_each_rotation_step(alg: str) -> None:
    idp = StandInIdP(alg=alg, issuer="https://idp.test")
    options = VerifyOptions(issuer="https://idp.test", audience="api")

    def verify(token: str) -> dict[str, object]:
        keys = load_provider_jwks(idp.jwks, advertised_algs=idp.advertised_algs).keys
        return verify_token(token, keys, options, idp._clock())

    old = idp.mint({"aud": "api", "sub": "a"})
    assert verify(old)["sub"] == "a"
    new = idp.publish_next()
    assert idp.mint({"aud": "api"}).split(".")[0] == old.split(".")[0]  # old key still signs
    idp.switch()
    token = idp.mint({"aud": "api", "sub": "b"})
    assert verify(token)["sub"] == "b" and verify(old)["sub"] == "a"
    assert idp.remove_old() != [new]
    with pytest.raises(InvalidToken) as info:
        verify(old)
    assert info.value.reason == "unknown_kid"


async def test_the_watcher_follows_it_over_real_http() -> None:
    idp = StandInIdP(alg="ES256", max_age_s=60)
    async with idp.serve() as url, httpx.AsyncClient() as http:
        poller = UpstreamPoller(UpstreamClient(http, issuer=url))
        assert [k.kid for k in (await poller.poll()).added] == [idp.signing.kid]
        kid = idp.rotate_at_once()
        assert [k.kid for k in (await poller.poll()).added] == [kid]
        assert not await poller.poll()
        assert idp.not_modified == 1 and poller.client.requests == 4  # discovery + 3 JWKS


async def test_the_token_endpoint_mints_with_the_signing_key_and_refuses_bad_bodies() -> None:
    idp = StandInIdP(alg="ES256")
    async with idp.serve() as url, httpx.AsyncClient(base_url=url) as http:
        answer = await http.post(TOKEN_PATH, json={"sub": "u", "aud": "api", "ttl_s": 5})
        assert answer.status_code == 200 and answer.json()["expires_in"] == 5
        token = answer.json()["access_token"]
        keys = load_provider_jwks(idp.jwks).keys
        claims = verify_token(token, keys, VerifyOptions(issuer=url, audience="api"), time.time())
        assert claims["exp"] - claims["iat"] == 5 and claims["sub"] == "u"
        kid = idp.rotate_at_once()
        token = (await http.post(TOKEN_PATH, json={"aud": "api"})).json()["access_token"]
        assert token.split(".")[0] == idp.mint({}).split(".")[0]  # the new key signs
        assert kid == idp.signing.kid
        assert (await http.post(TOKEN_PATH, content=b"[1]")).status_code == 400
        assert (await http.post(TOKEN_PATH, content=b"{" * 5000)).status_code == 413
        assert (await http.get(TOKEN_PATH)).status_code == 404

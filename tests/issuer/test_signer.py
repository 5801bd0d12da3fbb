"""The in-process Signer: the active key, the issuer's registered claims, bounded lifetimes."""

import jwt
import pytest

from issuer.authority import Authority
from issuer.signer import Signer
from subscriber.clock import ManualClock


def _header_kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def test_signs_with_the_active_key_and_follows_rotation(
    authority: Authority, clock: ManualClock
) -> None:
    signer = Signer(authority)
    first = await signer.mint({"sub": "a"})
    assert first.kid == _header_kid(first.token) == (await authority.keys())[0].kid
    new = (await authority.rotate()).events[0].kid
    assert (await signer.mint({"sub": "a"})).kid == first.kid  # pending keys never sign
    clock.advance(6 * 86_400)
    await authority.tick()
    assert _header_kid(await signer.sign({"sub": "a"})) == new


async def test_registered_claims(authority: Authority, clock: ManualClock) -> None:
    token = await Signer(authority).sign({"sub": "a", "aud": "api"}, ttl_s=120)
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(clock())
    assert claims == {"sub": "a", "aud": "api", "iss": "https://issuer.test", "iat": now,
                      "nbf": now, "exp": now + 120}  # fmt: skip
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "JWT" and header["alg"] == "ES256"


@pytest.mark.parametrize("ttl_s", [0, -1, 3_601])
async def test_ttl_is_bounded_by_the_policy(authority: Authority, ttl_s: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await Signer(authority).sign({"sub": "a"}, ttl_s=ttl_s)


@pytest.mark.parametrize("claim", ["iss", "exp", "iat", "nbf"])
async def test_reserved_claims_cannot_be_set(authority: Authority, claim: str) -> None:
    with pytest.raises(ValueError, match=claim):
        await Signer(authority).sign({"sub": "a", claim: 1})

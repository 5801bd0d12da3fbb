"""Minting tokens with the active key, for services that do not want an HTTP round trip.

::

    signer = Signer(authority)
    token = await signer.sign({"sub": "user-1", "aud": "api"}, ttl_s=300)

The JWS header carries ``alg``, ``kid`` and ``typ: JWT``; ``iss``, ``iat``, ``nbf`` and ``exp``
are set here and cannot be overridden.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from subscriber.jws import b64url_encode, compact_json
from subscriber.signatures import EC_CURVES

from .keygen import KeyPair

if TYPE_CHECKING:
    from .authority import Authority

#: Claims the signer sets itself.
RESERVED_CLAIMS = frozenset({"iss", "iat", "nbf", "exp"})


def sign_bytes(pair: KeyPair, signing_input: bytes) -> bytes:
    """The JWS signature of ``signing_input`` for ``pair.alg`` (RFC 7518 section 3).

    RSxxx is PKCS #1 v1.5, PSxxx is PSS with MGF1 and a salt as long as the hash, ESxxx is
    ``r || s`` at the curve's fixed width, EdDSA is Ed25519.
    """
    key, alg = pair.private_key, pair.alg
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(signing_input)
    algorithm = _HASHES[alg[2:]]
    if isinstance(key, rsa.RSAPrivateKey):
        if alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
            return key.sign(signing_input, pss, algorithm)
        return key.sign(signing_input, padding.PKCS1v15(), algorithm)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = EC_CURVES[alg][2]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(algorithm)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ValueError(f'key does not fit algorithm "{alg}"')


_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}


def encode_jwt(pair: KeyPair, claims: Mapping[str, Any]) -> str:
    """A compact JWS of ``claims`` signed by ``pair``."""
    header = {"alg": pair.alg, "kid": pair.kid, "typ": "JWT"}
    signing_input = f"{b64url_encode(compact_json(header))}.{b64url_encode(compact_json(claims))}"
    signature = sign_bytes(pair, signing_input.encode())
    return f"{signing_input}.{b64url_encode(signature)}"


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A signed token with the kid that signed it and its expiry (seconds since the epoch)."""

    token: str
    kid: str
    exp: int


class Signer:
    """Signs claims with whichever key is active when :meth:`sign` runs.

    :param authority: the issuer's :class:`~issuer.authority.Authority`.
    """

    def __init__(self, authority: "Authority") -> None:
        self.authority = authority

    async def sign(self, claims: Mapping[str, Any], *, ttl_s: float | None = None) -> str:
        """The compact JWT of :meth:`mint`."""
        return (await self.mint(claims, ttl_s=ttl_s)).token

    async def mint(self, claims: Mapping[str, Any], *, ttl_s: float | None = None) -> MintedToken:
        """Sign ``claims`` plus ``iss``, ``iat``, ``nbf`` and ``exp = iat + ttl_s``.

        :param ttl_s: lifetime; default and maximum is the policy's ``max_token_ttl_s``.
        :raises ValueError: ``ttl_s`` out of range, or ``claims`` sets a reserved claim.
        """
        max_ttl_s = self.authority.policy.max_token_ttl_s
        ttl = max_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= max_ttl_s:
            raise ValueError(f"ttl_s must be in (0, {max_ttl_s:g}], the input is {ttl_s}")
        reserved = RESERVED_CLAIMS & claims.keys()
        if reserved:
            raise ValueError(f"claims {sorted(reserved)} are set by the issuer")
        pair = await self.authority.signing_key()
        now = int(self.authority.clock())
        body = {**claims, "iss": self.authority.issuer, "iat": now, "nbf": now,
                "exp": now + int(ttl)}  # fmt: skip
        return MintedToken(token=encode_jwt(pair, body), kid=pair.kid, exp=body["exp"])

"""Key sets as hosted identity providers publish them: keep every key that is good, say why
each other one was left out.

:func:`~subscriber.jwk.load_jwks` is for keyherald's own issuer and refuses a whole set over
one bad key. A provider's set is another matter: Keycloak lists its encryption keys beside
(and before) its signing keys, Entra omits ``alg``, Yahoo still lists 1024-bit RSA keys next to
good EC ones, Battle.net spells ``n`` in padded standard base64. :func:`load_provider_jwks`
handles the class, not the file:

- a key for encryption (``use: enc``, or an encryption ``alg`` such as ``RSA-OAEP``) and a key
  type we do not verify with are skipped (``enc_key``, ``unsupported_key``);
- a missing ``alg`` is inferred only where it is unambiguous: an RSA key, and exactly one RSA
  algorithm among the issuer's ``id_token_signing_alg_values_supported`` (``missing_alg``
  otherwise); an EC or OKP key's curve always fixes it;
- weak keys (``weak_key``) and malformed encodings or an ``x5c`` certificate that holds another
  key (``bad_jwk``) are refused;
- two keys under one ``kid`` are both dropped (``duplicate_kid``): which one a token means
  would be an accident of ordering.

Each skipped key is logged with its reason and returned, so a watcher can count them; one
bad key never drops the set.
"""

import base64
import binascii
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import InvalidKey
from .jwk import RSA_ALGS, PublicKey, load_public_jwk

__all__ = ["ProviderKeys", "SkippedKey", "load_provider_jwks", "rsa_alg_hint"]

logger = logging.getLogger(__name__)

# JWE key-management algorithms (RFC 7518 section 4): a key labelled with one encrypts.
_ENCRYPTION_ALG_PREFIXES = ("RSA-OAEP", "RSA1_5", "ECDH-ES", "A128", "A192", "A256", "dir")
# Expected skips are logged at INFO, refusals (a provider publishing a bad key) at WARNING.
_QUIET_REASONS = frozenset({"enc_key", "unsupported_key"})


@dataclass(frozen=True, slots=True)
class SkippedKey:
    """A key of a provider's set that was left out, and why."""

    index: int
    kid: str | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ProviderKeys:
    """The usable keys of a provider's JWK Set, by ``kid``, and the keys left out."""

    keys: Mapping[str, PublicKey]
    skipped: tuple[SkippedKey, ...]


def rsa_alg_hint(advertised: Iterable[object] | None) -> str | None:
    """The algorithm of an RSA JWK without ``alg``, from what the issuer advertises.

    :param advertised: the discovery document's ``id_token_signing_alg_values_supported``.
    :returns: the one RSA algorithm in it, or ``None`` when it lists none or several (Auth0
        lists RS256 and PS256: an RSA key without ``alg`` there is ambiguous).
    """
    if advertised is None or isinstance(advertised, str):
        return None
    rsa = {a for a in advertised if isinstance(a, str) and a in RSA_ALGS}
    return rsa.pop() if len(rsa) == 1 else None


def load_provider_jwks(
    doc: Mapping[str, Any], *, advertised_algs: Iterable[object] | None = None
) -> ProviderKeys:
    """Parse a provider's JWK Set, keeping every key that loads.

    :param doc: the JWK Set document, ``{"keys": [...]}``.
    :param advertised_algs: the issuer's ``id_token_signing_alg_values_supported``, used only
        to infer the algorithm of an RSA key that names none (see :func:`rsa_alg_hint`).
    :raises InvalidKey: ``bad_jwk`` when the document itself is not a JWK Set.
    """
    entries = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list):
        raise InvalidKey("JWK Set has no 'keys' list", reason="bad_jwk")
    hint = rsa_alg_hint(advertised_algs)
    good: list[tuple[int, PublicKey]] = []
    skipped: list[SkippedKey] = []
    for index, jwk in enumerate(entries):
        try:
            good.append((index, _load_one(jwk, hint)))
        except InvalidKey as e:
            kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
            skipped.append(
                SkippedKey(index, kid if isinstance(kid, str) else None, e.reason, str(e))
            )
    counts = Counter(key.kid for _, key in good)
    loaded: dict[str, PublicKey] = {}
    for index, key in good:
        if counts[key.kid] > 1:
            detail = f"{counts[key.kid]} keys have this kid"
            skipped.append(SkippedKey(index, key.kid, "duplicate_kid", detail))
        else:
            loaded[key.kid] = key
    skipped.sort(key=lambda skip: skip.index)
    for skip in skipped:
        level = logging.INFO if skip.reason in _QUIET_REASONS else logging.WARNING
        logger.log(
            level,
            "provider key %s left out: %s (%s)",
            skip.kid if skip.kid is not None else f"#{skip.index}",
            skip.reason,
            skip.detail,
            extra={"kid": skip.kid, "reason": skip.reason},
        )
    return ProviderKeys(keys=loaded, skipped=tuple(skipped))


def _load_one(jwk: Any, hint: str | None) -> PublicKey:
    if not isinstance(jwk, Mapping):
        raise InvalidKey("key is not a JSON object", reason="bad_jwk")
    use, alg = jwk.get("use"), jwk.get("alg")
    if use == "enc" or (isinstance(alg, str) and alg.startswith(_ENCRYPTION_ALG_PREFIXES)):
        raise InvalidKey(f"an encryption key (use {use!r}, alg {alg!r})", reason="enc_key")
    key = load_public_jwk(jwk, default_alg=hint)
    if "x5c" in jwk:
        _check_x5c(jwk["x5c"], key)
    return key


def _check_x5c(chain: Any, key: PublicKey) -> None:
    """The first certificate of ``x5c`` (RFC 7517 4.7) must hold the JWK's own key.

    Verification uses ``n``/``e`` or ``x``/``y``, never the certificate; a set whose two
    spellings of one key disagree was assembled wrongly, and neither can be trusted.
    """
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        raise InvalidKey("x5c is not a non-empty list of strings", reason="bad_jwk")
    try:
        # x5c is standard base64 with padding, unlike every other JWK member.
        der = base64.b64decode(chain[0], validate=True)
        certificate = x509.load_der_x509_certificate(der)
        spki = certificate.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
    except (binascii.Error, ValueError) as e:
        raise InvalidKey("x5c[0] is not a DER certificate in base64", reason="bad_jwk") from e
    if spki != key.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo):
        raise InvalidKey("x5c[0] certifies another key than the JWK's", reason="bad_jwk")

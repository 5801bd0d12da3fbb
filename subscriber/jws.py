"""Strict primitives for compact JWS: base64url and JSON exactly as RFC 7515 writes them.

Lenient decoders are an attack surface (two spellings of one token, duplicate claims read
differently by two parsers), so these refuse anything but the canonical form:

- base64url with no padding, no characters outside ``A-Z a-z 0-9 - _``, and zero trailing bits;
- JSON objects with no duplicate member names and no ``NaN``/``Infinity``.
"""

import binascii
import json
from typing import Any

from .errors import MalformedToken

# base64url -> standard alphabet; the standard-only characters and padding map to a byte
# a2b_base64 refuses in strict mode, so they can never slip through.
_URLSAFE_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
# Mask of the bits the last character of a segment of length 2 or 3 (mod 4) must leave zero.
_TRAILING_MASK = {2: 0x0F, 3: 0x03}
_PAD = ("", "", "==", "=")


def b64url_encode(data: bytes) -> str:
    """Base64url without padding."""
    return binascii.b2a_base64(data, newline=False).decode().translate(_TO_URLSAFE).rstrip("=")


_TO_URLSAFE = str.maketrans("+/", "-_")


def b64url_decode(segment: str) -> bytes:
    """Decode canonical base64url or raise :class:`MalformedToken`."""
    rem = len(segment) % 4
    if rem == 1:
        raise MalformedToken("base64url segment has an impossible length", reason="malformed")
    try:
        raw = segment.encode("ascii").translate(_URLSAFE_TO_STD)
        decoded = binascii.a2b_base64(raw + _PAD[rem].encode(), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise MalformedToken("segment is not base64url", reason="malformed") from e
    if rem and _INDEX[segment[-1]] & _TRAILING_MASK[rem]:
        raise MalformedToken("non-canonical base64url (trailing bits set)", reason="malformed")
    return decoded


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise MalformedToken("duplicate JSON member name", reason="malformed")
    return obj


def _no_constant(name: str) -> Any:
    raise MalformedToken(f"JSON constant {name} is not allowed", reason="malformed")


def strict_json_object(data: bytes) -> dict[str, Any]:
    """Parse a JSON object, refusing duplicate names, non-UTF-8 and ``NaN``/``Infinity``."""
    try:
        obj = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise MalformedToken("segment is not a JSON object", reason="malformed") from e
    if not isinstance(obj, dict):
        raise MalformedToken("segment is not a JSON object", reason="malformed")
    return obj


def compact_json(obj: Any) -> bytes:
    """The JSON encoding we sign: UTF-8, no whitespace, keys sorted (stable bytes)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()

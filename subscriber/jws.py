"""Strict primitives for compact JWS: base64url and JSON exactly as RFC 7515 writes them.

Lenient decoders are an attack surface (two spellings of one token, duplicate claims read
differently by two parsers), so these refuse anything but the canonical form:

- base64url with no padding, no characters outside ``A-Z a-z 0-9 - _``, and zero trailing bits;
- JSON objects with no duplicate member names and no ``NaN``/``Infinity``.

JSON is read by orjson first when its own encoding of the result gives back the input bytes
exactly (the compact form every JWT library writes), and by the standard library's decoder,
with a duplicate check, otherwise; both paths give the same answer.
"""

import binascii
import json
from collections.abc import Callable
from typing import Any

import orjson

from .errors import MalformedToken

#: ``bytes.translate`` table from base64url to the standard alphabet. The standard-only
#: characters and padding map to a byte a2b_base64 refuses in strict mode, so they can never
#: slip through; every other byte is left alone (a compact JWS keeps its dots and length).
URLSAFE_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_STD_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Value of each character of a translated segment, indexed by byte; other bytes never reach
# the lookup because a2b_base64 refuses them first.
_VALUE = bytes(_STD_ALPHABET.index(b) if b in _STD_ALPHABET else 0 for b in range(256))
# Mask of the bits the last character of a segment of length 2 or 3 (mod 4) must leave zero:
# a2b_base64 ignores them even in strict mode, so "QQ" and "QR" would both decode to b"A".
_TRAILING_MASK = (0, 0, 0x0F, 0x03)
_PAD = (b"", b"", b"==", b"=")
_a2b = binascii.a2b_base64


def b64url_encode(data: bytes) -> str:
    """Base64url without padding."""
    return binascii.b2a_base64(data, newline=False).decode().translate(_TO_URLSAFE).rstrip("=")


_TO_URLSAFE = str.maketrans("+/", "-_")


def b64url_decode_ascii(segment: bytes) -> bytes:
    """Decode canonical base64url given as ASCII bytes, or raise :class:`MalformedToken`."""
    return b64_std_decode(segment.translate(URLSAFE_TO_STD))


def b64_std_decode(segment: bytes) -> bytes:
    """:func:`b64url_decode_ascii` of a segment already mapped through :data:`URLSAFE_TO_STD`.

    The hot path translates a whole token at once and decodes its segments with this.
    """
    rem = len(segment) & 3
    if rem == 1:
        raise MalformedToken("base64url segment has an impossible length", reason="malformed")
    try:
        decoded = _a2b(segment + _PAD[rem], strict_mode=True)
    except binascii.Error as e:
        raise MalformedToken("segment is not base64url", reason="malformed") from e
    if rem and _VALUE[segment[-1]] & _TRAILING_MASK[rem]:
        raise MalformedToken("non-canonical base64url (trailing bits set)", reason="malformed")
    return decoded


def b64_std_decode_pair(first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """:func:`b64_std_decode` of two segments in one call (a JWS payload and signature).

    The verification hot path pays for every Python call, so this is the same rules inlined.
    """
    rem1, rem2 = len(first) & 3, len(second) & 3
    if rem1 == 1 or rem2 == 1:
        raise MalformedToken("base64url segment has an impossible length", reason="malformed")
    try:
        decoded1 = _a2b(first + _PAD[rem1], strict_mode=True)
        decoded2 = _a2b(second + _PAD[rem2], strict_mode=True)
    except binascii.Error as e:
        raise MalformedToken("segment is not base64url", reason="malformed") from e
    if (rem1 and _VALUE[first[-1]] & _TRAILING_MASK[rem1]) or (
        rem2 and _VALUE[second[-1]] & _TRAILING_MASK[rem2]
    ):
        raise MalformedToken("non-canonical base64url (trailing bits set)", reason="malformed")
    return decoded1, decoded2


def b64url_decode(segment: str) -> bytes:
    """Decode canonical base64url or raise :class:`MalformedToken`."""
    try:
        raw = segment.encode("ascii")
    except UnicodeEncodeError as e:
        raise MalformedToken("segment is not base64url", reason="malformed") from e
    return b64url_decode_ascii(raw)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise MalformedToken("duplicate JSON member name", reason="malformed")
    return obj


def _no_constant(name: str) -> Any:
    raise MalformedToken(f"JSON constant {name} is not allowed", reason="malformed")


# One decoder for the process: json.loads with keyword arguments builds a new one per call,
# which costs more than parsing a typical claims set. Calling its scanner directly also skips
# the two whitespace regex matches JSONDecoder.decode makes around every document.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_JSON_WHITESPACE = " \t\n\r"
_fast_loads = orjson.loads
_fast_dumps = orjson.dumps


def strict_json_object(data: bytes) -> dict[str, Any]:
    """Parse a JSON object, refusing duplicate names, non-UTF-8 and ``NaN``/``Infinity``.

    Numbers too large for a float (``1e400``) parse as infinity; callers that read numbers
    must check they are finite.
    """
    # orjson keeps the last of two duplicate names, so its result is trusted only when
    # re-encoding it gives back the input: an encoded dict never repeats a name, and orjson's
    # output (escapes, numbers, no whitespace) reads the same in the strict decoder. Anything
    # else, including what orjson refuses or would round (a 30-digit integer), goes the slow
    # way. About three times faster on a typical claims set.
    try:
        obj = _fast_loads(data)
        if type(obj) is dict and _fast_dumps(obj) == data:
            return obj
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass  # e.g. nesting deeper than orjson encodes: the strict decoder decides
    return _strict_json_object(data)


def _strict_json_object(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        if text[:1] == "{":
            obj, end = _SCAN(text, 0)
            if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
                raise MalformedToken("trailing data after the JSON object", reason="malformed")
        else:
            obj = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError, StopIteration) as e:
        # JSONDecodeError is a ValueError, and so is int() refusing a 5,000-digit number;
        # the scanner raises StopIteration when no value starts where it looks.
        raise MalformedToken("segment is not a JSON object", reason="malformed") from e
    if type(obj) is not dict:
        raise MalformedToken("segment is not a JSON object", reason="malformed")
    return obj


def compact_json(obj: Any) -> bytes:
    """The JSON encoding we sign: UTF-8, no whitespace, keys sorted (stable bytes)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()

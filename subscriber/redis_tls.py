"""What a failed TLS connection to Redis means, and which option of the URL fixes it.

redis-py reports every failed connection as a ``ConnectionError`` (the ``ssl.SSLError`` is its
context, or only its text once Sentinel has summed up its attempts). A TLS failure is a
configuration problem, not an outage: no retry fixes it, and nothing is tried over plaintext
instead. :func:`tls_failure` turns it into a :class:`RedisTlsError` whose ``reason`` says
which one:

- ``untrusted_certificate``: the server's certificate does not chain to ``ssl_ca_certs``
- ``name_mismatch``: the certificate does not list the host or address connected to
- ``client_certificate_required``: the server requires one (``tls-auth-clients yes``)
- ``client_certificate_refused``: the server does not trust the one sent
- ``tls_failed``: any other handshake failure
"""

import re
import ssl

from .redis_conn import RedisConfigError

_SSL_ERROR = re.compile(r"\[SSL: (?P<code>\w+)\] (?P<detail>.*?)\s*\(_ssl\.c:\d+\)")

#: OpenSSL's reason code -> (reason, what happened, what to change). TLS 1.2 has no
#: certificate-required alert: a missing client certificate is a generic handshake failure.
_CAUSES: dict[str, tuple[str, str, str]] = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        "client_certificate_required",
        "Redis requires a client certificate (tls-auth-clients yes)",
        "add ssl_certfile= and ssl_keyfile= to the URL",
    ),
    "TLSV1_ALERT_UNKNOWN_CA": (
        "client_certificate_refused",
        "Redis refused the client certificate",
        "use an ssl_certfile= signed by the CA of the server's tls-ca-cert-file",
    ),
}


class RedisTlsError(RedisConfigError):
    """A TLS connection to Redis failed in a way no retry fixes; ``reason`` says which way
    and the message names the URL option to change."""


def tls_failure(error: BaseException, *, setting: str = "redis_url") -> RedisTlsError | None:
    """The TLS problem behind a failed Redis connection, or ``None`` if it was not one.

    :param setting: where the URL came from, named in the message.
    """
    found = _find(error)
    if found is None:
        return None
    code, detail = found
    if code == "CERTIFICATE_VERIFY_FAILED" and "mismatch" in detail:
        reason, problem, fix = (
            "name_mismatch",
            "Redis's certificate does not cover the host connected to",
            "connect by a name or address the certificate lists",
        )
    elif code == "CERTIFICATE_VERIFY_FAILED":
        reason, problem, fix = (
            "untrusted_certificate",
            "Redis's certificate is not trusted",
            "set ssl_ca_certs= in the URL to the CA that signed it",
        )
    else:
        reason, problem, fix = _CAUSES.get(
            code,
            (
                "tls_failed",
                "TLS with Redis failed",
                "check the URL's ssl_* options against the server's tls-* settings (a client "
                "certificate is ssl_certfile= and ssl_keyfile=)",
            ),
        )
    return RedisTlsError(f"{setting}: {problem} ({detail}): {fix}", reason=reason)


def _find(error: BaseException) -> tuple[str, str] | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "[SSL: " in str(seen):
            match = _SSL_ERROR.search(str(seen))
            if match:
                return match["code"], match["detail"].rstrip(".")
            if isinstance(seen, ssl.SSLError):
                return str(seen.reason or "UNKNOWN"), str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


__all__ = ["RedisTlsError", "tls_failure"]

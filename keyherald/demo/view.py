"""What the demo shows: a live ``rich`` view on a terminal, plain progress lines otherwise.

Both views take the same calls from the orchestrator (:class:`View`); neither changes state.
"""

import time
from typing import Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from subscriber.events import Event

from .state import DemoState

#: Half-width of the key timeline, in rotation periods.
timeline_span = 1.5
timeline_width = 48
status_interval_s = 5.0
STATE_STYLE = {
    "pending": ("░", "yellow"),
    "active": ("█", "green"),
    "retiring": ("▒", "cyan"),
    "retired": (" ", "dim"),
    "revoked": ("x", "red"),
}


class View(Protocol):
    """The orchestrator's output."""

    def __enter__(self) -> "View": ...
    def __exit__(self, *exc: object) -> None: ...
    def event(self, state: DemoState, event: Event) -> None: ...
    def refresh(self, state: DemoState) -> None: ...
    def summary(self, state: DemoState) -> None: ...
    def stopped(self, message: str) -> None: ...


def make_view(*, plain: bool, rotation_period_s: float = 20.0) -> View:
    """A live view for a terminal, plain lines otherwise."""
    return PlainView() if plain else LiveView(rotation_period_s)


def short(kid: str | None) -> str:
    """A kid shortened for display."""
    return (kid or "-")[:10]


def describe(event: Event) -> str:
    """One line for a stream event."""
    data = event.data
    if event.type == "key-added":
        extra = f"alg={data.get('alg')} activates in {data.get('activate_at', 0) - event.ts:.0f}s"
    elif event.type == "key-activated":
        previous = data.get("previous_kid")
        extra = f"previous={short(previous)} now retiring" if previous else "(nothing retiring)"
    else:
        extra = f"reason={data.get('reason')}"
    return f"v{event.version} {event.type} kid={short(event.kid)} {extra}"


def _range(values: list[float], fmt: str) -> str:
    return "-" if not values else f"{min(values):{fmt}}-{max(values):{fmt}}"


def upstream_lines(state: DemoState) -> list[str]:
    """The figures of ``--upstream`` that the issuer demo does not have."""
    u = state.upstream or {}
    added = sum(1 for e in state.events if e.type == "key-added")
    pushes = u.get("push_ms") or []
    return [
        f"events published by watcher: {len(state.events)} ({added} key-added, "
        f"{state.retirements} key-retired)",
        f"upstream requests:           {u.get('requests', 0)} by the one watcher "
        f"({u.get('not_modified', 0)} answered 304), JWKS max-age {u.get('max_age_s')}s",
        f"IdP publishes -> watcher:    {_range(u.get('poll_s') or [], '.1f')} s (its poll)",
        f"watcher -> both caches:      {_range(pushes, '.0f')} ms (median "
        f"{u.get('push_p50_ms') or 0:.0f} ms over {len(pushes)} keys)",
    ]


def summary_lines(state: DemoState) -> list[str]:
    """The closing summary, one figure a line."""
    s = state.summary()
    prop, dropped = s["revocation_propagation_s"], s["revocation_cache_dropped_s"]
    revocation = f"revocation reached {s['revocation_reached_verifiers']} verifiers"
    if dropped is not None:
        revocation += f": out of every cache {dropped * 1000:.0f} ms after the commit"
    if prop is not None:
        revocation += f", confirmed by heartbeats after {prop:.2f}s"
    lines = [
        f"rotations done:              {s['rotations']} (wanted {s['rotations_wanted']})",
        f"tokens verified:             {s['tokens_verified']}"
        f" ({s['tokens_verified_old_key']} signed by a key that had stopped signing)",
        f"valid tokens rejected:       {s['valid_tokens_rejected']}",
        f"rejected (revoked key):      {s['rejected_revoked_key']}",
        f"events published:            {s['events_published']}",
        f"events delivered to partner: {s['events_delivered_to_partner']}"
        f" (out of order: {s['partner_out_of_order']},"
        f" bad signatures: {s['partner_signature_failures']})",
        revocation if prop is not None or dropped is not None else "revocation: not seen",
        f"elapsed:                     {s['elapsed_s']}s",
    ]
    if state.upstream is not None:  # no issuer, relay, partner or revocation in this mode
        lines = [*lines[:3], *upstream_lines(state), lines[-1]]
    verdict = "OK" if state.succeeded() else "FAILED"
    return [f"summary: {verdict}", *("  " + line for line in lines)]


class PlainView:
    """Plain progress lines, for CI logs and tests."""

    def __init__(self) -> None:
        self._notes = 0
        self._next_status = 0.0

    def __enter__(self) -> "PlainView":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _print(self, state: DemoState, line: str) -> None:
        print(f"[{time.time() - state.started_at:6.1f}s] {line}", flush=True)

    def _flush_notes(self, state: DemoState) -> None:
        for _, message in state.messages[self._notes :]:
            self._print(state, message)
        self._notes = len(state.messages)

    def event(self, state: DemoState, event: Event) -> None:
        self._flush_notes(state)
        self._print(state, "event " + describe(event))

    def refresh(self, state: DemoState) -> None:
        self._flush_notes(state)
        now = time.monotonic()
        if now < self._next_status:
            return
        self._next_status = now + status_interval_s
        lg = state.loadgen
        verifiers = " ".join(
            f"{v.service}:v{v.version}[{','.join(short(k)[:6] for k in v.kids)}]"
            for v in state.verifiers
        )
        self._print(
            state,
            f"status rotations={state.rotations}/{state.rotations_wanted} "
            f"verified={lg.get('verified', 0)} valid_rejected={lg.get('valid_rejected', 0)} "
            f"revoked_rejected={lg.get('revoked_rejected', 0)} "
            f"partner={state.delivered} verifiers: {verifiers}",
        )

    def summary(self, state: DemoState) -> None:
        for line in summary_lines(state):
            print(line, flush=True)

    def stopped(self, message: str) -> None:
        print(message, flush=True)


class LiveView:
    """A full-screen-ish ``rich`` view refreshed a few times a second."""

    def __init__(self, rotation_period_s: float) -> None:
        self.console = Console()
        self.rotation_period_s = rotation_period_s
        self._state: DemoState | None = None
        self._live = Live(
            self._render(), console=self.console, refresh_per_second=4, transient=False
        )

    def __enter__(self) -> "LiveView":
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def event(self, state: DemoState, event: Event) -> None:
        self._state = state

    def refresh(self, state: DemoState) -> None:
        self._state = state
        self._live.update(self._render())

    def summary(self, state: DemoState) -> None:
        style = "green" if state.succeeded() else "red"
        self.console.print(Panel("\n".join(summary_lines(state)), border_style=style))

    def stopped(self, message: str) -> None:
        self.console.print(f"[yellow]{message}[/yellow]")

    def _render(self) -> RenderableType:
        state = self._state
        if state is None:
            return Text("starting the issuer, relay, verifiers, partner and load generator…")
        return Group(
            self._header(state),
            Panel(self._timeline(state), title="keys (timeline: now in the middle)"),
            Panel(self._verifiers(state), title="verifiers (from heartbeats)"),
            Panel(self._events(state), title="events on the stream"),
            Panel(self._traffic(state), title="requests and partner deliveries"),
        )

    def _header(self, state: DemoState) -> Text:
        now = time.time()
        upcoming = next((t for t in state.plan if float(t.get("at", 0)) >= now), None)
        plan = (
            f" · next: {upcoming.get('action')} in {float(upcoming['at']) - now:.0f}s"
            if upcoming
            else ""
        )
        return Text(
            f"keyherald demo · {state.phase} · rotations {state.rotations}/"
            f"{state.rotations_wanted} · key-set version {state.version}{plan} · "
            f"{now - state.started_at:.0f}s",
            style="bold",
        )

    def _timeline(self, state: DemoState) -> Table:
        table = Table(box=None, show_header=False, caption="░ pending  █ active  ▒ retiring  │ now")
        now = time.time()
        span = timeline_span * self.rotation_period_s
        step = 2 * span / timeline_width
        for key in state.keys[-6:]:
            bar = Text()
            for i in range(timeline_width):
                t = now - span + i * step
                glyph, style = STATE_STYLE.get(key_state_at(key, t), (" ", ""))
                bar.append("│" if i == timeline_width // 2 else glyph, style=style)
            kstate = str(key.get("state"))
            table.add_row(
                short(key.get("kid")), Text(kstate, style=STATE_STYLE.get(kstate, ("", ""))[1]), bar
            )
        return table

    def _verifiers(self, state: DemoState) -> Table:
        table = Table("service", "instance", "state", "version", "keys held", "lag ms", box=None)
        for v in state.verifiers:
            table.add_row(
                v.service,
                v.instance_id[:12],
                v.state,
                str(v.version),
                " ".join(short(k) for k in v.kids),
                f"{v.lag_ms:.0f}" if isinstance(v.lag_ms, int | float) else "-",
            )
        rev = state.revocation
        if rev is not None:
            arrived = (
                f"gone from {rev.verifiers} verifiers after {rev.propagation_s:.2f}s"
                if rev.propagation_s is not None
                else "propagating…"
            )
            table.caption = f"revoked {short(rev.kid)}: {arrived}"
        return table

    def _events(self, state: DemoState) -> Text:
        lines = [
            f"{time.strftime('%H:%M:%S', time.localtime(e.ts))} {describe(e)}"
            for e in state.events[-8:]
        ]
        notes = [f"» {m}" for _, m in state.messages[-3:]]
        return Text("\n".join(lines + notes))

    def _traffic(self, state: DemoState) -> Text:
        lg, partner = state.loadgen, state.partner
        return Text(
            f"verified {lg.get('verified', 0)} · valid rejected {lg.get('valid_rejected', 0)} · "
            f"rejected after revocation {lg.get('revoked_rejected', 0)} · "
            f"errors {lg.get('errors', 0)}\n"
            f"partner: {partner.get('delivered', 0)} events delivered, last version "
            f"{_last_version(partner)}, out of order {partner.get('out_of_order', 0)}; "
            f"its key set v{partner.get('key_set_version', '-')}: "
            f"{' '.join(short(k) for k in partner.get('keys') or []) or '-'}"
        )


def _last_version(partner: dict[str, Any]) -> Any:
    events = partner.get("events") or []
    return events[-1].get("version") if events else "-"


def key_state_at(key: dict[str, Any], t: float) -> str:
    """A key's state at time ``t``, from its record's timestamps (None-safe)."""

    def ts(name: str) -> float | None:
        value = key.get(name)
        return float(value) if isinstance(value, int | float) else None

    published = ts("created_at") or 0.0
    activated = ts("activated_at") or ts("activate_at")
    deactivated = ts("deactivated_at")
    ended = ts("ended_at")
    if ended is None and key.get("state") in ("pending", "active", "retiring"):
        ended = ts("retire_at") if deactivated is not None else None
    if t < published or (ended is not None and t >= ended):
        return "none"
    if key.get("state") == "revoked" and ended is not None and t >= ended:
        return "revoked"
    if activated is None or t < activated:
        return "pending"
    if deactivated is None or t < deactivated:
        return "active"
    return "retiring"

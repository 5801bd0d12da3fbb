"""Lifecycle properties on the pure rules, for random safe policies and operator actions.

Each example runs an issuer's life as a list of (time step, operator action) pairs: before and
after each action the due transitions are applied (as the scheduler would), and a token is
"signed" with whatever key is active.
"""

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from issuer import lifecycle
from issuer.errors import IllegalTransition
from issuer.lifecycle import NewKey
from issuer.policy import RotationPolicy
from issuer.records import ACTIVE, PENDING, KeyRecord

ACTIONS = ("wait", "rotate", "activate", "retire", "revoke_active", "revoke_other")


@st.composite
def policies(draw: st.DrawFn) -> RotationPolicy:
    max_age = draw(st.integers(0, 1_000))
    skew = draw(st.integers(0, 120))
    ttl = draw(st.integers(1, 5_000))
    lead = max_age + skew + draw(st.integers(1, 5_000))
    grace = ttl + max_age + skew + draw(st.integers(0, 5_000))
    period = lead + draw(st.integers(1, 20_000))
    return RotationPolicy(
        rotation_period_s=period, lead_s=lead, retire_grace_s=grace, max_token_ttl_s=ttl,
        jwks_max_age_s=max_age, clock_skew_s=skew,
    )  # fmt: skip


@dataclass
class Life:
    """The simulated issuer, with what the properties need to remember."""

    policy: RotationPolicy
    now: float = 1_000_000.0
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    serial: int = 0
    #: Keys activated at once by bootstrap or a revocation: exempt from the lead.
    emergency: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    #: (signed at, kid) of every token minted so far.
    tokens: list[tuple[float, str]] = field(default_factory=list)

    def new_key(self) -> NewKey:
        self.serial += 1
        return NewKey(kid=f"k{self.serial}", alg="ES256", jwk={}, sealed={})

    def commit(self, change: lifecycle.Change) -> None:
        self.keys = lifecycle.updated(self.keys, change)

    def tick(self) -> None:
        while (transition := lifecycle.due(self.keys, self.policy, self.now)) is not None:
            new = self.new_key() if lifecycle.needs_new_key(self.keys, transition) else None
            if transition.action == lifecycle.BOOTSTRAP and new is not None:
                self.emergency.add(new.kid)
            self.commit(lifecycle.apply(self.keys, transition, self.policy, self.now, new))

    def act(self, action: str) -> None:
        active = lifecycle.active_key(self.keys)
        assert active is not None
        others = sorted(k.kid for k in self.keys.values() if k.published and k.state != ACTIVE)
        pending = sorted(k.kid for k in self.keys.values() if k.state == PENDING)
        try:
            if action == "rotate":
                self.commit(
                    lifecycle.add(
                        self.keys, self.new_key(), self.policy, self.now, activate_at=self.now
                    )  # fmt: skip
                )
            elif action == "activate" and pending:
                self.commit(lifecycle.activate(self.keys, pending[0], self.policy, self.now))
            elif action == "retire" and others:
                self.commit(lifecycle.retire(self.keys, others[0], self.policy, self.now))
            elif action == "revoke_active":
                replacement = None if pending else self.new_key()
                change = lifecycle.revoke(self.keys, active.kid, self.policy, self.now, replacement)
                self.commit(change)
                self.revoked.add(active.kid)
                successor = lifecycle.active_key(self.keys)
                assert successor is not None
                self.emergency.add(successor.kid)
            elif action == "revoke_other" and others:
                self.commit(lifecycle.revoke(self.keys, others[0], self.policy, self.now))
                self.revoked.add(others[0])
        except IllegalTransition:
            pass  # refusing an unsafe request is a correct outcome; the invariants still hold

    def check(self) -> None:
        actives = [k for k in self.keys.values() if k.state == ACTIVE]
        assert len(actives) == 1, "exactly one active key"
        for key in self.keys.values():
            if key.activated_at is not None and key.kid not in self.emergency:
                assert key.activated_at >= key.created_at + self.policy.lead_s, (
                    f"{key.kid} signed before it was published for the lead"
                )
        for signed_at, kid in self.tokens:
            if kid in self.revoked:
                continue  # revocation breaks live tokens on purpose
            exp = signed_at + self.policy.max_token_ttl_s
            key = self.keys[kid]
            if self.now <= exp:
                assert key.published, f"a live token's key {kid} left the JWKS"
            # The scheduler may tick at any instant: the *schedule* must keep the key, too.
            leaves_at = key.ended_at if not key.published else key.retire_at
            if key.state != ACTIVE:
                assert leaves_at is not None and leaves_at >= exp, f"{kid} leaves too early"

    def sign(self) -> None:
        active = lifecycle.active_key(self.keys)
        assert active is not None
        self.tokens.append((self.now, active.kid))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    policy=policies(),
    steps=st.lists(st.tuples(st.floats(0, 1.0), st.sampled_from(ACTIONS)), min_size=1, max_size=40),
)
def test_lifecycle_properties(policy: RotationPolicy, steps: list[tuple[float, str]]) -> None:
    life = Life(policy)
    life.tick()  # bootstrap
    life.check()
    for fraction, action in steps:
        # Steps from "at once" to three whole periods: the scheduler may have been down.
        life.now += fraction * fraction * 3 * policy.rotation_period_s
        life.tick()
        life.check()
        life.sign()
        life.act(action)
        life.tick()
        life.check()
        life.sign()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(policy=policies(), waits=st.lists(st.floats(0, 1.0), min_size=1, max_size=20))
def test_plan_predicts_what_the_scheduler_does(policy: RotationPolicy, waits: list[float]) -> None:
    life = Life(policy)
    life.tick()
    for fraction in waits:
        planned = lifecycle.plan(life.keys, policy, life.now, count=1)[0]
        assert planned.at == lifecycle.next_at(life.keys, policy, life.now)
        before = dict(life.keys)
        life.now = planned.at + fraction * policy.lead_s / 2
        assert lifecycle.due(before, policy, planned.at - 1e-3) is None  # nothing sooner
        life.tick()
        assert life.keys != before  # the planned step happened


def test_default_plan_is_add_then_activate_then_retire() -> None:
    policy = RotationPolicy()
    life = Life(policy)
    life.tick()
    (first,) = life.keys
    steps = lifecycle.plan(life.keys, policy, life.now, count=3)
    day = 86_400
    assert [(s.action, s.at - life.now, s.kid) for s in steps] == [
        ("add", 84 * day, None), ("activate", 90 * day, None), ("retire", 97 * day, first),
    ]  # fmt: skip

"""Load balancing: which backend of an application gets the next connection.

Theory of operation
-------------------
A worker holds one `Balancer`; it keeps one `BackendSet` per application, and a set holds
`Backend` objects that carry live counters (connections in flight, consecutive failures,
end of backoff). On every state change the worker calls `Balancer.update(state)`: backends
that remain (same `backend_id` and `address`) keep their objects, hence their counters, and
take the new settings; new ones start from zero; removed ones are marked `retired` and
dropped from the set. A connection holds its `Backend` object, so a retired backend's
connections finish and `release` normally, but it is never picked again.

Choosing (`BackendSet.pick(now, exclude, sticky_id)`):

1. Sticky: the backend whose sticky key (its `sticky_id`, else its `backend_id`: the value
   the proxy writes in the cookie) equals `sticky_id`, when it is up and not excluded. Its
   weight is not checked: weight 0 means *drain* (no new clients, as in HAProxy), so a
   client already stuck to it stays there until it goes down or is removed.
2. Candidates: non-retired, non-excluded backends with weight > 0 that are up. Backup
   backends are candidates only when no primary one is.
3. The policy chooses among the candidates:
   - RoundRobin: smooth weighted round robin (nginx): every pick adds each candidate's
     weight to its `current`, takes the largest `current` (first in order on a tie) and
     subtracts the candidates' total from it. Weights 3:1 give a a b a, and over any
     sum(weights)/gcd(weights) picks from a fresh start each backend is picked exactly
     weight/gcd times.
   - Random: weighted random.
   - LeastConnections: fewest `active_connections` (weights do not scale the count);
     ties are broken by smooth weighted round robin among the tied.
   - PowerOfTwo: two distinct weighted random draws; the one with fewer active
     connections wins, the first on a tie (so, unloaded, it is weighted random).
4. No candidate, but some backends are only resting in backoff: the one whose backoff ends
   first is returned anyway. A dead-but-retryable backend beats an immediate 503; the
   proxy bounds the cost with its connect_timeout and by excluding each backend it has
   tried. None only when nothing is left: every backend excluded, retired or weight 0.

Health is passive. `mark_failure` (a connect failure) rests the backend for a backoff of
1 s doubling per consecutive failure up to 30 s; `is_up(now)` is false until that ends.
After it, the backend is up again for a retry (half-open): a success (`mark_success`)
clears the failures, a failure rests it twice as long. The return values follow *health*
(failures == 0 or not), not `is_up`, so one outage gives one BACKEND_DOWN and one
BACKEND_UP event however many retries it took. A failure reported while the backend is
already resting comes from an attempt begun before it went down and does not lengthen the
backoff, so a burst of concurrent failures counts once.

Active health (sozu.health) overrides both: a backend its checks found down (`checked_down`,
from the state's verdicts at each `update`) is no candidate at all, not even a resting one, until
the checks find it up again; that verdict also ends any passive backoff, so a backend that is
back serves at once.

Pure: time comes in as `now` (seconds, any monotonic origin), randomness from the
`random.Random` given (create it after fork: an unseeded one draws from os.urandom).
"""

from __future__ import annotations

import random
from typing import Any, Collection, Iterable, Iterator, Mapping

from sozu.vocabulary import DEFAULT_POLICY, DEFAULT_WEIGHT, POLICIES, POLICY_BY_LOWER_NAME

BACKOFF_FIRST = 1.0  # seconds of rest after the first consecutive failure
BACKOFF_MAX = 30.0


def normalise_policy(policy: str) -> str:
    """The CamelCase policy name; the sozuctl lower-case spellings are accepted too."""
    try:
        return POLICY_BY_LOWER_NAME[policy.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown load balancing policy {policy!r}, expected one of {', '.join(POLICIES)}"
        ) from None


def backoff(failures: int) -> float:
    """Seconds a backend rests after `failures` consecutive failures (>= 1)."""
    return min(BACKOFF_FIRST * 2.0 ** min(failures - 1, 32), BACKOFF_MAX)


class Backend:
    """One backend of an application: its settings and its live counters (mutable).

    Hashed and compared by identity: a `pick` exclude set holds Backend objects."""

    __slots__ = (
        "backend_id",
        "address",
        "weight",
        "sticky_id",
        "backup",
        "active_connections",
        "failures",
        "down_until",
        "retired",
        "current",
        "checked_down",
        "last_error",
    )

    def __init__(
        self,
        backend_id: str,
        address: str,
        weight: int = DEFAULT_WEIGHT,
        sticky_id: str | None = None,
        backup: bool = False,
    ) -> None:
        self.backend_id = backend_id
        self.address = address
        self.weight = weight
        self.sticky_id = sticky_id
        self.backup = backup
        self.active_connections = 0
        self.failures = 0
        self.down_until = 0.0
        self.retired = False
        self.current = 0  # smooth weighted round robin state
        self.checked_down = False  # the active health checks' verdict
        self.last_error: str | None = None  # of the last failed connect (passive health)

    def configure(self, data: Mapping[str, Any]) -> None:
        """Take the settings of ADD_BACKEND data; the counters are left alone."""
        params = data.get("load_balancing_parameters")
        weight = DEFAULT_WEIGHT if params is None else params.get("weight", DEFAULT_WEIGHT)
        self.weight = max(int(weight), 0)
        self.sticky_id = data.get("sticky_id")
        self.backup = bool(data.get("backup", False))

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a backend within its application."""
        return (self.backend_id, self.address)

    @property
    def sticky_key(self) -> str:
        """The value of the sticky-session cookie that leads to this backend."""
        return self.backend_id if self.sticky_id is None else self.sticky_id

    def is_up(self, now: float) -> bool:
        """Not resting in backoff nor found down by the health checks (says nothing of
        `retired` or `weight`)."""
        return now >= self.down_until and not self.checked_down

    def __repr__(self) -> str:
        flags = "".join(
            f" {flag}" for flag, on in (("backup", self.backup), ("retired", self.retired)) if on
        )
        return (
            f"<Backend {self.backend_id} {self.address} weight={self.weight}{flags}"
            f" active={self.active_connections} failures={self.failures}"
            f" down_until={self.down_until}>"
        )


class BackendSet:
    """The backends of one application, with its load-balancing policy."""

    __slots__ = ("policy", "_members", "_sticky", "_rng", "_source")

    def __init__(
        self, policy: str, backends: Iterable[Mapping[str, Any]], rng: random.Random
    ) -> None:
        self._rng = rng
        self._source: tuple | None = None
        self._members: list[Backend] = []
        self._sticky: dict[str, list[Backend]] = {}
        self.policy = DEFAULT_POLICY
        self.update(policy, backends)

    def update(self, policy: str, backends: Iterable[Mapping[str, Any]],
               health: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> None:
        """Apply a state change (ADD_BACKEND data list, and the health checks' verdicts by
        (backend_id, address)): keep the objects of the backends that remain, add new ones,
        retire the removed ones. The same identity twice: the later settings win, the first
        position stays. The same policy, backend settings and verdicts as last time change
        nothing: a worker with thousands of applications updates them all after every order,
        and the state replaces a backend's dict when it changes, so this comparison is mostly
        one of identities."""
        backends = tuple(backends)
        source = (policy, backends, health or None)
        if source == self._source:
            return
        self._source = source
        self.policy = normalise_policy(policy)
        previous = {backend.key: backend for backend in self._members}
        members: dict[tuple[str, str], Backend] = {}
        for data in backends:
            key = (data["backend_id"], data["address"])
            backend = members.get(key) or previous.pop(key, None)
            if backend is None:
                backend = Backend(*key)
            backend.configure(data)
            verdict = health.get(key) if health else None
            down = verdict is not None and not verdict["up"]
            if backend.checked_down and not down:  # back: no passive backoff left either
                backend.failures = 0
                backend.down_until = 0.0
            backend.checked_down = down
            members[key] = backend
        for gone in previous.values():
            gone.retired = True
        self._members = list(members.values())
        sticky: dict[str, list[Backend]] = {}
        for backend in self._members:
            sticky.setdefault(backend.sticky_key, []).append(backend)
        self._sticky = sticky

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def pick(
        self, now: float, exclude: Collection[Backend] = frozenset(), sticky_id: str | None = None
    ) -> Backend | None:
        """The backend for a new connection, or None when none is left (see the module
        docstring: sticky, then the policy among up candidates, then the earliest to wake
        up). `exclude` holds the Backend objects this request has already tried."""
        if sticky_id is not None:
            for backend in self._sticky.get(sticky_id, ()):
                if backend.is_up(now) and backend not in exclude:
                    return backend
        primaries: list[Backend] = []
        backups: list[Backend] = []
        resting: Backend | None = None
        for backend in self._members:
            if backend.weight <= 0 or backend in exclude:
                continue
            if backend.is_up(now):
                (backups if backend.backup else primaries).append(backend)
            elif backend.checked_down:
                continue
            elif resting is None or backend.down_until < resting.down_until:
                resting = backend
        candidates = primaries or backups
        if not candidates:
            return resting
        if len(candidates) == 1:
            # Every policy agrees, and smooth round robin would leave `current` unchanged.
            return candidates[0]
        policy = self.policy
        if policy == "RoundRobin":
            return _smooth_round_robin(candidates)
        if policy == "Random":
            return _weighted_random(self._rng, candidates)
        if policy == "LeastConnections":
            least = min(backend.active_connections for backend in candidates)
            tied = [backend for backend in candidates if backend.active_connections == least]
            return tied[0] if len(tied) == 1 else _smooth_round_robin(tied)
        # PowerOfTwo
        first = _weighted_random(self._rng, candidates)
        second = _weighted_random(
            self._rng, [backend for backend in candidates if backend is not first]
        )
        return second if second.active_connections < first.active_connections else first

    def acquire(self, backend: Backend) -> None:
        """A connection to `backend` opens (call it right after `pick`)."""
        backend.active_connections += 1

    def release(self, backend: Backend) -> None:
        """That connection closed. Never goes below zero, even if called once too often."""
        if backend.active_connections > 0:
            backend.active_connections -= 1

    def mark_failure(self, backend: Backend, now: float, error: str | None = None) -> bool:
        """A connect to `backend` failed. True when it was healthy (emit BACKEND_DOWN)."""
        backend.last_error = error
        if not backend.is_up(now):
            # Already resting: this attempt began before it went down; don't escalate.
            return False
        backend.failures += 1
        backend.down_until = now + backoff(backend.failures)
        return backend.failures == 1 and not backend.retired

    def mark_success(self, backend: Backend) -> bool:
        """A connect to `backend` succeeded. True when it had failed (emit BACKEND_UP)."""
        was_down = backend.failures > 0
        backend.failures = 0
        backend.down_until = 0.0
        return was_down and not backend.retired


class Balancer:
    """The BackendSets of every application of one worker."""

    __slots__ = ("_rng", "_sets")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._sets: dict[str, BackendSet] = {}

    def update(self, state: Any) -> None:
        """Follow `state.applications` and `state.backends`, keeping live counters; the
        backends of removed applications are retired."""
        sets: dict[str, BackendSet] = {}
        health: dict[str, dict] = {}
        for (app_id, backend_id, address), verdict in state.health.items():
            health.setdefault(app_id, {})[(backend_id, address)] = verdict
        for app_id, app in state.applications.items():
            policy = app.get("load_balancing_policy") or DEFAULT_POLICY
            backends = state.backends.get(app_id, ())
            backend_set = self._sets.get(app_id)
            if backend_set is None:
                backend_set = BackendSet(policy, (), self._rng)
            backend_set.update(policy, backends, health.get(app_id))
            sets[app_id] = backend_set
        for app_id, backend_set in self._sets.items():
            if app_id not in sets:
                backend_set.update(backend_set.policy, ())
        self._sets = sets

    def backends(self, app_id: str) -> BackendSet | None:
        return self._sets.get(app_id)


def _smooth_round_robin(candidates: list[Backend]) -> Backend:
    total = 0
    best = candidates[0]
    for backend in candidates:
        backend.current += backend.weight
        total += backend.weight
        if backend.current > best.current:
            best = backend
    best.current -= total
    return best


def _weighted_random(rng: random.Random, candidates: list[Backend]) -> Backend:
    total = 0
    for backend in candidates:
        total += backend.weight
    point = rng.random() * total
    for backend in candidates:
        point -= backend.weight
        if point < 0:
            return backend
    return candidates[-1]  # float rounding at the very top of the range

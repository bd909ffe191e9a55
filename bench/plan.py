"""How long and how hard each scenario runs: the full run, --quick and --smoke."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Plan:
    """Durations (seconds), loads and repeats of one benchmark run."""

    name: str
    #: Repeats of the interleaved contender sequence (A B C A B C for 2).
    rounds: int
    warmup: float
    duration: float
    #: Pause after each run, so the sockets of one close before the next starts.
    settle: float
    clients: tuple[int, ...]
    workers: tuple[int, ...]
    #: Upstream latency (ms) and answer size (bytes) of scenario 1.
    latency_ms: int
    body_bytes: int
    floor_duration: float
    hot_clients: int
    #: The seed peer in the hot-key scenario too (it adds a slow run per round).
    hot_seed: bool
    jobs: int
    #: Concurrent POSTs starting jobs.
    job_starters: int
    job_delay_ms: int
    job_ttl: float
    pollers: int
    poll_duration: float
    #: Overload: concurrency levels every contender ramps through, and each level's run.
    overload_levels: tuple[int, ...]
    overload_warmup: float
    overload_duration: float
    #: Seconds of py-spy sampling of Fanout at 100 clients; 0 = no profile.
    profile_seconds: float

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data, for results.json."""
        return asdict(self)

    def estimate_seconds(self) -> float:
        """A rough length of the whole run, for the log."""
        per_level = self.warmup + self.duration + self.settle + 0.5
        # 4 contenders: Fanout under Hypercorn and under its supervisor, 2 peers.
        fan = self.rounds * len(self.workers) * 4 * (len(self.clients) * per_level + 2)
        floor = self.rounds * len(self.clients) * (self.floor_duration + 1)
        hot = self.rounds * ((4 if self.hot_seed else 3) * per_level + 6)
        jobs = self.jobs / 400 + self.poll_duration + self.job_ttl + 10
        overload = (
            2 * len(self.overload_levels) * (self.overload_warmup + self.overload_duration + 2)
        )
        profile = self.profile_seconds + self.warmup + 5 if self.profile_seconds else 0
        return fan + floor + hot + jobs + overload + profile


FULL = Plan(
    name="full",
    rounds=2,
    warmup=2.0,
    duration=10.0,
    settle=1.0,
    clients=(10, 100, 500),
    workers=(1, 2),
    latency_ms=50,
    body_bytes=256,
    floor_duration=5.0,
    hot_clients=100,
    hot_seed=True,
    jobs=10_000,
    job_starters=64,
    job_delay_ms=100,
    job_ttl=60.0,
    pollers=1000,
    poll_duration=10.0,
    overload_levels=(16, 32, 64, 128, 256, 512),
    overload_warmup=3.0,
    overload_duration=8.0,
    profile_seconds=10.0,
)

QUICK = Plan(
    name="quick",
    rounds=1,
    warmup=1.0,
    duration=5.0,
    settle=1.0,
    clients=(10, 100, 500),
    workers=(1, 2),
    latency_ms=50,
    body_bytes=256,
    floor_duration=3.0,
    hot_clients=100,
    hot_seed=False,
    jobs=2000,
    job_starters=64,
    job_delay_ms=100,
    job_ttl=20.0,
    pollers=200,
    poll_duration=5.0,
    overload_levels=(16, 32, 64, 128, 256),
    overload_warmup=2.0,
    overload_duration=5.0,
    profile_seconds=6.0,
)

#: Seconds long, tiny load: proves the harness runs end to end (CI), measures nothing.
SMOKE = Plan(
    name="smoke",
    rounds=1,
    warmup=0.0,
    duration=1.0,
    settle=0.2,
    clients=(4,),
    workers=(1,),
    latency_ms=20,
    body_bytes=256,
    floor_duration=1.0,
    hot_clients=4,
    hot_seed=False,
    jobs=20,
    job_starters=4,
    job_delay_ms=20,
    job_ttl=1.0,
    pollers=4,
    poll_duration=1.0,
    overload_levels=(2, 4),
    overload_warmup=0.0,
    overload_duration=2.0,
    profile_seconds=0.0,
)

PLANS = {plan.name: plan for plan in (FULL, QUICK, SMOKE)}

"""The report: markdown tables, ratios to the peers, goals, charts; all from results.json."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Run

LABELS = {
    "fanout": "Fanout",
    "fanout-sup": "Fanout (supervisor)",
    "quart": "Quart (peer)",
    "seed": "seed approach (peer)",
    "floor": "floor (upstream alone)",
}
PEERS = ("quart", "seed")
#: Fanout as it can be served: by Hypercorn (workers = 0 at 1 worker), by its supervisor.
OURS = ("fanout", "fanout-sup")
MB = 1024 * 1024


@dataclass(frozen=True)
class Figures:
    """One contender at one load, over its rounds (medians; sums for counts)."""

    rounds: int
    rps: float
    rps_low: float
    rps_high: float
    p50_ms: float
    p99_ms: float
    errors: int
    attempts: int
    conns_per_upstream_request: float | None
    #: Over the runs' second halves: the steady state (see Run).
    settled_conns_per_upstream_request: float | None
    upstream_requests_per_answer: float | None
    peak_rss_mb: float
    cpu_ms_per_request: float | None
    server_cores: float
    upstream_cores: float
    load_cores: float
    #: Cores busy with anything else on the shared machine.
    other_cores: float


def figures(runs: Sequence[Run]) -> Figures:
    """Combine the rounds of one contender at one load."""
    conns = sum(r.upstream_connections for r in runs)
    upstream = sum(r.upstream_requests for r in runs)
    settled = [r for r in runs if r.settled_upstream_requests is not None]
    settled_conns = sum(r.settled_upstream_connections or 0 for r in settled)
    settled_upstream = sum(r.settled_upstream_requests or 0 for r in settled)
    answered = sum(r.load.ok for r in runs)
    requests = sum(r.load.requests for r in runs)
    server_cpu = sum(r.server_cpu_s for r in runs)

    def median(value: Callable[[Run], float]) -> float:
        return statistics.median(value(r) for r in runs)

    return Figures(
        rounds=len(runs),
        rps=median(lambda r: r.load.rps),
        rps_low=min(r.load.rps for r in runs),
        rps_high=max(r.load.rps for r in runs),
        p50_ms=median(lambda r: r.load.p50_ms),
        p99_ms=median(lambda r: r.load.p99_ms),
        errors=sum(r.load.errors for r in runs),
        attempts=sum(r.load.attempts for r in runs),
        conns_per_upstream_request=conns / upstream if upstream else None,
        settled_conns_per_upstream_request=(
            settled_conns / settled_upstream if settled and settled_upstream else None
        ),
        upstream_requests_per_answer=upstream / answered if answered else None,
        peak_rss_mb=max(r.peak_rss_bytes for r in runs) / MB,
        cpu_ms_per_request=server_cpu / requests * 1000 if requests and server_cpu else None,
        server_cores=median(lambda r: r.server_cpu_s / r.load.duration_s),
        upstream_cores=median(lambda r: r.upstream_cpu_s / r.load.duration_s),
        load_cores=median(lambda r: r.load.cpu_s / r.load.duration_s),
        other_cores=median(
            lambda r: max(
                0.0,
                (r.machine_busy_s - r.server_cpu_s - r.upstream_cpu_s - r.load.cpu_s)
                / r.load.duration_s,
            )
        ),
    )


Key = tuple[str, str, str, int, int]


def group(runs: Iterable[Run]) -> dict[Key, Figures]:
    """Figures by (scenario, contender, variant, workers, clients)."""
    grouped: dict[Key, list[Run]] = defaultdict(list)
    for run in runs:
        grouped[(run.scenario, run.contender, run.variant, run.workers, run.clients)].append(run)
    return {key: figures(members) for key, members in grouped.items()}


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or theirs is None or theirs == 0:
        return "—"
    return f"{mine / theirs:.2f}x"


def _pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f} %"


def _rps(f: Figures) -> str:
    if f.rounds > 1 and f.rps_high - f.rps_low >= 1:
        return f"{f.rps:,.0f} ({f.rps_low:,.0f}-{f.rps_high:,.0f})"
    return f"{f.rps:,.0f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _check(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**not met**")


def render(results: Mapping[str, Any]) -> str:
    """The whole markdown report."""
    meta = results["meta"]
    runs = [Run.from_json(r) for r in results["runs"]]
    table = group(runs)
    sections: Mapping[str, Any] = results.get("sections", {})
    out: list[str] = [f"# Fanout against its peers — {meta['date']}", ""]
    out += _header(meta)
    out += _goals(table, meta, sections)
    out += _fan_out(table, meta)
    out += _supervisor_cost(table, meta)
    out += _hot(table)
    out += _jobs(sections.get("jobs"))
    out += _overload(table, sections.get("overload"))
    out += _profile(sections.get("profile"))
    notes = list(results.get("notes", []))
    out += ["## Notes", ""]
    out += [f"- {note}" for note in notes] or ["- Every run completed."]
    out += [
        "",
        "Files beside this report: `results.json` (every run, raw), `chart.png` "
        "(scenario 1), `overload.png` (scenario 4), `gateway.toml` (the generated gateway "
        "file), `profile-*.txt` (py-spy raw stacks, if profiled).",
        "",
    ]
    return "\n".join(out)


def _header(meta: Mapping[str, Any]) -> list[str]:
    load_start = " / ".join(f"{x:.2f}" for x in meta["loadavg_start"])
    load_end = " / ".join(f"{x:.2f}" for x in meta["loadavg_end"])
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    plan = meta["plan"]
    return [
        f"Command: `{meta['command']}` ({plan['name']} plan: {plan['rounds']} round(s), "
        f"{plan['warmup']:g} s warm-up + {plan['duration']:g} s measured per run), "
        f"{meta['elapsed_s'] / 60:.1f} min, commit `{meta['commit']}`.",
        "",
        f"- Machine: {meta['cores']} cores, load average (1/5/15 min) {load_start} at the "
        f"start and {load_end} at the end; shared by the server under test, the simulated "
        "upstream and the load generator, and noisy: read ratios, not absolute numbers.",
        f"- Load generator: {meta['load_generator']}.",
        f"- Simulated upstream: aiohttp.web{' on uvloop' if meta['upstream_uvloop'] else ''}, "
        f"one process, {plan['latency_ms']} ms per answer, {plan['body_bytes']} B JSON bodies.",
        f"- Servers: Hypercorn, worker class `{meta['worker_class']}`, the project's "
        "hypercorn.toml limits, no access log; 1 worker = `workers = 0` (one process). Fanout "
        "and Quart cap upstream connections at "
        f"{meta['connections']} per worker; the seed approach opens a session per request.",
        f"- Contenders interleaved (A B C A B C) so drift hits all alike. {versions}.",
        "- Ratios are Fanout ÷ peer: above 1 is better for req/s, below 1 is better for "
        "latency, memory and CPU.",
        "",
    ]


def _goals(table: Mapping[Key, Figures], meta: Mapping[str, Any], sections: Any) -> list[str]:
    rows: list[list[str]] = []
    plan = meta["plan"]
    for workers in plan["workers"]:
        for clients in [c for c in plan["clients"] if c >= 100] or plan["clients"][-1:]:
            mine = table.get(("fanout", "fanout", "", workers, clients))
            for peer, goal in (("quart", 1.2), ("seed", 4.0)):
                theirs = table.get(("fanout", peer, "", workers, clients))
                ratio = mine.rps / theirs.rps if mine and theirs and theirs.rps else None
                rows.append(
                    [
                        f"req/s ≥ {goal:g}x {LABELS[peer]}, {workers} worker(s), {clients} clients",
                        _num(ratio, 2) + "x" if ratio is not None else "—",
                        _check(None if ratio is None else ratio >= goal),
                    ]
                )
    low = min(plan["clients"])
    floor = table.get(("floor", "floor", "", 0, low))
    for workers in plan["workers"]:
        mine = table.get(("fanout", "fanout", "", workers, low))
        gap = mine.p50_ms - floor.p50_ms if mine and floor else None
        rows.append(
            [
                f"p50 at {low} clients within 5 ms of the floor, {workers} worker(s)",
                f"{gap:+.1f} ms ({mine.p50_ms:.1f} vs {floor.p50_ms:.1f})"
                if gap is not None and mine and floor
                else "—",
                _check(None if gap is None else gap <= 5.0),
            ]
        )
    fan = [f for k, f in table.items() if k[0] == "fanout" and k[1] == "fanout"]
    # The steady state where measured (older results: the whole runs).
    conns = [
        f.settled_conns_per_upstream_request
        if f.settled_conns_per_upstream_request is not None
        else f.conns_per_upstream_request
        for f in fan
    ]
    known = [c for c in conns if c is not None]
    worst = max(known) if known else None
    rows.append(
        [
            "upstream connections opened < 1 % of upstream requests "
            "(worst load of scenario 1, second halves of the runs)",
            _pct(worst, 3),
            _check(None if worst is None else worst < 0.01),
        ]
    )
    errors = sum(f.errors for f in fan)
    attempts = sum(f.attempts for f in fan)
    overload = (sections or {}).get("overload", {}).get("fanout", {})
    doubled = overload.get("p99_doubles_at")
    below = [
        f
        for k, f in table.items()
        if k[0] == "overload" and k[1] == "fanout" and (doubled is None or k[4] < doubled)
    ]
    errors += sum(f.errors for f in below)
    attempts += sum(f.attempts for f in below)
    rows.append(
        [
            "no errors below the shedding point (scenario 1, and scenario 4 below p99 doubling)",
            f"{errors:,} of {attempts:,}",
            _check(None if not attempts else errors == 0),
        ]
    )
    return [
        "## Goals the report is read against (measured, never asserted)",
        "",
        *_table(["goal", "measured", ""], rows),
    ]


def _fan_out(table: Mapping[Key, Figures], meta: Mapping[str, Any]) -> list[str]:
    plan = meta["plan"]
    out = [
        f"## 1. Fan-out: {5} backends of {plan['latency_ms']} ms, distinct keys per request",
        "",
        "The floor: the upstream answering one call directly (the fan-out of 5 parallel "
        "calls cannot beat it).",
        "",
    ]
    out += _table(
        ["clients", "p50 ms", "p99 ms", "req/s (single calls)"],
        [
            [str(c), _num(f.p50_ms, 1), _num(f.p99_ms, 1), _num(f.rps)]
            for c in plan["clients"]
            if (f := table.get(("floor", "floor", "", 0, c)))
        ],
    )
    for workers in plan["workers"]:
        out += [f"### {workers} worker(s)", ""]
        if workers == plan["workers"][0]:
            out += [
                "CPU cores are used cores over the run (psutil); *other* is what the rest of "
                "the shared machine used meanwhile. Server CPU ms / req is the whole server "
                "process tree's CPU per answer: the figure least disturbed by the noise. "
                "Upstream conns / upstream req counts the connections the upstream accepted "
                "per call it answered; the first half of a run also re-opens those that the "
                "end of the warm-up broke (wrk drops its connections with requests in "
                "flight, and a cancelled call's connection cannot be reused), so the second "
                "half's figure is the steady state. "
                "0 req/s means no answer arrived within the run (wrk counts requests still "
                "in flight at the end neither as answers nor as errors).",
                "",
            ]
        rows = []
        for clients in plan["clients"]:
            for contender in (*OURS, *PEERS):
                f = table.get(("fanout", contender, "", workers, clients))
                if f is None:
                    continue
                rows.append(
                    [
                        str(clients),
                        LABELS[contender],
                        _rps(f),
                        _num(f.p50_ms, 1),
                        _num(f.p99_ms, 1),
                        f"{f.errors:,}",
                        _pct(f.conns_per_upstream_request, 3),
                        _pct(f.settled_conns_per_upstream_request, 3),
                        _num(f.peak_rss_mb, 0),
                        _num(f.cpu_ms_per_request, 2),
                        f"{f.server_cores:.2f} / {f.upstream_cores:.2f} / {f.load_cores:.2f}"
                        f" / {f.other_cores:.2f}",
                    ]
                )
        out += _table(
            [
                "clients",
                "contender",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "upstream conns / upstream req",
                "… in the 2nd half",
                "peak RSS MB",
                "server CPU ms / req",
                "CPU cores: server / upstream / load / other",
            ],
            rows,
        )
    out += ["### Fanout ÷ each peer", ""]
    rows = []
    for workers in plan["workers"]:
        for clients in plan["clients"]:
            mine = table.get(("fanout", "fanout", "", workers, clients))
            if mine is None:
                continue
            for peer in PEERS:
                theirs = table.get(("fanout", peer, "", workers, clients))
                if theirs is None:
                    continue
                rows.append(
                    [
                        str(workers),
                        str(clients),
                        LABELS[peer],
                        _ratio(mine.rps, theirs.rps),
                        _ratio(mine.p50_ms, theirs.p50_ms),
                        _ratio(mine.p99_ms, theirs.p99_ms),
                        _ratio(mine.peak_rss_mb, theirs.peak_rss_mb),
                        _ratio(mine.cpu_ms_per_request, theirs.cpu_ms_per_request),
                        _ratio(mine.conns_per_upstream_request, theirs.conns_per_upstream_request),
                    ]
                )
    out += _table(
        [
            "workers",
            "clients",
            "peer",
            "req/s",
            "p50",
            "p99",
            "peak RSS",
            "CPU / req",
            "conns / upstream req",
        ],
        rows,
    )
    return out


def _supervisor_cost(table: Mapping[Key, Figures], meta: Mapping[str, Any]) -> list[str]:
    """Fanout under its supervisor ÷ under plain Hypercorn, same load, same worker count."""
    plan = meta["plan"]
    rows = []
    for workers in plan["workers"]:
        for clients in plan["clients"]:
            mine = table.get(("fanout", "fanout-sup", "", workers, clients))
            plain = table.get(("fanout", "fanout", "", workers, clients))
            if mine is None or plain is None:
                continue
            rows.append(
                [
                    str(workers),
                    str(clients),
                    _num(mine.cpu_ms_per_request, 3),
                    _num(plain.cpu_ms_per_request, 3),
                    _ratio(mine.cpu_ms_per_request, plain.cpu_ms_per_request),
                    _ratio(mine.rps, plain.rps),
                    _ratio(mine.p99_ms, plain.p99_ms),
                    _ratio(mine.peak_rss_mb, plain.peak_rss_mb),
                ]
            )
    if not rows:
        return []
    out = [
        "### The supervisor's cost: `fanout --workers N` ÷ `hypercorn` with N workers",
        "",
        "Plain Hypercorn serves 1 worker in one process (`workers = 0`) and 2 with its own "
        "supervisor; `fanout` always runs its supervisor beside the workers. Server CPU is "
        "the whole process tree's (the supervisor included) per answer.",
        "",
    ]
    out += _table(
        [
            "workers",
            "clients",
            "supervisor CPU ms / req",
            "plain CPU ms / req",
            "CPU / req",
            "req/s",
            "p99",
            "peak RSS",
        ],
        rows,
    )
    return out


def _hot(table: Mapping[Key, Figures]) -> list[str]:
    keys = sorted((k for k in table if k[0] == "hot"), key=lambda k: (k[1] != "fanout", k[2]))
    if not keys:
        return []
    rows = []
    for key in keys:
        f = table[key]
        rows.append(
            [
                LABELS[key[1]] + (f" ({key[2]})" if key[2] else ""),
                _rps(f),
                _num(f.p50_ms, 1),
                _num(f.p99_ms, 1),
                f"{f.errors:,}",
                _num(f.upstream_requests_per_answer, 3),
                _num(f.cpu_ms_per_request, 2),
            ]
        )
    clients = keys[0][4]
    out = [
        f"## 2. Hot key: {clients} clients asking for the same resource (1 worker)",
        "",
        "Fanout coalesces identical in-flight GETs always; `cache_ttl = 60` also keeps "
        "answers (the upstream allows `max-age=60`). The peers do neither.",
        "",
        *_table(
            [
                "contender",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "upstream requests / answer",
                "server CPU ms / req",
            ],
            rows,
        ),
    ]
    ratio_rows = []
    for key in keys:
        if key[1] != "fanout":
            continue
        for peer in PEERS:
            theirs = table.get(("hot", peer, "", key[3], key[4]))
            if theirs is None:
                continue
            mine = table[key]
            ratio_rows.append(
                [
                    key[2],
                    LABELS[peer],
                    _ratio(mine.rps, theirs.rps),
                    _ratio(mine.p50_ms, theirs.p50_ms),
                    _ratio(mine.p99_ms, theirs.p99_ms),
                ]
            )
    if ratio_rows:
        out += _table(["Fanout variant", "peer", "req/s", "p50", "p99"], ratio_rows)
    return out


def _jobs(jobs: Mapping[str, Any] | None) -> list[str]:
    if not jobs:
        return []
    polls = Run.from_json(jobs["polls"])
    rows = [
        [
            "jobs started (POST /jobs/batch, 1 item each)",
            f"{jobs['started']:,} of {jobs['jobs']:,}",
        ],
        ["refused (503) / other failures", f"{jobs['refused_503']:,} / {jobs['failed_starts']:,}"],
        ["upstream work per job", f"{jobs['job_upstream_ms']} ms"],
        ["time to start all", f"{jobs['seconds_to_start_all']:.2f} s"],
        [
            "time to all finished",
            f"{jobs['seconds_to_all_finished']:.2f} s "
            f"({jobs['started'] / jobs['seconds_to_all_finished']:,.0f} jobs/s)"
            if jobs["seconds_to_all_finished"]
            else "—",
        ],
        ["succeeded", f"{jobs['succeeded']:,}"],
        [
            f"status polls, {jobs['pollers']:,} pollers (GET /jobs/<id>)",
            f"{polls.load.rps:,.0f} req/s, p50 {polls.load.p50_ms:.1f} ms, "
            f"p99 {polls.load.p99_ms:.1f} ms, {polls.load.errors:,} errors",
        ],
        ["RSS before", f"{jobs['rss_before_bytes'] / MB:.0f} MB"],
        ["RSS at peak", f"{jobs['rss_peak_bytes'] / MB:.0f} MB"],
        ["RSS when all finished", f"{jobs['rss_after_work_bytes'] / MB:.0f} MB"],
        [
            f"RSS after the TTL sweep (result_ttl {jobs['result_ttl_s']:g} s)",
            f"{jobs['rss_after_sweep_bytes'] / MB:.0f} MB; {jobs['expired_checked']}",
        ],
    ]
    return [
        "## 3. Jobs (Fanout only, 1 worker, memory store)",
        "",
        "Peers have no job system. The gateway file raises `max_running` to 1000 and "
        "`max_pending` to 20000 so all jobs are accepted at once; the polls ask for the "
        "finished jobs' resources while the store holds all of them.",
        "",
        *_table(["", "measured"], rows),
    ]


def _overload(table: Mapping[Key, Figures], summary: Mapping[str, Any] | None) -> list[str]:
    keys = sorted(k for k in table if k[0] == "overload")
    if not keys:
        return []
    out = [
        "## 4. Overload: 5 backends of 1 s, concurrency ramped (1 worker)",
        "",
        "Both apps give a request 3 s (Fanout's default endpoint timeout) and answer 504 "
        "after that; upstream connections are capped at the same number, so the ramp finds "
        "where requests start queueing for connections and then where they are shed. "
        "Shed = answers ≥ 400 plus failed requests, over all requests.",
        "",
    ]
    rows = []
    for key in keys:
        f = table[key]
        rows.append(
            [
                str(key[4]),
                LABELS[key[1]],
                _num(f.rps, 1),
                _num(f.p50_ms, 0),
                _num(f.p99_ms, 0),
                _pct(f.errors / f.attempts if f.attempts else None, 1),
                _num(f.peak_rss_mb, 0),
            ]
        )
    out += _table(
        ["clients", "contender", "req/s", "p50 ms", "p99 ms", "shed", "peak RSS MB"], rows
    )
    for contender, result in (summary or {}).items():
        base, doubled = result.get("base_p99_ms"), result.get("p99_doubles_at")
        out.append(
            f"- {LABELS[contender]}: p99 {_num(base, 0)} ms at the lowest level; "
            + (
                f"p99 doubles at {doubled} in flight; shed rate at {2 * doubled}: "
                f"{_pct(result.get('shed_rate_at_twice'), 1)}."
                if doubled
                else "p99 never doubled within the ramp."
            )
        )
    return [*out, ""]


def _profile(profile: Mapping[str, Any] | None) -> list[str]:
    if not profile:
        return []
    out = ["## Where the CPU goes (py-spy, 1 worker, 100 clients, fan-out)", ""]
    if "skipped" in profile:
        return [*out, f"Skipped: {profile['skipped']}.", ""]
    usable = {k: v for k, v in profile.items() if "areas" in v}
    for key, result in profile.items():
        if key not in usable:
            out.append(f"- {LABELS.get(key, key)}: skipped ({result.get('skipped')}).")
    if not usable:
        return [*out, ""]
    out.append(
        "Each sample is charged to the innermost frame of a known area, so stdlib code "
        "(asyncio, sockets) counts for the library that called it. CPU ms per request is "
        "the server's CPU time (psutil) over the profiled run ÷ its answers."
    )
    out.append("")
    areas: list[str] = []
    for result in usable.values():
        for name, _share in result["areas"]:
            if name not in areas:
                areas.append(name)
    shares = [{name: share for name, share in r["areas"]} for r in usable.values()]
    cpu = [r.get("cpu_ms_per_request") for r in usable.values()]
    header = ["area", *(f"{LABELS.get(k, k)}: share, ms / req" for k in usable)]
    rows = [
        [
            area,
            *(
                f"{_pct(by_area.get(area, 0.0), 1)}, "
                + (f"{by_area.get(area, 0.0) * ms:.2f}" if ms else "—")
                for by_area, ms in zip(shares, cpu, strict=True)
            ),
        ]
        for area in areas
    ]
    rows.append(
        [
            "**server CPU ms / request**",
            *(_num(r.get("cpu_ms_per_request"), 2) for r in usable.values()),
        ]
    )
    rows.append(["req/s while profiled", *(_num(r["rps"]) for r in usable.values())])
    out += _table(header, rows)
    fanout = usable.get("fanout")
    if fanout:
        own = [
            (name, share)
            for area, name, share in fanout.get("top_charged", [])
            if area.startswith("Fanout")
        ][:15]
        out += [
            "Fanout's own code, by the function a sample was charged to (its innermost "
            "Fanout frame, with the stdlib it called), share of all samples:",
            "",
            *_table(["function (file)", "share"], [[f"`{n}`", _pct(s, 1)] for n, s in own]),
            "Fanout's busiest functions (self time, share of samples):",
            "",
        ]
        out += _table(
            ["function (file)", "share"],
            [[f"`{name}`", _pct(share, 1)] for name, share in fanout["top_leaves"]],
        )
    return out


def chart(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """chart.png (scenario 1: req/s and p99 by clients) and overload.png (scenario 4)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    runs = [Run.from_json(r) for r in results["runs"]]
    table = group(runs)
    plan = results["meta"]["plan"]
    written: list[Path] = []
    workers_list = list(plan["workers"])
    fig, axes = plt.subplots(
        2, len(workers_list), figsize=(6 * len(workers_list), 8), squeeze=False
    )
    for column, workers in enumerate(workers_list):
        for contender in (*OURS, *PEERS):
            points = [
                (c, f)
                for c in plan["clients"]
                if (f := table.get(("fanout", contender, "", workers, c)))
            ]
            if not points:
                continue
            xs = [c for c, _ in points]
            axes[0][column].plot(
                xs, [f.rps for _, f in points], marker="o", label=LABELS[contender]
            )
            axes[1][column].plot(
                xs, [f.p99_ms for _, f in points], marker="o", label=LABELS[contender]
            )
        floor = [(c, f) for c in plan["clients"] if (f := table.get(("floor", "floor", "", 0, c)))]
        if floor:
            axes[1][column].plot(
                [c for c, _ in floor],
                [f.p99_ms for _, f in floor],
                linestyle="--",
                color="grey",
                label=LABELS["floor"],
            )
        axes[0][column].set_title(f"fan-out, {workers} worker(s): throughput")
        axes[0][column].set_ylabel("req/s")
        axes[1][column].set_title(f"fan-out, {workers} worker(s): p99 latency")
        axes[1][column].set_ylabel("p99 ms")
        axes[1][column].set_yscale("log")
        for row in (0, 1):
            axes[row][column].set_xscale("log")
            # Ticks at the measured levels, written plainly (10, not 10^1).
            axes[row][column].set_xticks(list(plan["clients"]), map(str, plan["clients"]))
            axes[row][column].minorticks_off()
            axes[row][column].set_xlabel("concurrent clients")
            axes[row][column].legend()
            axes[row][column].grid(True, alpha=0.3)
    fig.suptitle(f"Fanout vs peers, {results['meta']['date']} ({plan['name']} plan)")
    fig.tight_layout()
    path = out_dir / "chart.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    overload = sorted(k for k in table if k[0] == "overload")
    if overload:
        fig, axes2 = plt.subplots(1, 2, figsize=(12, 4.5), squeeze=False)
        for contender in ("fanout", "quart"):
            points = [(k[4], table[k]) for k in overload if k[1] == contender]
            if not points:
                continue
            xs = [c for c, _ in points]
            axes2[0][0].plot(xs, [f.p99_ms for _, f in points], marker="o", label=LABELS[contender])
            axes2[0][1].plot(
                xs,
                [100 * f.errors / f.attempts if f.attempts else 0 for _, f in points],
                marker="o",
                label=LABELS[contender],
            )
        axes2[0][0].set_title("overload (1 s upstreams): p99")
        axes2[0][0].set_ylabel("p99 ms")
        axes2[0][1].set_title("overload: shed (answers ≥ 400 and failures)")
        axes2[0][1].set_ylabel("% of requests")
        levels = sorted({k[4] for k in overload})
        for ax in axes2[0]:
            ax.set_xscale("log")
            ax.set_xticks(levels, map(str, levels))
            ax.minorticks_off()
            ax.set_xlabel("concurrent clients (in flight)")
            ax.legend()
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out_dir / "overload.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written

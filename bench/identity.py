"""CPU per answer of the fan-out with JWT, a rate limit and forwarding on, and without (issue 14).

    python -m bench.identity [--rounds 3] [--clients 100] [--seconds 5] [--out DIR]

Each round serves Fanout twice, interleaved so machine drift hits both:
the benchmark's own gateway file ("plain"), then the same file with
``[auth.jwt]`` (an RSA public key; every request carries a Bearer token),
``[rate_limits] default`` (memory storage, a limit never reached) and the
upstream forwarding ``Authorization`` and ``X-User-Id`` to each of the five
backends ("secured"). It drives the fan-out scenario's load and records the
server process's CPU ms per answer; the end writes the medians and their
ratio to DIR/report.md (the goal: at most 1.10).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.contenders import FANOUT, REPO
from bench.harness import Bench, token
from bench.load import find_load_generator
from bench.plan import QUICK

logger = logging.getLogger("bench.identity")

ISSUER = "https://issuer.bench"
AUDIENCE = "fanout-bench"
VARIANTS = ("plain", "secured")


def _key_and_token() -> tuple[str, str]:
    """A public key PEM, and a token it verifies (valid for a day)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "iat": now, "exp": now + 86400}
    return pem, jwt.encode(claims, private, algorithm="RS256")


def secured_toml(plain: str, pem: str) -> str:
    """The benchmark's gateway file with JWT, a rate limit and forwarding on."""
    forwarding = (
        'internal = true\nforward_headers = ["Authorization"]\nforward_identity = "X-User-Id"'
    )
    body = plain.replace("internal = true", forwarding, 1)
    return f"""[auth.jwt]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
public_keys = ['''{pem}''']

[rate_limits]
storage = "memory://"
# Counted on every request, never reached: the cost of the check, not of refusals.
default = "1000000/second"

{body}"""


async def _measure(args: argparse.Namespace, work_dir: Path) -> dict[str, list[dict[str, Any]]]:
    bench = Bench(plan=QUICK, generator=find_load_generator(), work_dir=work_dir, worker_class=None)
    pem, bearer = _key_and_token()
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    async with bench.serving_upstream():
        files = {"plain": bench.gateway_file, "secured": work_dir / "gateway-secured.toml"}
        files["secured"].write_text(secured_toml(bench.gateway_file.read_text(), pem))
        headers = {"plain": {}, "secured": {"Authorization": f"Bearer {bearer}"}}
        for round_ in range(args.rounds):
            # Alternating which goes first, so a trend in the machine's load favours neither.
            for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
                bench.gateway_file = files[variant]
                async with bench.serving(
                    FANOUT, args.workers, ready_headers=headers[variant]
                ) as served:
                    run = await bench.measure(
                        scenario="identity",
                        served=served,
                        path=f"/fan/{token()}-{{n}}",
                        clients=args.clients,
                        duration=args.seconds,
                        warmup=1.0,
                        round_=round_,
                        variant=variant,
                        headers=headers[variant],
                    )
                ms = 1000 * run.server_cpu_s / max(1, run.load.ok)
                runs[variant].append(
                    {"cpu_ms_per_answer": ms, "rps": run.load.rps, "errors": run.load.errors}
                )
                logger.info(
                    "round %d %s: %.3f ms CPU per answer, %.0f req/s, %d errors",
                    round_ + 1,
                    variant,
                    ms,
                    run.load.rps,
                    run.load.errors,
                )
        bench.gateway_file = files["plain"]
    return runs


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    """The report: per round, the medians, the ratio."""
    medians = {v: statistics.median(r["cpu_ms_per_answer"] for r in runs[v]) for v in VARIANTS}
    ratio = medians["secured"] / medians["plain"]
    lines = [
        f"# JWT + rate limit + forwarding: CPU per answer ({date.today().isoformat()})",
        "",
        f"`python -m bench.identity --rounds {args.rounds} --clients {args.clients} "
        f"--seconds {args.seconds:g} --workers {args.workers}`: the fan-out scenario "
        "(5 backends, distinct keys), server process CPU per answer.",
        "",
        "| round | plain ms | secured ms | plain req/s | secured req/s | errors |",
        "|---|---|---|---|---|---|",
    ]
    for index, (plain, secured) in enumerate(zip(runs["plain"], runs["secured"], strict=True)):
        lines.append(
            f"| {index + 1} | {plain['cpu_ms_per_answer']:.3f} | "
            f"{secured['cpu_ms_per_answer']:.3f} | {plain['rps']:.0f} | {secured['rps']:.0f} | "
            f"{plain['errors']} / {secured['errors']} |"
        )
    lines += [
        "",
        f"Median: plain {medians['plain']:.3f} ms, secured {medians['secured']:.3f} ms; "
        f"ratio **{ratio:.3f}** (goal: at most 1.10).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, measure, write and log the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.identity", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-identity-") as work_dir:
        runs = asyncio.run(_measure(args, Path(work_dir)))
    text = report(runs, args)
    out_dir: Path = args.out or REPO / "bench" / "results" / f"{date.today().isoformat()}-identity"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps(runs, indent=1) + "\n")
    logger.info("report written to %s\n%s", out_dir / "report.md", text)


if __name__ == "__main__":
    main()

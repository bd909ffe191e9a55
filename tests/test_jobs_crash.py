"""kill -9 of a process running jobs: after a restart, none of its jobs stays running."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from tests.fault_upstream import FaultUpstream
from tests.processes import start_gateway

ROOT = Path(__file__).resolve().parent.parent


async def test_jobs_of_a_killed_process_end_interrupted_never_running(
    fault: FaultUpstream, store_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[upstreams.fault]\nbase_url = "{fault.url}"\ninternal = true\ntimeout = 60.0\n'
    )
    env = {
        **os.environ,
        "FANOUT_CONFIG": str(config),
        "FANOUT_JOB_STORE": store_url,
        "FANOUT_JOB_LEASE_SECONDS": "1.0",
        "FANOUT_JOB_POLL_SECONDS": "0.2",
    }
    first, url = await start_gateway(env)
    ids = []
    try:
        async with aiohttp.ClientSession() as client:
            for n in range(20):
                body = {"upstream": "fault", "path": f"/never?job={n}&i={{item}}", "items": [n]}
                async with client.post(f"{url}/jobs/batch", json=body) as response:
                    assert response.status == 202
                    ids.append((await response.json())["id"])
            for _ in range(1000):  # polls: generous budgets, the machine is shared
                if fault.hits["/never"] == 20:
                    break
                await asyncio.sleep(0.02)
            assert fault.hits["/never"] == 20  # all 20 running
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    second, url = await start_gateway(env)
    try:
        async with aiohttp.ClientSession() as client:
            statuses: dict[str, str] = {}
            for _ in range(300):
                for job_id in ids:
                    async with client.get(f"{url}/jobs/{job_id}") as response:
                        assert response.status == 200  # none is lost
                        statuses[job_id] = (await response.json())["status"]
                if all(status == "interrupted" for status in statuses.values()):
                    break
                await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    assert set(statuses.values()) == {"interrupted"}, statuses

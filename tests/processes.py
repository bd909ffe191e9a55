"""The gateway as a real process: ``python -m hypercorn -c hypercorn.toml app:app``."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hypercorn_command(bind: str, *extra: str) -> list[str]:
    """The command that serves the gateway with the repository's hypercorn.toml."""
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "-c",
        "hypercorn.toml",
        "--bind",
        bind,
        *extra,
        "app:app",
    ]


async def start_gateway(
    env: dict[str, str], *extra: str, capture_stderr: bool = False
) -> tuple[asyncio.subprocess.Process, str]:
    """Start the gateway process; return it and its URL once /readyz answers 200."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *hypercorn_command(f"127.0.0.1:{port}", *extra),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE if capture_stderr else asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as client:
        for _ in range(400):
            try:
                async with client.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return process, url
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    await process.wait()
    raise AssertionError("the gateway never became ready")


async def run_failing_gateway(env: dict[str, str]) -> tuple[int, str]:
    """Run the gateway expecting it to stop at startup; return its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        *hypercorn_command("127.0.0.1:0"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()

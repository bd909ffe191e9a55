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


def hypercorn_command(bind: str, *extra: str, application: str = "app:app") -> list[str]:
    """The command serving ``application`` (the gateway) with the repository's hypercorn.toml."""
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "-c",
        "hypercorn.toml",
        "--bind",
        bind,
        # One process, as the README serves it with plain Hypercorn (the
        # file leaves workers to fanout); a later --workers N wins.
        "--workers",
        "0",
        *extra,
        application,
    ]


async def until_ready(
    url: str, process: asyncio.subprocess.Process | None = None, *, tries: int = 600
) -> bool:
    """Poll ``url``/readyz every 50 ms until it answers 200 (True); False once
    ``process`` has exited or the tries run out."""
    async with aiohttp.ClientSession() as client:
        for _ in range(tries):
            if process is not None and process.returncode is not None:
                return False
            try:
                async with client.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    return False


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
    if await until_ready(url, tries=400):
        return process, url
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

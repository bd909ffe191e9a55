"""``fanout``: start the bundled demo upstream, then serve the gateway with Hypercorn."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time

from hypercorn.config import Config
from hypercorn.run import run

logger = logging.getLogger("fanout.launcher")


def _wait_for_port(host: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    """Run the demo upstream (unless --no-demo) and the gateway until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="hypercorn.toml", help="Hypercorn settings file")
    parser.add_argument("--no-demo", action="store_true", help="do not start the demo upstream")
    parser.add_argument("--demo-port", type=int, default=8081)
    args = parser.parse_args()
    # Only the launcher's own logger: Hypercorn configures its own handlers,
    # and a root handler would print each of its lines twice.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    demo: subprocess.Popen[bytes] | None = None
    if not args.no_demo:
        demo = subprocess.Popen([sys.executable, "-m", "demo", "--port", str(args.demo_port)])
        _wait_for_port("127.0.0.1", args.demo_port, seconds=10)
        logger.info("demo upstream on http://127.0.0.1:%d", args.demo_port)
    try:
        config = Config.from_toml(args.config)
        config.application_path = "app:app"
        if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several workers: each writes its metrics here, and /metrics on
            # any of them reports all (set before the workers start).
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fanout-metrics-")
        return run(config)
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())

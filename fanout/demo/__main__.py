"""Run the demo upstream: python -m fanout.demo [--host H] [--port P] [--latency S]."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from fanout.demo.upstream import build_demo_app


def main() -> None:
    """Serve the demo upstream until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per answer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s demo %(message)s")
    web.run_app(
        build_demo_app(args.latency), host=args.host, port=args.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()

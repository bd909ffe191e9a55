"""Flask's own test suite, run against the installed Flask with Fanout's bridge swapped in.

``python -m tests.flask_suite`` fetches the sdist of the installed Flask,
runs its ``tests/`` on plain Flask, with ``BridgeFlask`` as ``flask.Flask``,
and with every test-client request served through ``ASGIBridge``, and
compares each run with ``expected_failures.toml``.
"""

"""The engine Fanout's app, handlers and clients are built on.

- ``fanout.bridge``: serves any Flask app over ASGI, each request in a greenlet
  on the server's loop (knows nothing of the gateway);
- ``fanout.core``: pure logic (config model and validation, merging, paths,
  headers, circuit breaker and retry policies), no I/O;
- ``fanout.jobs``: background jobs, their registry and stores (knows nothing
  of routes);
- ``fanout.process``: what runs per process: the launcher, settings, logs,
  metrics;
- ``fanout.demo``: the bundled offline demo upstream.
"""

"""The process level: the ``fanout`` launcher, settings, structured logs, metrics."""

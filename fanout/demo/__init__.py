"""A bundled demo upstream: a few realistic JSON APIs, so the example runs offline."""

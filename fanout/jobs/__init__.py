"""Background jobs: registry on the server loop, job model, stores (issue: background jobs)."""

"""The pure core: config model and validation, merging, policies. No I/O, no Flask, no aiohttp."""

"""Upstream HTTP calls with aiohttp; knows nothing of Flask."""

"""Benchmarks: ratios against peers measured in one run, never assertions in tests."""

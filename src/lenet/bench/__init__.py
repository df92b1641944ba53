"""Benchmark tooling (``lenet bench`` and the serve load test): entry points, never imported by the library."""

"""Shared by the demo, the tests and the benchmarks: service specs, gateway configs,
the process runner, the route policy and the demo model API."""

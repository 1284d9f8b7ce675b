"""Registers the semgap plugin for the benchmarks and the library's own tests."""

pytest_plugins = ["semgap.bench.plugin"]

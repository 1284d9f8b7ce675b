"""Registers the semgap plugin for the benchmarks and the library's own tests.

scripts/setup.sh also installs it as a pytest11 entry point (pyproject.toml) under this same name, so pytest
registers it once either way; listed here too for a .venv that predates that install.
"""

pytest_plugins = ["semgap.bench.plugin"]

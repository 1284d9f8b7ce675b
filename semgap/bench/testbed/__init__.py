"""The testbed a run builds and tears down: links and namespaces, server processes, counters, monitors, signals."""

"""The experiment driver: the pytest plugin and its options, the design, the runners and their records."""

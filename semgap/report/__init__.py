"""The report of a run: report.md/.tex, tables, plots, terminal lines (python -m semgap.report)."""

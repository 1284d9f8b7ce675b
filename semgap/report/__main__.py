"""python -m semgap.report: regenerate a run's report, or compare two runs."""
import sys

from semgap.report.writer import main

if __name__ == "__main__":
    sys.exit(main())

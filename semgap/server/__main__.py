"""python -m semgap.server: serve a model over a semgap transport."""
import sys

from semgap.server.model_server import main

if __name__ == "__main__":
    sys.exit(main())

"""python -m semgap.server: serve a model over a semgap transport."""
import os
import sys

from semgap.server.model_server import main

if __name__ == "__main__":
    code = main()
    # The server has stopped, closed its connections and said so in its log. What is left is the
    # interpreter's own shutdown: torch's and transformers' exit hooks and freeing the model, ~1.5 s
    # on a 2-core VM, which every teardown after a signal would wait for (issue 24). Nothing in it
    # writes anything the run needs, so leave at once; ServerProcess.stop kills the rest of the group.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

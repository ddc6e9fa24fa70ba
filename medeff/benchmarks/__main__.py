"""``python -m medeff.benchmarks``: the benchmark worker (job JSON on stdin, result JSON on stdout), see :mod:`.worker`."""

import sys

from medeff.benchmarks.worker import main

if __name__ == "__main__":
    sys.exit(main())

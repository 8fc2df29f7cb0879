"""``python -m lab.bench bare-faust MODE`` / ``floor-consumer KIND``: the bench's subprocesses (rows 3 and 6's floor)."""

from __future__ import annotations

import sys

from lab.bench.ceilings import bare_faust_main
from lab.bench.floor import floor_consumer_main

if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "bare-faust":
        mode = sys.argv[2]
        sys.argv = [sys.argv[0], "worker"]  # what faust.Worker's command line expects
        bare_faust_main(mode)
    elif len(sys.argv) >= 3 and sys.argv[1] == "floor-consumer":
        floor_consumer_main(sys.argv[2])
    else:
        print("usage: segflow bench (this module's own entry is for the bench's subprocesses)", file=sys.stderr)
        sys.exit(2)

"""The `compalign` command: a cached `compalign run` is answered by flows/rerun.py's quick path
before the package (torch, Prefect, MLflow) is imported; everything else goes to flows/cli.py."""

from __future__ import annotations

import atexit
import gc
import sys


def main() -> None:
    from flows.rerun import replay

    try:
        answered = replay(sys.argv[1:])
    except Exception:  # noqa: BLE001  a remembered answer that cannot be read is only a miss
        answered = False
    if answered:
        return
    # Registered before anything else registers an exit handler, so it runs last: the objects
    # the imports made (torch, Prefect, MLflow) are left out of the garbage collections that
    # interpreter shutdown runs, which took 2 s after a run had printed its last line.
    atexit.register(gc.freeze)
    from flows.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()

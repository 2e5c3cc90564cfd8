"""The `simbench` command: `simbench [run] [overrides]` runs the Hydra runner; later: find, report."""
from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "report":
        from simbench.report import main as report_main

        sys.exit(report_main(args[1:]))
    if args and args[0] == "run":
        del sys.argv[1]
    from simbench.run import main as run_main

    run_main()

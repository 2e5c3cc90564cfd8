"""`python -m simbench.report`: the same as `simbench report`."""
import sys

from simbench.report.cli import main

sys.exit(main())

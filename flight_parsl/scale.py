"""``python -m flight_parsl.scale``: the command line lives in :mod:`flight_parsl.cli.scale`."""

import sys

from flight_parsl.cli.scale import main

if __name__ == "__main__":
    sys.exit(main())

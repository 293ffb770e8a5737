"""``python -m flight_parsl.baselines.flower``: see :mod:`flight_parsl.baselines.flower.cli`."""

import sys

from flight_parsl.baselines.flower.cli import main

sys.exit(main())

"""``python -m flight_parsl.scale``: the command line lives in :mod:`flight_parsl.cli.scale`."""

from flight_parsl.cli.scale import run_and_exit

if __name__ == "__main__":
    run_and_exit()

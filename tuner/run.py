"""``python -m tuner.run <experiment>``: a whole experiment (see :mod:`tuner.service.cli`)."""

import sys

from tuner.service.cli import Args, main

if __name__ == "__main__":
    import tyro

    sys.exit(main(tyro.cli(Args)))

"""``python -m tuner.train``: one training run, no Ray (see :mod:`tuner.core.cli`)."""

from tuner.core.cli import main

if __name__ == "__main__":
    main()

"""``python -m tuner.run <experiment>``: a whole experiment (see :mod:`tuner.service.cli`)."""

import sys

from tuner.service import ray_start

# before anything imports Ray: it reads these when imported (ray_start.ENV_DEFAULTS)
ray_start.environment_defaults()

from tuner.service.cli import Args, main  # noqa: E402

if __name__ == "__main__":
    import tyro

    sys.exit(main(tyro.cli(Args)))

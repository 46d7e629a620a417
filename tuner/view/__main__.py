"""Serve the experiment viewer: a local web page over one or several experiment folders.

    python -m tuner.view experiments/                 # every experiment folder in it
    python -m tuner.view experiments/exp1 experiments/exp2 --port 5007 --no-show

The page reads only the files the service writes and re-reads them every ``--refresh-s``
seconds, so it follows a running experiment. It binds to 127.0.0.1: on a cluster, reach it
through an SSH tunnel (``ssh -L 5006:127.0.0.1:5006 <node>``).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated

import tyro


@dataclasses.dataclass(frozen=True)
class Args:
    """Serve the experiment viewer over experiment folders."""

    folders: Annotated[tuple[str, ...], tyro.conf.Positional]  # experiment folders, or folders
    # holding them (e.g. experiments/)
    port: int = 5006
    address: str = "127.0.0.1"  # where to listen (loopback: nothing outside this machine)
    show: bool = True  # open the page in the default browser
    refresh_s: float = 5.0  # re-read the files this often (seconds; 0: never)


def main(args: Args) -> int:
    from tuner.view import load

    try:
        folders = load.find_folders(list(args.folders))
    except load.NotAnExperiment as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import panel as pn

    from tuner.view.app import page

    url = f"http://{args.address}:{args.port}/"
    print(f"viewer: {url} ({len(folders)} experiment(s): "
          f"{', '.join(f.name for f in folders)}); Ctrl+C stops it", flush=True)
    roots = [f.root for f in folders]

    def session():  # a plain function: Panel calls it once per browser tab
        return page(roots, args.refresh_s)

    pn.serve({"/": session},
             port=args.port, address=args.address, show=args.show, title="tuner view",
             websocket_origin=[f"{args.address}:{args.port}", f"localhost:{args.port}"],
             verbose=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))

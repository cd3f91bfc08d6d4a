"""``python -m nas.dashboard [runs/]``: serve the Pareto dashboard over the run folders under a folder.

    python -m nas.dashboard runs/                 # http://127.0.0.1:8050
    python -m nas.dashboard runs/ --port 8060 --host 0.0.0.0

It only reads the run folders (a search may be writing one: it shows new trials within a few
seconds); it binds 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from nas.cli import Parser, at_least, run
from spaces.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m nas.dashboard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="?", default="runs", help="a folder of run folders, or one run folder (default runs/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=at_least(0), default=8050, help="port (default 8050; 0: any free port)")
    p.add_argument("--interval", type=at_least(0.5, float), default=2.0,
                   help="seconds between checks of the run folders for new results (default 2)")
    args = p.parse_args(argv)
    root = Path(args.runs)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the folder a search writes its runs into (runs/ by default: "
                        "`make demo` makes one)")
    if args.port > 65535:
        raise UserError(f"--port {args.port} is not a port: give one of 0 to 65535")
    from werkzeug.serving import make_server

    from nas.dashboard.app import build_app

    app = build_app(root, interval_s=args.interval)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    try:
        # bound here first: werkzeug reports a taken port in several lines and exits 1
        with socket.create_server((args.host, args.port)):
            pass
        server = make_server(args.host, args.port, app.server, threaded=True)
    except OSError as exc:
        raise UserError(f"cannot serve on {args.host}:{args.port} ({exc.strerror or exc}); pass another --port "
                        "or --host") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this machine can read these runs",
              file=sys.stderr)
    print(f"dashboard of {root.resolve()} at http://{args.host}:{server.server_port}/ (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    run(main)

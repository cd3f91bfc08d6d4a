"""Launcher for `ray submit` (which copies only this one file to the head node).

    ray submit cluster/aws-gpu.yaml cluster/launch_search.py -- --space inception --budget 2.6G

Runs `python -m nas.search --address auto ARGS...` in the project folder the cluster's
file_mounts put on the head node (~/gan-nas), with that folder's interpreter.
"""

import os
import sys
from pathlib import Path

PROJECT = Path(os.environ.get("GAN_NAS_HOME", "~/gan-nas")).expanduser()


def main() -> None:
    if not (PROJECT / "nas" / "search.py").exists():
        sys.exit(f"launch_search: no project at {PROJECT}; set GAN_NAS_HOME or check the cluster's file_mounts")
    venv = PROJECT / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    os.chdir(PROJECT)
    os.execv(python, [python, "-m", "nas.search", *args])


if __name__ == "__main__":
    main()

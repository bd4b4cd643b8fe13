#!/usr/bin/env bash
# Local mode, step 1: build ./env (the repository's env/ folder) from requirements/workshop.lock,
# place the cached data and model files, and register the "workshop" Jupyter kernel.
#
#   local/setup.bash                 # wheels from cache/wheels, else from PyPI (with hashes)
#   local/setup.bash --offline DIR   # wheels only from DIR (e.g. the thumb drive's wheels/), no network
#   local/setup.bash --python PY     # use this Python 3.11-3.13 instead of the first one found
#
# Safe to run again: with nothing changed it only checks. The work is in local/local_mode.py
# (the same code the thumb drive's launcher runs on Windows and macOS); this finds a Python 3 for it.
for python in python3.13 python3.12 python3.11 python3 python; do
    # the first that runs (a pyenv shim may not) and can run the module (3.8 or later)
    if "$python" -c 'import sys; sys.exit(sys.version_info < (3, 8))' >/dev/null 2>&1; then
        exec "$python" -I "$(dirname "${BASH_SOURCE[0]}")/local_mode.py" setup "$@"
    fi
done
echo "setup.bash: no Python 3 on PATH; install Python 3.11, 3.12 or 3.13 (Debian/Ubuntu: sudo apt install python3 python3-venv)" >&2
exit 2

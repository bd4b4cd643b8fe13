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
# shellcheck source-path=SCRIPTDIR source=local-mode.bash
source "$(dirname "${BASH_SOURCE[0]}")/local-mode.bash"
run_local_mode setup "install Python 3.11, 3.12 or 3.13 (Debian/Ubuntu: sudo apt install python3 python3-venv)" "$@"

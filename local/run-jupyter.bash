#!/usr/bin/env bash
# Local mode, step 2: start JupyterLab on this machine only (127.0.0.1) with notebooks/ as root.
#
#   local/run-jupyter.bash [--port N] [--open]
#
# Runs setup first when ./env is missing or out of date. The port is workshop.yml's ports.jupyter
# (8888) or the next free one; the secret is workshop.yml's jupyter.password_hash, or a fresh
# random token in the URL. --open (or WORKSHOP_OPEN_BROWSER=1) opens a browser. The URL is printed
# last, on its own line, once the server answers; Jupyter's own log goes to env/jupyter.log.
# Ctrl-C stops the server at once. The work is in local/local_mode.py and workshop_jupyter.py.
# shellcheck source-path=SCRIPTDIR source=local-mode.bash
source "$(dirname "${BASH_SOURCE[0]}")/local-mode.bash"
run_local_mode jupyter "run local/setup.bash first" "$@"

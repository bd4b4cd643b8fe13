#!/usr/bin/env bash
# Local mode, step 2: start JupyterLab on this machine only (127.0.0.1) with notebooks/ as root.
#
#   local/run-jupyter.bash [--port N] [--open]
#
# Runs local/setup.bash first when ./env is missing or out of date. The port is workshop.yml's
# ports.jupyter (8888) or the next free one; the secret is workshop.yml's jupyter.password_hash,
# or a fresh random token printed in the URL. --open (or WORKSHOP_OPEN_BROWSER=1) opens a browser.
# The URL is printed last, on its own line, once the server answers; Jupyter's own log goes to
# env/jupyter.log. Ctrl-C stops the server at once. The work is in local/workshop_jupyter.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage="usage: local/run-jupyter.bash [--port N] [--open]"
port=""
open_browser="${WORKSHOP_OPEN_BROWSER:-0}"
while [ $# -gt 0 ]; do
    case "$1" in
        --port) [ $# -ge 2 ] || die "$usage"; port="$2"; shift 2 ;;
        --open) open_browser=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) die "unknown option '$1'; $usage" ;;
    esac
done

ensure_env
[ -z "$port" ] || [[ "$port" =~ ^[0-9]+$ ]] || die "--port $port: give a port number"
# -P: nothing in the current folder shadows a module
exec "$WORKSHOP_ENV_PYTHON" -P "$WORKSHOP_REPO/local/workshop_jupyter.py" serve \
    ${port:+--port "$port"} $([ "$open_browser" = 1 ] && echo --open)

#!/usr/bin/env bash
# Local mode, step 2: start JupyterLab on this machine only (127.0.0.1) with notebooks/ as root.
#
#   local/run-jupyter.bash [--port N] [--open]
#
# Runs local/setup.bash first when ./env is missing or out of date. The port is workshop.yml's
# ports.jupyter (8888) or the next free one; the secret is workshop.yml's jupyter.password_hash,
# or a fresh random token printed in the URL. --open (or WORKSHOP_OPEN_BROWSER=1) opens a browser.
# Ctrl-C stops the server at once.
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
workshop_runtime_env
if [ -n "$port" ]; then
    [[ "$port" =~ ^[0-9]+$ ]] || die "--port $port: give a port number"
    [ "$(free_port "$port")" = "$port" ] || die "port $port is in use; pass another --port"
else
    port="$(free_port "$cfg_jupyter_port")"
fi
mkdir -p "$cfg_notebooks_dir"

auth=()
if [ -n "$cfg_password_hash" ]; then
    auth=(--PasswordIdentityProvider.hashed_password="$cfg_password_hash" --IdentityProvider.token="")
    url="http://127.0.0.1:$port/lab"
    secret="the workshop password"
else
    token="$("$WORKSHOP_ENV_PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"
    auth=(--IdentityProvider.token="$token")
    url="http://127.0.0.1:$port/lab?token=$token"
    secret="the token in this URL"
fi
# Jupyter refuses root unless told; containers and CI machines often are root.
if [ "$(id -u)" = 0 ]; then auth+=(--allow-root); fi
browser=(--no-browser)
if [ "$open_browser" = 1 ]; then browser=(--ServerApp.open_browser=True); fi

say "JupyterLab for $cfg_notebooks_dir"
say "open $url  ($secret); Ctrl-C stops it"
# exec: Ctrl-C/SIGTERM go straight to Jupyter; answer_yes skips its 'really stop?' prompt.
exec "$WORKSHOP_ENV/bin/jupyter" lab \
    --ip=127.0.0.1 --port="$port" --port-retries=0 \
    --ServerApp.root_dir="$cfg_notebooks_dir" \
    --ServerApp.answer_yes=True \
    --MappingKernelManager.default_kernel_name=workshop \
    "${auth[@]}" "${browser[@]}"

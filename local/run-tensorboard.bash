#!/usr/bin/env bash
# Local mode: start TensorBoard on this machine only (127.0.0.1) for the notebooks' logs.
#
#   local/run-tensorboard.bash [--port N] [--logdir DIR]
#
# The log folder is notebooks/logs (or $WORKSHOP_LOGDIR); the port is workshop.yml's
# ports.tensorboard (6006) or the next free one. Ctrl-C stops it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage="usage: local/run-tensorboard.bash [--port N] [--logdir DIR]"
port=""
logdir="${WORKSHOP_LOGDIR:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --port) [ $# -ge 2 ] || die "$usage"; port="$2"; shift 2 ;;
        --logdir) [ $# -ge 2 ] || die "$usage"; logdir="$2"; shift 2 ;;
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
    port="$(free_port "$cfg_tensorboard_port")"
fi
logdir="${logdir:-$cfg_notebooks_dir/logs}"
mkdir -p "$logdir"

say "TensorBoard for $logdir"
say "open http://127.0.0.1:$port/ ; Ctrl-C stops it"
exec "$WORKSHOP_ENV/bin/tensorboard" --logdir "$logdir" --host 127.0.0.1 --port "$port"

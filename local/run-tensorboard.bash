#!/usr/bin/env bash
# Local mode: start TensorBoard on this machine only (127.0.0.1) for the notebooks' logs.
#
#   local/run-tensorboard.bash [--port N] [--logdir DIR]
#
# The log folder is notebooks/logs (or $WORKSHOP_LOGDIR); the port is workshop.yml's
# ports.tensorboard (6006) or the next free one. Ctrl-C stops it. The work is in local/local_mode.py.
# shellcheck source-path=SCRIPTDIR source=local-mode.bash
source "$(dirname "${BASH_SOURCE[0]}")/local-mode.bash"
run_local_mode tensorboard "run local/setup.bash first" "$@"

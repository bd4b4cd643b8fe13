#!/usr/bin/env bash
# Local mode: start TensorBoard on this machine only (127.0.0.1) for the notebooks' logs.
#
#   local/run-tensorboard.bash [--port N] [--logdir DIR]
#
# The log folder is notebooks/logs (or $WORKSHOP_LOGDIR); the port is workshop.yml's
# ports.tensorboard (6006) or the next free one. Ctrl-C stops it. The work is in local/local_mode.py.
for python in python3.13 python3.12 python3.11 python3 python; do
    # the first that runs (a pyenv shim may not) and can run the module (3.8 or later)
    if "$python" -c 'import sys; sys.exit(sys.version_info < (3, 8))' >/dev/null 2>&1; then
        exec "$python" -I "$(dirname "${BASH_SOURCE[0]}")/local_mode.py" tensorboard "$@"
    fi
done
echo "run-tensorboard.bash: no Python 3 on PATH; run local/setup.bash first" >&2
exit 2

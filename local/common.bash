# Shared by local/setup.bash, run-jupyter.bash and run-tensorboard.bash (sourced, not run).
# They work from any current directory: everything is found relative to this file.

WORKSHOP_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKSHOP_ENV="$WORKSHOP_REPO/env"
WORKSHOP_LOCK="$WORKSHOP_REPO/requirements/workshop.lock"
WORKSHOP_CONFIG="$WORKSHOP_REPO/workshop.yml"
# The Pythons TensorFlow 2.21 and the lock serve.
WORKSHOP_PY_MIN=11
WORKSHOP_PY_MAX=13

say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { say "$*"; exit 1; }

WORKSHOP_ENV_PYTHON="$WORKSHOP_ENV/bin/python"

# The setup stamp: what the env was built from. Another lock, Python or workshop.yml (the
# Keras backend goes into the kernel) means setup runs again.
workshop_stamp() {
    local python="$1"
    "$python" -P - "$WORKSHOP_LOCK" "$WORKSHOP_CONFIG" <<'PY'
import hashlib, sys, platform
lock, config = (hashlib.sha256(open(p, "rb").read()).hexdigest()[:16] for p in sys.argv[1:3])
print(f"lock={lock} config={config} python={platform.python_version()} format=2")
PY
}

workshop_env_current() {
    [ -x "$WORKSHOP_ENV_PYTHON" ] && [ -f "$WORKSHOP_ENV/.workshop-stamp" ] \
        && [ "$(workshop_stamp "$WORKSHOP_ENV_PYTHON" 2>/dev/null)" = "$(cat "$WORKSHOP_ENV/.workshop-stamp")" ]
}

# Print shell assignments for the settings local mode reads from workshop.yml (validated).
workshop_settings() {
    # -P: the current folder is not put first on sys.path (nothing there shadows a module)
    PYTHONPATH="$WORKSHOP_REPO${PYTHONPATH:+:$PYTHONPATH}" "$WORKSHOP_ENV_PYTHON" -P - "$WORKSHOP_CONFIG" <<'PY'
import shlex, sys
from pathlib import Path
from appliance.config import load_config
from appliance.errors import ApplianceError
try:
    config = load_config(Path(sys.argv[1]))
except ApplianceError as error:
    print(error, file=sys.stderr)
    sys.exit(2)
w = config.workshop
values = {
    "cfg_keras_backend": w.keras_backend,
    "cfg_jupyter_port": w.ports.jupyter,
    "cfg_tensorboard_port": w.ports.tensorboard,
    "cfg_password_hash": w.jupyter.password_hash or "",
    "cfg_notebooks_dir": str(config.notebooks_dir),
    "cfg_updates_url": w.updates.git_url or "",
    "cfg_updates_branch": w.updates.branch,
}
for key, value in values.items():
    print(f"{key}={shlex.quote(str(value))}")
PY
}

# The first port from $1 upwards (at most 50 tried) that nothing listens on at 127.0.0.1.
free_port() {
    "$WORKSHOP_ENV_PYTHON" -P - "$1" <<'PY'
import socket, sys
start = int(sys.argv[1])
for port in range(start, start + 50):
    with socket.socket() as s:
        # as the servers bind: connections in TIME_WAIT from a previous run do not block the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        sys.exit(0)
sys.exit(f"no free port in {start}..{start + 49}; pass --port")
PY
}

# The port to serve on: the one asked for ($1, must be free) or the first free one from $2 up.
choose_port() {
    local requested="$1" default="$2"
    if [ -z "$requested" ]; then
        free_port "$default"
        return
    fi
    [[ "$requested" =~ ^[0-9]+$ ]] || die "--port $requested: give a port number"
    [ "$(free_port "$requested")" = "$requested" ] || die "port $requested is in use; pass another --port"
    echo "$requested"
}

# Environment for the servers and their kernels: Keras caches in the env, not in ~/.keras.
workshop_runtime_env() {
    export KERAS_HOME="$WORKSHOP_ENV/keras"
    export KERAS_BACKEND="$cfg_keras_backend"
    export PATH="$WORKSHOP_ENV/bin:$PATH"
}

# Run setup.bash when the env is missing or was built from another lock.
ensure_env() {
    if ! workshop_env_current; then
        say "the workshop environment is missing or out of date; running local/setup.bash"
        bash "$WORKSHOP_REPO/local/setup.bash" || exit $?
    fi
    local settings
    settings="$(workshop_settings)" || exit 2
    eval "$settings"
}

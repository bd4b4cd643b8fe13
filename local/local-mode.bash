# Sourced by the local/*.bash scripts: the one place that finds a Python for local/local_mode.py
# (the same code the thumb drive's launcher runs on Windows and macOS).
#   run_local_mode COMMAND HINT [ARGS...]   HINT: what to do when no Python 3 runs
run_local_mode() {
    local command="$1" hint="$2" python
    shift 2
    for python in python3.13 python3.12 python3.11 python3 python; do
        # the first that runs (a pyenv shim may not) and can run the module (3.8 or later)
        if "$python" -c 'import sys; sys.exit(sys.version_info < (3, 8))' >/dev/null 2>&1; then
            exec "$python" -I "$(dirname "${BASH_SOURCE[0]}")/local_mode.py" "$command" "$@"
        fi
    done
    echo "$(basename "$0"): no Python 3 on PATH; $hint" >&2
    exit 2
}

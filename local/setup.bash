#!/usr/bin/env bash
# Local mode, step 1: build ./env (the repository's env/ folder) from requirements/workshop.lock,
# place the cached data and model files, and register the "workshop" Jupyter kernel.
#
#   local/setup.bash                 # wheels from cache/wheels, else from PyPI (with hashes)
#   local/setup.bash --offline DIR   # wheels only from DIR (e.g. the thumb drive's wheels/), no network
#   local/setup.bash --python PY     # use this Python 3.11-3.13 instead of the first one found
#
# Safe to run again: with nothing changed it only checks and exits.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage="usage: local/setup.bash [--offline WHEELS_DIR] [--python PYTHON]"
offline_dir=""
python_arg=""
while [ $# -gt 0 ]; do
    case "$1" in
        --offline) [ $# -ge 2 ] || die "$usage"; offline_dir="$2"; shift 2 ;;
        --python) [ $# -ge 2 ] || die "$usage"; python_arg="$2"; shift 2 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) die "unknown option '$1'; $usage" ;;
    esac
done

install_hint="install Python 3.11, 3.12 or 3.13 (Debian/Ubuntu: sudo apt install python3 python3-venv; Fedora: sudo dnf install python3.13; macOS/Windows: python.org) and pass it with --python"

# Prints "3.11" for a working CPython, nothing (and fails) otherwise.
python_minor() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

python_fits() {
    local minor
    minor="$(python_minor "$1")" || return 1
    [ "${minor%%.*}" = 3 ] && [ "${minor#3.}" -ge "$WORKSHOP_PY_MIN" ] && [ "${minor#3.}" -le "$WORKSHOP_PY_MAX" ]
}

choose_python() {
    if [ -n "$python_arg" ]; then
        local version
        version="$(python_minor "$python_arg")" || die "'$python_arg' is not a working Python; $install_hint"
        python_fits "$python_arg" || die "'$python_arg' is Python $version, but the workshop needs 3.11, 3.12 or 3.13; $install_hint"
        echo "$python_arg"
        return
    fi
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && python_fits "$candidate"; then
            command -v "$candidate"
            return
        fi
    done
    die "no Python 3.11, 3.12 or 3.13 found on PATH; $install_hint"
}

check_platform() {
    if [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = x86_64 ]; then
        die "TensorFlow 2.21 publishes no wheels for Intel Macs; use the workshop VM (the .ova) instead of local mode"
    fi
}

# Where the wheels come from: --offline DIR, else the folder an earlier --offline used (a later
# automatic re-run from run-jupyter.bash stays offline), else cache/wheels, else the index.
wheel_source() {
    if [ -z "$offline_dir" ] && [ -f "$WORKSHOP_ENV/.workshop-wheels" ]; then
        local previous
        previous="$(cat "$WORKSHOP_ENV/.workshop-wheels")"
        if compgen -G "$previous/*.whl" >/dev/null; then offline_dir="$previous"; fi
    fi
    if [ -n "$offline_dir" ]; then
        [ -d "$offline_dir" ] || die "--offline $offline_dir: no such folder; give the folder that holds the .whl files"
        compgen -G "$offline_dir/*.whl" >/dev/null || die "--offline $offline_dir: no .whl files there; give the wheels folder (e.g. the thumb drive's wheels/)"
        (cd "$offline_dir" && pwd)
    elif compgen -G "$WORKSHOP_REPO/cache/wheels/*.whl" >/dev/null; then
        echo "$WORKSHOP_REPO/cache/wheels"
    fi
}

create_env() {
    local python="$1"
    if [ -x "$WORKSHOP_ENV/bin/python" ] \
        && [ "$(python_minor "$WORKSHOP_ENV/bin/python")" = "$(python_minor "$python")" ]; then
        return
    fi
    rm -rf "$WORKSHOP_ENV"
    say "creating $WORKSHOP_ENV with $python ($(python_minor "$python"))"
    if [ "$installer" = uv ]; then
        UV_PYTHON_DOWNLOADS=never uv venv --no-config --quiet --python "$python" "$WORKSHOP_ENV"
    else
        "$python" -P -m venv "$WORKSHOP_ENV" || die "'$python -m venv' failed; install the venv module (Debian/Ubuntu: sudo apt install python3-venv)"
    fi
}

# Quiet: one line per stage here; pip's or uv's own output goes to env/setup.log, shown on failure.
install_lock() {
    local wheels="$1"
    local source_args=() pip_args=() log="$WORKSHOP_ENV/setup.log" count
    count="$(grep -c '^[A-Za-z0-9]' "$WORKSHOP_LOCK" || true)"
    if [ -n "$wheels" ]; then
        source_args=(--no-index --find-links "$wheels")
        pip_args=(--isolated)   # nothing from pip's config or environment (extra indexes, constraints) applies
        say "installing $count locked packages from $wheels (no network; a few minutes with pip, under one with uv)"
    else
        say "no wheelhouse (cache/wheels is empty): installing $count locked packages from PyPI (a few minutes)"
    fi
    local status=0
    if [ "$installer" = uv ]; then
        uv pip sync --no-config --python "$WORKSHOP_ENV/bin/python" --require-hashes ${source_args[@]+"${source_args[@]}"} "$WORKSHOP_LOCK" \
            >"$log" 2>&1 || status=$?
    else
        # ${a[@]+...}: macOS's bash 3.2 calls an empty array unbound under set -u
        "$WORKSHOP_ENV/bin/python" -P -m pip install -q ${pip_args[@]+"${pip_args[@]}"} --disable-pip-version-check \
            --require-hashes --no-deps ${source_args[@]+"${source_args[@]}"} -r "$WORKSHOP_LOCK" >"$log" 2>&1 || status=$?
    fi
    if [ "$status" != 0 ]; then
        tail -n 20 "$log" >&2
        die "installing from the lock failed (above: the end of $log); with --offline, the folder must hold the wheels for this Python and platform"
    fi
}

# `python -m appliance` inside the env imports the package straight from this checkout.
link_appliance() {
    local site
    site="$("$WORKSHOP_ENV/bin/python" -P -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "$WORKSHOP_REPO" > "$site/workshop-appliance.pth"
}

register_kernel() {
    local settings
    settings="$(workshop_settings)" || exit 2
    eval "$settings"
    mkdir -p "$WORKSHOP_ENV/keras"
    # keras.json fixes the backend for anything that reads KERAS_HOME without KERAS_BACKEND
    printf '{"backend": "%s", "floatx": "float32", "epsilon": 1e-07, "image_data_format": "channels_last"}\n' \
        "$cfg_keras_backend" > "$WORKSHOP_ENV/keras/keras.json"
    # the kernel (its environment: Keras backend, quiet TensorFlow) and the lab settings, into ./env
    "$WORKSHOP_ENV/bin/python" -P "$WORKSHOP_REPO/local/workshop_jupyter.py" install --keras-backend "$cfg_keras_backend"
    say "registered the Jupyter kernel 'workshop' (Keras backend: $cfg_keras_backend)"
}

place_assets() {
    local cache="$WORKSHOP_REPO/cache"
    if [ -z "$(find "$cache" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | head -n 1)" ]; then
        say "no downloaded assets in cache/ (run 'bin/appliance fetch' with internet); notebooks that need data will say so"
        return
    fi
    # A missing asset is reported but does not stop local mode: the other notebooks still run.
    say "placing the cached data and model files"
    "$WORKSHOP_ENV/bin/python" -P -m appliance assets place --config "$WORKSHOP_CONFIG" \
        --keras-home "$WORKSHOP_ENV/keras" --notebooks "$cfg_notebooks_dir" >>"$WORKSHOP_ENV/setup.log" \
        || say "warning: some assets could not be placed (see $WORKSHOP_ENV/setup.log); run 'bin/appliance fetch' with internet, then this again"
}

main() {
    check_platform
    if command -v uv >/dev/null 2>&1 && [ "${WORKSHOP_INSTALLER:-}" != pip ]; then installer=uv; else installer=pip; fi
    local python wheels
    python="$(choose_python)"
    wheels="$(wheel_source)"
    if workshop_env_current && [ "$(python_minor "$WORKSHOP_ENV_PYTHON")" = "$(python_minor "$python")" ]; then
        say "env is up to date ($WORKSHOP_ENV)"
    else
        create_env "$python"
        install_lock "$wheels"
        link_appliance
        register_kernel
        if [ -n "$wheels" ] && [ "$wheels" != "$WORKSHOP_REPO/cache/wheels" ]; then echo "$wheels" > "$WORKSHOP_ENV/.workshop-wheels"; fi
        workshop_stamp "$WORKSHOP_ENV/bin/python" > "$WORKSHOP_ENV/.workshop-stamp"
    fi
    local settings
    settings="$(workshop_settings)" || exit 2
    eval "$settings"
    place_assets
    say "done. Start Jupyter with: local/run-jupyter.bash"
}

main

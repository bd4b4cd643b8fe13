"""Local mode from the thumb drive: one entry point for Windows, macOS and Linux.

The drive's per-OS launchers (`Start workshop (Windows).cmd`, `Start workshop (macOS).command`,
`start-workshop-linux.sh`) only copy uv to the participant's home folder, let it install the
drive's CPython, and run this file with it:

    uv run --no-project --python 3.13 python -I local-mode/appliance/launcher.py --drive D --home H --uv UV

Standard library only, run isolated (-I: nothing of its folder, PYTHONPATH or user site shadows
a standard module): it runs before the workshop environment exists, with no appliance venv.
The work is local mode's own code from the drive's local/ (so the Linux path a checkout tests
is the code Windows and macOS run): local/workshop_env.py builds H/env from the drive's wheels
(uv, --no-index --require-hashes, the installer's output in H/env/setup.log), and
local/workshop_jupyter.py installs the workshop kernel and the lab settings into it (the one
kernel, quiet, no news) and serves JupyterLab on 127.0.0.1 with a token kept in a 0600 file and
passed through the environment, never argv. This file adds what only the drive needs: the
notebooks copied (never over a participant's own copy) and the assets placed in H from the
drive's list. A second start finds everything in place and only starts JupyterLab. The first
start also leaves H/start-workshop.sh, .command or .cmd (this file, local/'s two modules and the
drive's settings copied to H), so later starts need neither the drive nor uv: the drive goes on
to the next participant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# local/ beside appliance/ on the drive; H/local/ next to the copy a first start leaves in H
SHARED = next((d for d in (HERE / "local", HERE.parent / "local") if (d / "workshop_env.py").is_file()), HERE / "local")
sys.path.append(str(SHARED))  # -I leaves it off the path; appended, so it shadows no standard module
try:
    import workshop_env
    import workshop_jupyter
except ImportError as missing:  # a half-copied drive or home folder
    print(f"workshop: {SHARED / ((missing.name or 'workshop_env') + '.py')} is missing; copy the drive again", file=sys.stderr)
    sys.exit(2)

DRIVE_JSON = "local-mode/drive.json"
SHARED_MODULES = ("workshop_env.py", "workshop_jupyter.py")
WINDOWS = sys.platform == "win32"


class LaunchError(Exception):
    """Something the participant (or the organizer's drive) must fix; one line, exit 2."""


def say(message: str) -> None:
    print(f"workshop: {message}", flush=True)


def read_drive(drive: Path) -> dict:
    try:
        return json.loads((drive / DRIVE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"{drive / DRIVE_JSON}: cannot read it ({exc}); is --drive the top folder of the workshop drive?") from None


def keras_home(home: Path) -> Path:
    return home / "keras"


def say_error(message: str) -> None:
    print(f"workshop: {message}", file=sys.stderr, flush=True)


def ensure_env(drive: Path, home: Path, uv: Path, info: dict) -> Path:
    """H/env with the lock installed, built once: the stamp names the lock and this Python."""
    env = home / "env"
    wanted = workshop_env.stamp(info["lock_sha256"], platform.python_version())
    if workshop_env.is_current(env, wanted):
        return env
    if (env / "pyvenv.cfg").is_file():
        say(f"the workshop environment in {env} is out of date; building it again")
    say(f"building the workshop environment in {env} from the drive (a few minutes, once)")
    failed = "copy the drive again, or ask the organizers"
    try:
        workshop_env.make_venv(env, sys.executable, str(uv), offline=True)
        workshop_env.install_lock(env, drive / info["lock"], drive / info["wheels"], str(uv), env / "setup.log")
    except workshop_env.InstallFailed as exc:
        raise LaunchError(f"{exc}; {failed}") from None
    workshop_env.write_stamp(env, wanted)
    return env


def copy_new(source: Path, target: Path) -> None:
    """Copy under a temporary name, then rename: a half-copied file never looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def place_files(drive: Path, home: Path, info: dict) -> None:
    """Notebooks the participant has not got yet, and every asset where Keras and the notebooks look."""
    notebooks = drive / info["notebooks"]
    for source in sorted(notebooks.rglob("*")):
        target = home / "notebooks" / source.relative_to(notebooks)
        if source.is_file() and not target.exists():  # never over the participant's own work
            copy_new(source, target)
    for asset in info["assets"]:
        root, _, rest = asset["place"].partition("/")
        target = (keras_home(home) if root == "keras" else home / "notebooks") / rest
        if not target.is_file() or target.stat().st_size != asset["size"]:
            copy_new(drive / asset["file"], target)
    workshop_env.write_keras_json(keras_home(home), info["keras_backend"])


def install_jupyter_settings(home: Path, env: Path, info: dict) -> None:
    """The `workshop` kernel (its environment from local/jupyter/kernel-env.json) and the server
    and lab settings, written into the env by the drive's local/workshop_jupyter.py: local
    mode's code and files, not a copy here. Done at every start from the drive (a fraction of a
    second), so a new drive's settings reach an env built by an older one."""
    workshop_jupyter.install_kernel(env, info["keras_backend"], keras_home(home))


def token_of(home: Path) -> str:
    """This laptop's own token, in a file only the participant can read."""
    path = home / "jupyter-token"
    if path.is_file():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = secrets.token_hex(24)
    partial = home / ".jupyter-token.partial"
    if partial.exists():
        partial.unlink()
    workshop_jupyter.write_private(partial, token + "\n")
    os.replace(partial, path)
    return token


def start_jupyter(home: Path, env: Path, info: dict, port: int | None, browser: bool) -> int:
    """Local mode's own JupyterLab start, with this laptop's token and the drive's settings."""
    lab = workshop_jupyter.Lab(
        env=env, notebooks=home / "notebooks", log=home / "jupyter.log", token=token_of(home),
        port=workshop_jupyter.choose_port(port, info["jupyter_port"]),
        environ={"KERAS_HOME": str(keras_home(home)), "KERAS_BACKEND": info["keras_backend"], "JUPYTER_PLATFORM_DIRS": "1"})

    def ready(lab: workshop_jupyter.Lab) -> None:
        (home / "jupyter-url").write_text(f"{lab.base}/\n", encoding="utf-8")
        say(f"JupyterLab is ready at {lab.base}/lab (token: in {home / 'jupyter-token'}); "
            "close this window or press Ctrl-C to stop")

    return workshop_jupyter.serve(lab, say, ready, browser)


HOME_SH = """#!/bin/sh
# Starts the workshop again without the drive (written by its first start).
home_dir=$(cd "$(dirname "$0")" && pwd -P)
exec "$home_dir/env/bin/python" -I "$home_dir/launcher.py" --home "$home_dir" "$@"
"""
HOME_CMD = """@echo off\r
rem Starts the workshop again without the drive (written by its first start).\r
chcp 65001 >nul\r
"%~dp0env\\Scripts\\python.exe" -I "%~dp0launcher.py" --home "%~dp0." %*\r
if errorlevel 1 pause\r
"""


def keep_at_home(drive: Path, home: Path) -> None:
    """This file, the code it runs, the drive's settings and a start file in H: later starts
    work without the drive."""
    copy_new(Path(__file__), home / "launcher.py")
    for name in SHARED_MODULES:
        copy_new(SHARED / name, home / "local" / name)
    copy_new(drive / DRIVE_JSON, home / "drive.json")
    names = ["start-workshop.cmd"] if WINDOWS else ["start-workshop.sh", "start-workshop.command"]
    for name in names:
        target = home / name
        target.write_text(HOME_CMD if WINDOWS else HOME_SH, encoding="utf-8", newline="")
        target.chmod(0o755)


def from_home(home: Path) -> tuple[dict, Path]:
    """The settings and environment a first start from the drive left in H."""
    try:
        info = json.loads((home / "drive.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LaunchError(f"{home} holds no workshop yet; start it once from the drive") from None
    env = home / "env"
    if not (env / workshop_env.STAMP).is_file() or not workshop_env.env_python(env).exists():
        raise LaunchError(f"{env} is not complete; start the workshop once more from the drive")
    return info, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start the workshop from the thumb drive (local mode).")
    parser.add_argument("--home", type=Path, required=True, help="the participant's workshop folder")
    parser.add_argument("--drive", type=Path, help="the drive's top folder (without it: start what an earlier start set up)")
    parser.add_argument("--uv", type=Path, help="the uv binary copied from the drive (with --drive)")
    parser.add_argument("--port", type=int, help="JupyterLab's port (default: workshop.yml's, or the next free)")
    parser.add_argument("--no-browser", action="store_true", help="print the address instead of opening a browser")
    args = parser.parse_args(argv)
    try:
        home = args.home.resolve()
        if args.drive is None:
            info, env = from_home(home)
        else:
            if args.uv is None:
                raise LaunchError("--drive needs --uv (the drive's launchers give both)")
            drive = args.drive.resolve()
            info = read_drive(drive)
            home.mkdir(parents=True, exist_ok=True)
            env = ensure_env(drive, home, args.uv, info)
            place_files(drive, home, info)
            install_jupyter_settings(home, env, info)
            keep_at_home(drive, home)
        return start_jupyter(home, env, info, args.port, not args.no_browser)
    except (LaunchError, workshop_env.Refused) as exc:
        say_error(str(exc))
        return 2
    except OSError as exc:
        say_error(f"{exc.strerror or exc} ({exc.filename}); check the free space in your home folder")
        return 2


if __name__ == "__main__":
    sys.exit(main())

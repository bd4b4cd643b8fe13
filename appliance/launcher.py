"""Local mode from the thumb drive: one entry point for Windows, macOS and Linux.

The drive's per-OS launchers (`Start workshop (Windows).cmd`, `Start workshop (macOS).command`,
`start-workshop-linux.sh`) only copy uv to the participant's home folder, let it install the
drive's CPython, and run this file with it:

    uv run --no-project --python 3.13 python -I local-mode/appliance/launcher.py --drive D --home H --uv UV

Standard library only, run isolated (-I: nothing of its folder, PYTHONPATH or user site shadows
a standard module): it runs before the workshop environment exists, with no appliance venv.
It builds H/env from the drive's wheels (uv, --no-index --require-hashes), copies the notebooks
(never over a participant's own copy) and places the assets in H, installs the workshop kernel
and the lab settings into H/env with local mode's own local/workshop_jupyter.py from the drive
(the one kernel, quiet, no news: the same first hour as local mode), then serves JupyterLab on
127.0.0.1 with a token kept in a 0600 file and passed through the environment, never argv.
A second start finds everything in place and only starts JupyterLab. The first start also
leaves H/start-workshop.sh, .command or .cmd (this file and the drive's settings copied to H),
so later starts need neither the drive nor uv: the drive goes on to the next participant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path

DRIVE_JSON = "local-mode/drive.json"
STAMP = ".workshop-env.json"
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if WINDOWS else "bin/python")


def keras_home(home: Path) -> Path:
    return home / "keras"


def ensure_env(drive: Path, home: Path, uv: Path, info: dict) -> Path:
    """H/env with the lock installed, built once: the stamp names the lock and this Python."""
    env = home / "env"
    wanted = {"lock_sha256": info["lock_sha256"], "python": sys.version}
    stamp = env / STAMP
    try:
        if json.loads(stamp.read_text(encoding="utf-8")) == wanted and env_python(env).exists():
            return env
    except (OSError, ValueError):
        pass
    if env.exists():
        if not (env / "pyvenv.cfg").is_file():
            raise LaunchError(f"{env} exists but is not a Python environment this launcher made; move it away and start again")
        say(f"the workshop environment in {env} is out of date; building it again")
        shutil.rmtree(env)
    say(f"building the workshop environment in {env} from the drive (a few minutes, once)")
    base = [str(uv), "--no-config", "--offline"]
    run([*base, "venv", "--quiet", "--python", sys.executable, str(env)])
    run([*base, "pip", "sync", "--python", str(env_python(env)), "--no-index", "--find-links",
         str(drive / info["wheels"]), "--require-hashes", str(drive / info["lock"])])
    stamp.write_text(json.dumps(wanted), encoding="utf-8")
    return env


def run(command: list[str]) -> None:
    result = subprocess.run(command)
    if result.returncode != 0:
        raise LaunchError(f"'{Path(command[0]).name} {' '.join(command[1:3])}' failed (see above); "
                          "copy the drive again, or ask the organizers")


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
    keras_json = keras_home(home) / "keras.json"
    keras_json.parent.mkdir(parents=True, exist_ok=True)
    keras_json.write_text(json.dumps({"backend": info["keras_backend"], "floatx": "float32", "epsilon": 1e-07,
                                      "image_data_format": "channels_last"}) + "\n", encoding="utf-8")


def install_jupyter_settings(drive: Path, home: Path, env: Path, info: dict) -> None:
    """The `workshop` kernel (its environment from local/jupyter/kernel-env.json) and the server
    and lab settings, written into the env by the drive's local/workshop_jupyter.py: local
    mode's code and files, not a copy here. Done at every start from the drive (a fraction of a
    second), so a new drive's settings reach an env built by an older one."""
    script = drive / info["jupyter_settings"]
    if not script.is_file():
        raise LaunchError(f"{script} is missing on the drive; copy the drive again, or ask the organizers")
    run([str(env_python(env)), "-I", str(script), "install", "--keras-backend", info["keras_backend"],
         "--keras-home", str(keras_home(home))])


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
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.replace(partial, path)
    return token


def free_port(preferred: int) -> int:
    for port in range(preferred, preferred + 20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LaunchError(f"ports {preferred}-{preferred + 19} are all in use; close another Jupyter and start again")


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"JupyterLab stopped at once (exit status {process.returncode}); see its messages above")
        try:
            with urllib.request.urlopen(f"{url}api", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise LaunchError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def open_browser(home: Path, url: str, token: str) -> None:
    """Open the URL through a 0600 redirect file, as Jupyter does: the token is in no command line."""
    page = home / "open-jupyter.html"
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f'<!DOCTYPE html><meta http-equiv="refresh" content="0; url={url}lab?token={token}">'
                     f'<a href="{url}lab?token={token}">Open JupyterLab</a>\n')
    webbrowser.open(page.as_uri())


def start_jupyter(home: Path, env: Path, info: dict, port: int | None, browser: bool) -> int:
    token = token_of(home)
    port = free_port(port or info["jupyter_port"])
    url = f"http://127.0.0.1:{port}/"
    environment = dict(os.environ, JUPYTER_TOKEN=token, KERAS_HOME=str(keras_home(home)),
                       KERAS_BACKEND=info["keras_backend"], JUPYTER_PLATFORM_DIRS="1")
    command = [str(env_python(env)), "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={home / 'notebooks'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")  # a root shell (a container, a test) is the user's choice
    process = subprocess.Popen(command, env=environment)
    try:
        wait_ready(process, url)
        (home / "jupyter-url").write_text(url + "\n", encoding="utf-8")
        say(f"JupyterLab is ready at {url}lab (token: in {home / 'jupyter-token'}); close this window or press Ctrl-C to stop")
        if browser:
            open_browser(home, url, token)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


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
    """This file, the drive's settings and a start file in H: later starts work without the drive."""
    copy_new(Path(__file__), home / "launcher.py")
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
    if not (env / STAMP).is_file() or not env_python(env).exists():
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
            install_jupyter_settings(drive, home, env, info)
            keep_at_home(drive, home)
        return start_jupyter(home, env, info, args.port, not args.no_browser)
    except LaunchError as exc:
        print(f"workshop: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"workshop: {exc.strerror or exc} ({exc.filename}); check the free space in your home folder", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

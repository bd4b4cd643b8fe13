"""Local mode's Jupyter: the workshop kernel and lab settings, and the one JupyterLab start that
local mode from a checkout (local/local_mode.py) and the thumb drive's launcher
(appliance/launcher.py) both run. Standard library only.

    python -I local/workshop_jupyter.py install --keras-backend B [--keras-home DIR]  # run by the env's Python

`serve` starts JupyterLab on 127.0.0.1 with notebooks/ as root, its output in a log file, and
calls back once the server answers. The token never appears on a command line (other users can
read /proc/PID/cmdline): it goes to Jupyter as JUPYTER_TOKEN, and a browser opens a 0600
redirect file; a password hash goes into a 0600 config file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE))  # run with -I, this folder is not on the path; appended, it shadows nothing
from workshop_env import Refused, env_bin, env_python  # noqa: E402

SETTINGS = HERE / "jupyter"
KERNEL_NAME = "workshop"
KERNEL_DISPLAY_NAME = "Python 3 (workshop)"
PORTS_TRIED = 50
STARTUP_TIMEOUT = 180.0


# --- install: kernel and lab settings --------------------------------------------------------

def kernel_env(keras_backend: str, keras_home: Path) -> dict[str, str]:
    env = json.loads((SETTINGS / "kernel-env.json").read_text(encoding="utf-8"))
    return {**env, "KERAS_BACKEND": keras_backend, "KERAS_HOME": str(keras_home)}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def install(prefix: Path, keras_backend: str, keras_home: Path) -> None:
    """The workshop kernel and the lab settings, into the env's own share/ and etc/ (so nothing
    in the participant's ~/.jupyter changes, and the env's Jupyter finds them). The same paths
    on Windows: Jupyter looks in sys.prefix/share/jupyter and sys.prefix/etc/jupyter everywhere."""
    spec = {
        "argv": [str(env_python(prefix)), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL_DISPLAY_NAME,
        "language": "python",
        "env": kernel_env(keras_backend, keras_home),
        "metadata": {"debugger": True},
    }
    kernel_dir = prefix / "share" / "jupyter" / "kernels" / KERNEL_NAME
    _write(kernel_dir / "kernel.json", json.dumps(spec, indent=1) + "\n")
    try:  # the logos ipykernel ships, so the launcher shows the Python icon
        from ipykernel.kernelspec import RESOURCES
        for logo in Path(RESOURCES).glob("logo-*.png"):
            shutil.copy(logo, kernel_dir / logo.name)
    except ImportError:
        pass
    # jupyter_config.json, not jupyter_server_config.d/: a server started with --config=FILE (ours
    # and the VM's) reads only that file of its own name, but every jupyter_config.json on the path
    for source, target in (("server.json", "etc/jupyter/jupyter_config.json"),
                           ("page_config.json", "etc/jupyter/labconfig/page_config.json"),
                           ("overrides.json", "share/jupyter/lab/settings/overrides.json")):
        _write(prefix / target, (SETTINGS / source).read_text(encoding="utf-8"))


def install_kernel(env: Path, keras_backend: str, keras_home: Path) -> None:
    """install() run by the env's own Python (ipykernel's logos are there): this file, isolated."""
    result = subprocess.run([str(env_python(env)), "-I", str(Path(__file__).resolve()), "install",
                             "--keras-backend", keras_backend, "--keras-home", str(keras_home)])
    if result.returncode != 0:
        raise Refused(f"installing the workshop kernel into {env} failed (see above)")


# --- serve ------------------------------------------------------------------------------------

def port_free(port: int) -> bool:
    with socket.socket() as sock:
        if os.name != "nt":
            # as Jupyter binds: connections in TIME_WAIT from a previous run do not block the port
            # (on Windows the option would let this bind succeed over a listening server)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(requested: int | None, default: int) -> int:
    """The port asked for (it must be free), or the first free one from the default up."""
    if requested is not None:
        if not 0 < requested < 65536:
            raise Refused(f"--port {requested}: give a port number from 1 to 65535")
        if not port_free(requested):
            raise Refused(f"port {requested} is in use; pass another --port")
        return requested
    for port in range(default, default + PORTS_TRIED):
        if port_free(port):
            return port
    raise Refused(f"no free port in {default}..{default + PORTS_TRIED - 1}; pass --port")


@dataclass
class Lab:
    """One JupyterLab to start: the env it runs from and what it serves."""
    env: Path
    notebooks: Path
    port: int
    token: str  # "" when a password hash guards it
    log: Path  # the server's own output
    environ: dict[str, str] = field(default_factory=dict)  # KERAS_HOME, KERAS_BACKEND, ...
    password_hash: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What the participant opens: with the token, it logs the browser in."""
        return f"{self.base}/lab?token={self.token}" if self.token else f"{self.base}/lab"


def server_config(lab: Lab) -> dict:
    config: dict = {
        "ServerApp": {
            "ip": "127.0.0.1", "port": lab.port, "port_retries": 0, "open_browser": False,
            "root_dir": str(lab.notebooks),
            # Ctrl-C stops at once instead of asking "really stop?"
            "answer_yes": True,
        },
    }
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        config["ServerApp"]["allow_root"] = True  # containers and CI machines often are root
    if lab.password_hash:
        config["PasswordIdentityProvider"] = {"hashed_password": lab.password_hash}
        config["IdentityProvider"] = {"token": ""}
    return config


def write_private(path: Path, text: str) -> None:
    """A new file only this user can read (a token or a password hash is in it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def wait_until_up(lab: Lab, process: subprocess.Popen, timeout: float = STARTUP_TIMEOUT) -> bool:
    """Poll /api/status until the server answers (authorised), it exits, or time runs out."""
    headers = {"Authorization": f"token {lab.token}"} if lab.token else {}
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never via a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with direct.open(urllib.request.Request(f"{lab.base}/api/status", headers=headers), timeout=5):
                return True
        except urllib.error.HTTPError as error:
            if error.code in (401, 403) and not lab.token:
                return True  # password login: the server answers, it just wants the password
        except OSError:
            pass
        time.sleep(0.3)
    return False


def open_browser(lab: Lab, folder: Path) -> None:
    """Through a 0600 redirect file, as Jupyter does: the token is on no browser's command line."""
    page = folder / "open-jupyter.html"
    write_private(page, f'<!DOCTYPE html><meta http-equiv="refresh" content="0; url={lab.url}">'
                        f'<a href="{lab.url}">Open JupyterLab</a>\n')
    webbrowser.open(page.as_uri())


def serve(lab: Lab, say: Callable[[str], None], ready: Callable[[Lab], None], browser: bool = False) -> int:
    """Start JupyterLab, call ready(lab) once it answers, and wait until it stops (Ctrl-C, or
    SIGTERM to this process, stops it cleanly). Returns its exit status; 1 if it never answered."""
    lab.notebooks.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="workshop-jupyter-"))  # 0700: only this user reads it
    config_file = run_dir / "jupyter_server_config.json"
    write_private(config_file, json.dumps(server_config(lab)))
    env = {**os.environ, **lab.environ, "PATH": f"{env_bin(lab.env)}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("JUPYTER_TOKEN", None)
    if lab.token:
        env["JUPYTER_TOKEN"] = lab.token
    command = [str(env_python(lab.env)), "-I", "-m", "jupyterlab", f"--config={config_file}"]
    say(f"starting JupyterLab for {lab.notebooks} (its log: {lab.log})")
    started: list[subprocess.Popen] = []
    signals: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        signals.append(signum)
        for process in started:
            if process.poll() is not None:
                continue
            if os.name != "nt":
                process.send_signal(signum)
            elif signum != signal.SIGINT:  # Windows: the console gives the server its own Ctrl-C
                process.terminate()

    # before the server starts, so it does not inherit an ignored SIGINT (a shell's `cmd &`)
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with lab.log.open("a", encoding="utf-8") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=lab.notebooks)
        started.append(process)
        if not wait_until_up(lab, process):
            if signals:  # Ctrl-C while it started: stopped as asked
                return process.returncode or 0
            say(f"JupyterLab did not start; the end of {lab.log} says why:")
            sys.stderr.write("".join(lab.log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:]))
            return 1
        ready(lab)
        if browser:
            open_browser(lab, run_dir)
        return process.wait()
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workshop_jupyter.py")
    commands = parser.add_subparsers(dest="command", required=True)
    inst = commands.add_parser("install")
    inst.add_argument("--keras-backend", required=True)
    inst.add_argument("--keras-home", type=Path, help="where Keras keeps its models and data (default: ENV/keras)")
    args = parser.parse_args(argv)
    install(Path(sys.prefix), args.keras_backend, args.keras_home or Path(sys.prefix) / "keras")
    return 0


if __name__ == "__main__":
    sys.exit(main())

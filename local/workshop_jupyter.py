"""Local mode's Jupyter, shared by local/setup.bash, local/run-jupyter.bash and the thumb drive's
appliance/launcher.py (run with the env's `python -P` or `-I`, so nothing in the current folder
shadows a module; `install` needs only the standard library).

    python -P local/workshop_jupyter.py install --keras-backend B [--keras-home DIR]  # kernel + lab settings into the env
    python -P local/workshop_jupyter.py serve [--port N] [--open]     # start JupyterLab, print the URL last

The token never appears on a command line (other users can read /proc/PID/cmdline): it goes to
Jupyter as JUPYTER_TOKEN; a password hash goes into a 0600 config file.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SETTINGS = HERE / "jupyter"
KERNEL_NAME = "workshop"
KERNEL_DISPLAY_NAME = "Python 3 (workshop)"
PROG = "run-jupyter.bash"
PORTS_TRIED = 50
STARTUP_TIMEOUT = 180.0


class Refused(Exception):
    """Bad input: one line for the user, exit status 2."""


def say(message: str, prog: str = PROG) -> None:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)


# --- install: kernel and lab settings --------------------------------------------------------

def kernel_env(keras_backend: str, keras_home: Path) -> dict[str, str]:
    env = json.loads((SETTINGS / "kernel-env.json").read_text(encoding="utf-8"))
    return {**env, "KERAS_BACKEND": keras_backend, "KERAS_HOME": str(keras_home)}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def env_python(prefix: Path) -> Path:
    return prefix / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


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


# --- serve ------------------------------------------------------------------------------------

def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # as Jupyter binds: connections in TIME_WAIT from a previous run do not block the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(requested: int | None, default: int) -> int:
    if requested is not None:
        if not port_free(requested):
            raise Refused(f"port {requested} is in use; pass another --port")
        return requested
    for port in range(default, default + PORTS_TRIED):
        if port_free(port):
            return port
    raise Refused(f"no free port in {default}..{default + PORTS_TRIED - 1}; pass --port")


def server_config(notebooks: Path, port: int, password_hash: str) -> dict:
    config: dict = {
        "ServerApp": {
            "ip": "127.0.0.1", "port": port, "port_retries": 0, "open_browser": False,
            "root_dir": str(notebooks),
            # Ctrl-C stops at once instead of asking "really stop?"
            "answer_yes": True,
        },
    }
    if password_hash:
        config["PasswordIdentityProvider"] = {"hashed_password": password_hash}
        config["IdentityProvider"] = {"token": ""}
    return config


def wait_until_up(base: str, token: str, process: subprocess.Popen, timeout: float = STARTUP_TIMEOUT) -> bool:
    """Poll /api/status until the server answers (authorised), it exits, or time runs out."""
    headers = {"Authorization": f"token {token}"} if token else {}
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never via a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with direct.open(urllib.request.Request(f"{base}/api/status", headers=headers), timeout=5):
                return True
        except urllib.error.HTTPError as error:
            if error.code in (401, 403) and not token:
                return True  # password login: the server answers, it just wants the password
        except OSError:
            pass
        time.sleep(0.3)
    return False


def serve(port_arg: int | None, open_browser: bool) -> int:
    from appliance.config import load_config

    loaded = load_config(REPO / "workshop.yml")
    workshop = loaded.workshop
    port = choose_port(port_arg, workshop.ports.jupyter)
    notebooks = loaded.notebooks_dir
    notebooks.mkdir(parents=True, exist_ok=True)
    password_hash = workshop.jupyter.password_hash or ""
    token = "" if password_hash else secrets.token_hex(24)

    env_dir = Path(sys.prefix)
    log_path = env_dir / "jupyter.log"
    run_dir = Path(tempfile.mkdtemp(prefix="workshop-jupyter-"))  # 0700: only this user reads it
    config_file = run_dir / "jupyter_server_config.json"
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(server_config(notebooks, port, password_hash), out)

    env = {**os.environ, "JUPYTER_TOKEN": token, "KERAS_BACKEND": workshop.keras_backend,
           "KERAS_HOME": str(env_dir / "keras"), "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    if not token:
        env.pop("JUPYTER_TOKEN")
    command = [str(env_dir / "bin" / "jupyter"), "lab", f"--config={config_file}"]
    if os.name == "posix" and os.geteuid() == 0:
        command.append("--allow-root")  # containers and CI machines often are root
    say(f"starting JupyterLab for {notebooks} (its log: {log_path})")
    started: list[subprocess.Popen] = []

    def forward(signum: int, _frame: object) -> None:
        for process in started:
            if process.poll() is None:
                process.send_signal(signum)

    # before the server starts, so it does not inherit an ignored SIGINT (a shell's `cmd &`)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    with log_path.open("a") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=notebooks)
    started.append(process)
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_until_up(base, token, process):
            forward(signal.SIGTERM, None)
            say(f"JupyterLab did not start; the end of {log_path} says why:")
            sys.stderr.write("".join(log_path.read_text(errors="replace").splitlines(True)[-15:]))
            return 1
        url = f"{base}/lab?token={token}" if token else f"{base}/lab"
        if open_browser:
            webbrowser.open(url)
        say("Ctrl-C stops it. Open this in your browser" + (" (with the workshop password):" if not token else ":"))
        print(url, flush=True)
        return process.wait()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workshop_jupyter.py")
    commands = parser.add_subparsers(dest="command", required=True)
    inst = commands.add_parser("install")
    inst.add_argument("--keras-backend", required=True)
    inst.add_argument("--keras-home", type=Path, help="where Keras keeps its models and data (default: ENV/keras)")
    srv = commands.add_parser("serve")
    srv.add_argument("--port", type=int)
    srv.add_argument("--open", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(Path(sys.prefix), args.keras_backend, args.keras_home or Path(sys.prefix) / "keras")
            return 0
        return serve(args.port, args.open)
    except Refused as refused:
        say(str(refused))
        return 2
    except Exception as error:  # a config error etc.: one line, never a traceback
        from appliance.errors import ApplianceError
        if isinstance(error, ApplianceError):
            say(str(error))
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

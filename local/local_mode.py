"""Local mode from a checkout: what local/setup.bash, run-jupyter.bash, run-tensorboard.bash and
workshop-update.bash do (they only find a Python 3 and run this file with it, isolated).

    python3 -I local/local_mode.py setup [--offline WHEELS_DIR] [--python PYTHON]
    python3 -I local/local_mode.py jupyter [--port N] [--open]
    python3 -I local/local_mode.py tensorboard [--port N] [--logdir DIR]
    python3 -I local/local_mode.py update [--from GIT_URL_OR_FOLDER] [--branch NAME] [--verbose]

Standard library only, like the drive's launcher, and built from the same parts:
local/workshop_env.py makes ./env, local/workshop_jupyter.py installs the kernel and serves.
What workshop.yml says comes from the env's Python (the validated config needs pydantic).
Messages are one line each on stderr, named after the script the participant ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NoReturn

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE))  # -I leaves this folder off the path; appended, so it shadows nothing
import workshop_env  # noqa: E402
import workshop_jupyter  # noqa: E402

REPO = HERE.parent
ENV = REPO / "env"
LOCK = REPO / "requirements" / "workshop.lock"
CONFIG = REPO / "workshop.yml"
CACHE = REPO / "cache"
REMEMBERED_WHEELS = ENV / ".workshop-wheels"
# The Pythons TensorFlow 2.21 and the lock serve.
PYTHONS = ("3.11", "3.12", "3.13")
CANDIDATES = ("python3.13", "python3.12", "python3.11", "python3", "python")
INSTALL_HINT = ("install Python 3.11, 3.12 or 3.13 (Debian/Ubuntu: sudo apt install python3 python3-venv; "
                "Fedora: sudo dnf install python3.13; macOS/Windows: python.org) and pass it with --python")
SCRIPTS = {"setup": "setup.bash", "jupyter": "run-jupyter.bash", "tensorboard": "run-tensorboard.bash",
           "update": "workshop-update.bash"}


Say = Callable[[str], None]


class Stop(Exception):
    """One line for the user, then this exit status (2: something to fix)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def voice(prog: str) -> Say:
    def say(message: str) -> None:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return say


# --- settings from workshop.yml ---------------------------------------------------------------

SETTINGS_CODE = """
import json, sys
from pathlib import Path
from appliance.config import load_config
from appliance.errors import ApplianceError
try:
    config = load_config(Path(sys.argv[1]))
except ApplianceError as error:
    print(error, file=sys.stderr)
    sys.exit(2)
w = config.workshop
print(json.dumps({"keras_backend": w.keras_backend, "jupyter_port": w.ports.jupyter,
                  "tensorboard_port": w.ports.tensorboard, "password_hash": w.jupyter.password_hash or "",
                  "notebooks": str(config.notebooks_dir), "updates_url": w.updates.git_url or "",
                  "updates_branch": w.updates.branch}))
"""


def env_vars() -> dict[str, str]:
    """The env's Python imports `appliance` from this checkout."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def settings() -> dict:
    """What local mode reads from workshop.yml, validated; a config problem is its one line, exit 2."""
    # -P: nothing in the current folder shadows a module
    result = subprocess.run([str(workshop_env.env_python(ENV)), "-P", "-c", SETTINGS_CODE, str(CONFIG)],
                            stdout=subprocess.PIPE, text=True, env=env_vars())
    if result.returncode != 0:
        raise SystemExit(2)  # the config's problem is already on stderr
    return json.loads(result.stdout)


def wanted_stamp(python_version: str | None) -> dict[str, str]:
    # workshop.yml is in it: the Keras backend goes into the kernel
    return workshop_env.stamp(workshop_env.sha256_of(LOCK), python_version or "none",
                              config_sha256=workshop_env.sha256_of(CONFIG))


def env_version() -> str | None:
    return workshop_env.python_version(workshop_env.env_python(ENV))


# --- setup ------------------------------------------------------------------------------------

def check_platform() -> None:
    if platform.system() == "Darwin" and platform.machine() == "x86_64":
        raise Stop("TensorFlow 2.21 publishes no wheels for Intel Macs; use the workshop VM (the .ova) instead of local mode")


def choose_python(given: str | None) -> tuple[str, str]:
    """(python, '3.11.7'): the one given, or the first fitting one on PATH."""
    if given:
        version = workshop_env.python_version(given)
        if version is None:
            raise Stop(f"'{given}' is not a working Python; {INSTALL_HINT}")
        if workshop_env.minor(version) not in PYTHONS:
            raise Stop(f"'{given}' is Python {workshop_env.minor(version)}, but the workshop needs 3.11, 3.12 or 3.13; {INSTALL_HINT}")
        return given, version
    if "%d.%d" % sys.version_info[:2] in PYTHONS:
        # the bash caller ran the first of CANDIDATES that works: this one, no need to ask again
        return sys.executable, platform.python_version()
    for name in CANDIDATES:
        found = shutil.which(name)
        version = workshop_env.python_version(found) if found else None
        if workshop_env.minor(version) in PYTHONS:
            return found, version
    raise Stop(f"no Python 3.11, 3.12 or 3.13 found on PATH; {INSTALL_HINT}")


def has_wheels(folder: Path) -> bool:
    return any(folder.glob("*.whl"))


def wheel_source(offline: Path | None) -> Path | None:
    """--offline DIR, else the folder an earlier --offline used (a later automatic setup from
    run-jupyter.bash stays offline), else cache/wheels, else None: the index."""
    if offline is None and REMEMBERED_WHEELS.is_file():
        previous = Path(REMEMBERED_WHEELS.read_text(encoding="utf-8").strip())
        if has_wheels(previous):
            offline = previous
    if offline is not None:
        if not offline.is_dir():
            raise Stop(f"--offline {offline}: no such folder; give the folder that holds the .whl files")
        if not has_wheels(offline):
            raise Stop(f"--offline {offline}: no .whl files there; give the wheels folder (e.g. the thumb drive's wheels/)")
        return Path(os.path.abspath(offline))  # as given (symlinks kept), from any current folder
    return CACHE / "wheels" if has_wheels(CACHE / "wheels") else None


def link_appliance() -> None:
    """`python -m appliance` inside the env imports the package straight from this checkout."""
    site = subprocess.run([str(workshop_env.env_python(ENV)), "-I", "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "workshop-appliance.pth").write_text(f"{REPO}\n", encoding="utf-8")


def build(wheels: Path | None, uv: str | None, say: Say) -> None:
    """The lock, the link to this checkout, keras.json and the kernel into the venv; the stamp last."""
    log = ENV / "setup.log"
    count = workshop_env.locked_count(LOCK)
    if wheels:
        say(f"installing {count} locked packages from {wheels} (no network; a few minutes with pip, under one with uv)")
    else:
        say(f"no wheelhouse (cache/wheels is empty): installing {count} locked packages from PyPI (a few minutes)")
    try:
        workshop_env.install_lock(ENV, LOCK, wheels, uv, log)
    except workshop_env.InstallFailed as failed:
        raise Stop(f"{failed}; with --offline, the folder must hold the wheels for this Python and platform", 1) from None
    link_appliance()
    config = settings()
    workshop_env.write_keras_json(ENV / "keras", config["keras_backend"])
    # the kernel (its environment: Keras backend, quiet TensorFlow) and the lab settings, into ./env
    workshop_jupyter.install_kernel(ENV, config["keras_backend"], ENV / "keras")
    say(f"registered the Jupyter kernel 'workshop' (Keras backend: {config['keras_backend']})")
    if wheels and wheels != CACHE / "wheels":
        REMEMBERED_WHEELS.write_text(f"{wheels}\n", encoding="utf-8")
    workshop_env.write_stamp(ENV, wanted_stamp(env_version()))


def place_assets(notebooks: str, say: Say) -> None:
    if not CACHE.is_dir() or not any(p.is_file() and not p.name.startswith(".") for p in CACHE.iterdir()):
        say("no downloaded assets in cache/ (run 'bin/appliance fetch' with internet); notebooks that need data will say so")
        return
    # A missing asset is reported but does not stop local mode: the other notebooks still run.
    say("placing the cached data and model files")
    with (ENV / "setup.log").open("a", encoding="utf-8") as log:
        placed = subprocess.run([str(workshop_env.env_python(ENV)), "-P", "-m", "appliance", "assets", "place",
                                 "--config", str(CONFIG), "--keras-home", str(ENV / "keras"), "--notebooks", notebooks],
                                stdout=log, env=env_vars()).returncode
    if placed != 0:
        say(f"warning: some assets could not be placed (see {ENV / 'setup.log'}); run 'bin/appliance fetch' with internet, then this again")


def setup(offline: Path | None = None, python_arg: str | None = None) -> None:
    """Build ./env from the lock (once: with nothing changed it only checks), place the assets."""
    say = voice("setup.bash")
    check_platform()
    uv = shutil.which("uv") if os.environ.get("WORKSHOP_INSTALLER") != "pip" else None
    python, version = choose_python(python_arg)
    wheels = wheel_source(offline)
    current = env_version()
    if workshop_env.is_current(ENV, wanted_stamp(current)) and workshop_env.minor(current) == workshop_env.minor(version):
        say(f"env is up to date ({ENV})")
    else:
        try:
            if workshop_env.make_venv(ENV, python, uv, offline=wheels is not None):
                say(f"created {ENV} with {python} ({workshop_env.minor(version)})")
        except workshop_env.InstallFailed as failed:
            raise Stop(str(failed), 1) from None
        build(wheels, uv, say)
    place_assets(settings()["notebooks"], say)
    say("done. Start Jupyter with: local/run-jupyter.bash")


def ensure_env(say: Say) -> dict:
    """The env as setup leaves it (setup runs first when it is missing or out of date); the settings."""
    if not workshop_env.is_current(ENV, wanted_stamp(env_version())):
        say("the workshop environment is missing or out of date; running local/setup.bash")
        setup()
    return settings()


def runtime_env(config: dict) -> dict[str, str]:
    """For the servers and their kernels: Keras caches in the env, not in ~/.keras."""
    return {"KERAS_HOME": str(ENV / "keras"), "KERAS_BACKEND": config["keras_backend"]}


# --- jupyter, tensorboard, update ---------------------------------------------------------------

def jupyter(port: int | None, browser: bool, say: Say) -> int:
    config = ensure_env(say)
    token = "" if config["password_hash"] else secrets.token_hex(24)
    lab = workshop_jupyter.Lab(env=ENV, notebooks=Path(config["notebooks"]), log=ENV / "jupyter.log", token=token,
                               port=workshop_jupyter.choose_port(port, config["jupyter_port"]),
                               environ=runtime_env(config), password_hash=config["password_hash"])

    def ready(lab: workshop_jupyter.Lab) -> None:
        say("Ctrl-C stops it. Open this in your browser" + (":" if lab.token else " (with the workshop password):"))
        print(lab.url, flush=True)  # the last line, on its own

    return workshop_jupyter.serve(lab, say, ready, browser)


def tensorboard(port: int | None, logdir: Path | None, say: Say) -> NoReturn:
    config = ensure_env(say)
    port = workshop_jupyter.choose_port(port, config["tensorboard_port"])
    logdir = logdir or Path(config["notebooks"]) / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    say(f"TensorBoard for {logdir}")
    say(f"open http://127.0.0.1:{port}/ ; Ctrl-C stops it")
    bin_dir = workshop_env.env_bin(ENV)
    environ = {**os.environ, **runtime_env(config), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(bin_dir / "tensorboard"), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    os.execve(command[0], command, environ)


def update(source: str | None, branch: str | None, verbose: bool, say: Say) -> NoReturn:
    config = ensure_env(say)
    source = source or config["updates_url"]
    if not source:
        raise Stop("workshop.yml names no updates.git_url; pass --from with the organizer's git URL or the thumb drive's notebooks folder")
    python = str(workshop_env.env_python(ENV))
    command = [python, "-P", str(REPO / "appliance" / "update.py"), "--from", source,
               "--branch", branch or config["updates_branch"], "--notebooks", config["notebooks"]]
    os.execv(python, command + (["--verbose"] if verbose else []))


# --- the command line -------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """A mistake on the command line is one line naming the usage, exit 2."""

    def error(self, message: str) -> NoReturn:
        voice(self.prog)(f"{message}; {self.format_usage().strip()}")
        sys.exit(2)


def parser_for(command: str) -> Parser:
    parser = Parser(prog=SCRIPTS[command])
    if command == "setup":
        parser.add_argument("--offline", type=Path, metavar="WHEELS_DIR", help="wheels only from this folder, no network")
        parser.add_argument("--python", help="this Python 3.11-3.13 instead of the first one found")
    elif command == "jupyter":
        parser.add_argument("--port", type=int)
        parser.add_argument("--open", action="store_true", default=os.environ.get("WORKSHOP_OPEN_BROWSER") == "1",
                            help="open a browser at the URL")
    elif command == "tensorboard":
        parser.add_argument("--port", type=int)
        parser.add_argument("--logdir", type=Path, default=Path(os.environ["WORKSHOP_LOGDIR"]) if os.environ.get("WORKSHOP_LOGDIR") else None)
    else:
        parser.add_argument("--from", dest="source", metavar="GIT_URL_OR_FOLDER")
        parser.add_argument("--branch")
        parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SCRIPTS:
        print(f"usage: local_mode.py {{{','.join(SCRIPTS)}}} [options]", file=sys.stderr)
        return 2
    command = argv[0]
    args = parser_for(command).parse_args(argv[1:])
    say = voice(SCRIPTS[command])
    try:
        if command == "setup":
            setup(args.offline, args.python)
            return 0
        if command == "jupyter":
            return jupyter(args.port, args.open, say)
        if command == "tensorboard":
            tensorboard(args.port, args.logdir, say)
        update(args.source, args.branch, args.verbose, say)
    except Stop as stop:
        say(str(stop))
        return stop.status
    except workshop_env.Refused as refused:
        say(str(refused))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

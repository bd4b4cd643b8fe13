"""The workshop environment (a venv with the lock installed), built the one way local mode from a
checkout (local/local_mode.py) and the thumb drive's launcher (appliance/launcher.py) both use.

Standard library only: it runs before the environment exists, under whatever Python 3 started
it (a system python3, or the CPython uv installed from the drive). Nothing is installed
without the lock's hashes (--require-hashes); from a wheels folder nothing touches the network.
The installer's own output goes to a log; only a failure shows its end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

STAMP = ".workshop-env.json"
WINDOWS = os.name == "nt"


class Refused(Exception):
    """Something the user must fix (an env/ the workshop did not make, a busy port): one line, exit 2."""


class InstallFailed(Exception):
    """The installer failed; the end of its log is already on stderr. The caller says what to do."""


def env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if WINDOWS else "bin/python")


def env_bin(env: Path) -> Path:
    return env / ("Scripts" if WINDOWS else "bin")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def python_version(python: str | Path) -> str | None:
    """'3.11.7' for a working Python, None for anything else (missing, broken, not Python)."""
    try:
        result = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    version = result.stdout.strip()
    return version if result.returncode == 0 and version[:1].isdigit() else None


def minor(version: str | None) -> str | None:
    """'3.11' of '3.11.7'."""
    return ".".join(version.split(".")[:2]) if version else None


# --- the stamp: what the env was built from; anything else means building again ---------------

def stamp(lock_sha256: str, python: str, **extra: str) -> dict[str, str]:
    return {"lock_sha256": lock_sha256, "python": python, **extra}


def is_current(env: Path, wanted: dict[str, str]) -> bool:
    try:
        found = json.loads((env / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return found == wanted and env_python(env).exists()


def write_stamp(env: Path, wanted: dict[str, str]) -> None:
    (env / STAMP).write_text(json.dumps(wanted, sort_keys=True) + "\n", encoding="utf-8")


# --- building ---------------------------------------------------------------------------------

def make_venv(env: Path, python: str, uv: str | None, offline: bool) -> bool:
    """A venv at env for python: kept when it already has that Python's minor version (the
    install then brings it to the lock), made anew otherwise. True when it was made anew.
    A folder there that is not a venv is someone's own: refused, never removed."""
    if (env / "pyvenv.cfg").is_file() and minor(python_version(env_python(env))) == minor(python_version(python)):
        return False
    if env.is_symlink() or env.is_file() or (env.is_dir() and any(env.iterdir()) and not (env / "pyvenv.cfg").is_file()):
        raise Refused(f"{env} exists but is not a Python environment the workshop made; move it away and start again")
    if env.is_dir():
        shutil.rmtree(env)
    if uv:
        command = [uv, "venv", "--no-config", "--quiet", *(["--offline"] if offline else []), "--python", python, str(env)]
    else:
        command = [python, "-I", "-m", "venv", str(env)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        if uv:
            raise InstallFailed(f"'uv venv' failed for {python}")
        raise Refused(f"'{python} -m venv' failed; install the venv module (Debian/Ubuntu: sudo apt install python3-venv)")
    return True


def install_command(env: Path, lock: Path, wheels: Path | None, uv: str | None) -> list[str]:
    """uv pip sync (exactly the lock) or pip install (the lock, no dependency resolution)."""
    source = ["--no-index", "--find-links", str(wheels)] if wheels else []
    if uv:
        return [uv, "pip", "sync", "--no-config", *(["--offline"] if wheels else []), "--python", str(env_python(env)),
                "--require-hashes", *source, str(lock)]
    # --isolated: nothing from pip's config or environment (extra indexes, constraints) applies
    return [str(env_python(env)), "-I", "-m", "pip", "install", "-q", "--isolated", "--disable-pip-version-check",
            "--require-hashes", "--no-deps", *source, "-r", str(lock)]


def install_lock(env: Path, lock: Path, wheels: Path | None, uv: str | None, log: Path) -> None:
    """The lock into env, quietly: the installer writes to log; on failure its end goes to stderr."""
    with log.open("w", encoding="utf-8") as out:
        status = subprocess.run(install_command(env, lock, wheels, uv), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL).returncode
    if status != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        sys.stderr.write("".join(line + "\n" for line in tail))
        raise InstallFailed(f"installing from the lock failed (above: the end of {log})")


def locked_count(lock: Path) -> int:
    """How many packages the lock pins (its requirement lines)."""
    return sum(1 for line in lock.read_text(encoding="utf-8").splitlines() if line[:1].isalnum())


def write_keras_json(keras_home: Path, backend: str) -> None:
    """keras.json fixes the backend for anything that reads KERAS_HOME without KERAS_BACKEND."""
    keras_home.mkdir(parents=True, exist_ok=True)
    (keras_home / "keras.json").write_text(json.dumps({"backend": backend, "floatx": "float32", "epsilon": 1e-07,
                                                       "image_data_format": "channels_last"}) + "\n", encoding="utf-8")

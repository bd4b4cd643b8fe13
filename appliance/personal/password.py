"""The personal Jupyter's password, kept on the organizer's machine only as its hash, in the
format jupyter_server's `passwd()` writes (`argon2:$argon2id$...`, the same parameters), which
Jupyter's PasswordIdentityProvider checks at login. The plain password is never stored: a typed
one stays in the organizer's head, a generated one is printed once."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError, ConfigError, UsageError
from appliance.hub.passwords import new_password
from appliance.values import check_password_hash
from appliance.vm.cachepaths import workshop_state

PASSWORD_FILE = "personal-password.json"
# A typed password is all that stands between the internet and a machine that runs any code
# its holder sends: 12 characters at least (a generated one has 16, 80 bits).
MIN_LENGTH = 12
# jupyter_server.auth.passwd()'s argon2 parameters: the hash is what Jupyter's own tool would make.
_ARGON2 = {"memory_cost": 10240, "time_cost": 10, "parallelism": 8}


def password_path(config: LoadedConfig) -> Path:
    """Outside the repository (cache/ is never committed), mode 0600, like hub-accounts.json."""
    return workshop_state(config) / PASSWORD_FILE


def _hasher():
    try:
        import argon2
    except ImportError:
        raise ApplianceError("argon2-cffi is not installed; run `pip install -e .[vm]` (bin/install-test-deps does)") from None
    return argon2.PasswordHasher(**_ARGON2)


def check_strength(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise UsageError(f"the password has {len(password)} characters; use at least {MIN_LENGTH} (or --generate)")
    if password != password.strip() or any(ord(char) < 32 for char in password):
        raise UsageError("the password starts or ends with a space or holds a control character; type another")
    return password


def hash_password(password: str) -> str:
    return "argon2:" + _hasher().hash(password)


def verify(password: str, hashed: str) -> bool:
    """The check Jupyter makes at login (jupyter_server.auth.passwd_check for argon2 hashes)."""
    import argon2

    try:
        return _hasher().verify(hashed.removeprefix("argon2:"), password)
    except argon2.exceptions.VerificationError:
        return False


def save_hash(path: Path, hashed: str) -> None:
    """Written 0600 from the start, through a temporary name: never readable by others, never half.
    The key is the variable the deploy play loads (personal.yml)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"personal_password_hash": hashed}, handle)
        handle.write("\n")
    os.replace(partial, path)
    os.chmod(path, 0o600)


def load_hash(path: Path) -> str | None:
    """The stored hash, None when no password was set yet."""
    if not path.exists():
        return None
    try:
        hashed = json.loads(path.read_text(encoding="utf-8"))["personal_password_hash"]
        return check_password_hash(hashed)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is damaged; run `appliance personal password` again") from None


def generate() -> str:
    """16 characters in 4 groups without look-alikes (80 bits), the shape of the hub's passwords."""
    return new_password()


def same(first: str, second: str) -> bool:
    return secrets.compare_digest(first.encode(), second.encode())

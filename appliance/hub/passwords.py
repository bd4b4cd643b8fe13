"""Hub passwords: one random password per roster user, kept on the organizer's machine only as
its sha512-crypt hash (what /etc/shadow and Ansible's `user` module take).

The plain passwords exist only on the slips sheet of the run that made them. A later run keeps
every existing user's hash (their slip stays valid) and makes passwords only for new users and
for those named to reset."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError, ConfigError

# Crockford's base 32 in lower case (no i, l, o, u): nothing on a printed slip reads as another
# character. 4 groups of 4 = 16 characters = 80 bits, the same shape as the VM's Jupyter token.
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
GROUPS, GROUP_LENGTH = 4, 4
ACCOUNTS_FILE = "hub-accounts.json"


def new_password() -> str:
    return "-".join("".join(secrets.choice(ALPHABET) for _ in range(GROUP_LENGTH)) for _ in range(GROUPS))


def _openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise ApplianceError("openssl is not installed; install it (Debian/Fedora package `openssl`) to hash the passwords")
    return found


def crypt_sha512(password: str, salt: str | None = None) -> str:
    """`$6$salt$hash`, made by `openssl passwd -6`; the password goes through stdin, never argv."""
    command = [_openssl(), "passwd", "-6", "-stdin"]
    if salt is not None:
        command[3:3] = ["-salt", salt]
    result = subprocess.run(command, input=password + "\n", capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.startswith("$6$"):
        raise ApplianceError(f"openssl passwd -6 failed: {result.stderr.strip() or 'no hash'}")
    return result.stdout.strip()


def verify(password: str, hashed: str) -> bool:
    salt = hashed.split("$")[2]
    return secrets.compare_digest(crypt_sha512(password, salt), hashed)


@dataclass(frozen=True)
class Issued:
    """The outcome of one run: new plain passwords (for the slips) and the users kept."""

    new: dict[str, str]
    kept: list[str]
    dropped: list[str]


def load_accounts(path: Path) -> dict[str, str]:
    """user name -> hash, from the accounts file (empty when there is none yet)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {entry["name"]: entry["password_hash"] for entry in data["hub_accounts"]}
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is damaged; move it away and run `appliance hub slips` again "
                          "(every participant then gets a new password)") from None


def save_accounts(path: Path, accounts: dict[str, str]) -> None:
    """Written 0600 from the start, through a temporary name: never readable by others, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"hub_accounts": [{"name": n, "password_hash": h} for n, h in accounts.items()]}, handle, indent=1)
        handle.write("\n")
    os.replace(partial, path)
    os.chmod(path, 0o600)


def issue(path: Path, users: Sequence[str], reset: Iterable[str] = ()) -> Issued:
    """Make the accounts file hold exactly `users`: existing hashes kept (unless in `reset`), new
    passwords for the rest. Returns the new plain passwords; they are never stored."""
    reset = set(reset)
    unknown = sorted(reset - set(users))
    if unknown:
        raise ConfigError(f"--reset {', '.join(unknown)}: not on the roster or among the admins")
    old = load_accounts(path)
    accounts: dict[str, str] = {}
    new: dict[str, str] = {}
    kept: list[str] = []
    for name in users:
        if name in old and name not in reset:
            accounts[name] = old[name]
            kept.append(name)
        else:
            new[name] = new_password()
            accounts[name] = crypt_sha512(new[name])
    save_accounts(path, accounts)
    return Issued(new=new, kept=kept, dropped=sorted(set(old) - set(accounts)))

"""The class roster: a CSV of `user name[, e-mail]`, one participant per line.

Every row is checked before anything is written: a bad row is one line naming the file and the
line number (exit 2), so an organizer fixes the sheet, not the state."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from appliance.config import check_user_name
from appliance.errors import ConfigError

MAX_BYTES = 1 << 20
# Accounts the system or this project already uses: a roster row must never take one over.
RESERVED = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup", "messagebus", "sshd", "polkitd",
    "adm", "operator", "ftp", "halt", "shutdown", "tss", "dbus", "chrony", "_apt", "tcpdump",
    "workshop", "vagrant", "instructor", "jupyterhub", "admin", "sudo", "wheel", "users", "staff",
})
_HEADER_NAMES = {"user", "username", "user name", "name", "login"}


@dataclass(frozen=True)
class Participant:
    name: str
    email: str = ""


def _check_email(value: str) -> str:
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() or c in "<>,;\"'" for c in value):
        raise ValueError(f"{value!r} is not an e-mail address; write name@example.org or leave it empty")
    return value


def check_name(value: str) -> str:
    check_user_name(value)
    if value in RESERVED or value.startswith("systemd-"):
        raise ValueError(f"{value!r} is a system account name; choose another user name")
    return value


def parse_roster(text: str, source: str) -> list[Participant]:
    """Rows of `name[,email]`; blank lines and lines starting with '#' are skipped, and a first
    row naming the columns (user,email) is a header."""
    people: list[Participant] = []
    seen: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ConfigError(f"{source}:{reader.line_num}: {exc}; check the quotes on that line") from None
        number = reader.line_num  # the last physical line of the row
        cells = [cell.strip() for cell in row]
        if not cells or all(not c for c in cells) or cells[0].startswith("#"):
            continue
        if not seen and not people and cells[0].lower() in _HEADER_NAMES:
            continue
        try:
            if len(cells) > 2:
                raise ValueError(f"has {len(cells)} columns; write `user name` or `user name,e-mail`")
            name = check_name(cells[0])
            email = _check_email(cells[1]) if len(cells) == 2 and cells[1] else ""
        except ValueError as exc:
            raise ConfigError(f"{source}:{number}: {exc}") from None
        if name in seen:
            raise ConfigError(f"{source}:{number}: {name!r} is already on line {seen[name]}; list each user once")
        seen[name] = number
        people.append(Participant(name, email))
    return people


def read_roster(path: Path) -> list[Participant]:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; write the roster (one `user name[,e-mail]` per line) or fix hub.roster")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size} bytes, more than 1 MiB; a roster is one short line per participant")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}:1: not UTF-8 text; save the sheet as CSV UTF-8") from None
    return parse_roster(text, str(path))

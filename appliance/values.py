"""Checks of single values in workshop.yml: one-line texts, an ssh public key, a password hash.

Each raises ValueError with what to change; pydantic turns it into the file's line.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

# What jupyter_server.auth.passwd() writes: argon2-cffi's encoded hash, or a salted sha1.
_PASSWORD_HASH = re.compile(
    r"argon2:\$argon2(id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}"
    r"|sha1:[0-9a-f]{1,64}:[0-9a-f]{40}"
)
SSH_KEY_TYPES = (
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
_MAX_SSH_KEY = 16 * 1024


def control_character(value: str) -> str | None:
    """The first character that breaks a one-line text (control, line or paragraph separator)."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def one_line(value: str) -> str:
    found = control_character(value)
    if found:
        raise ValueError(
            f"contains a line break or control character ({found}); write it on one line of plain text "
            "(it goes into the OVA, systemd units and the guide)"
        )
    return value


def check_ssh_public_key(value: str) -> str:
    """One OpenSSH public key line: `<type> <base64> [comment]`, the blob naming the same type."""
    if "PRIVATE KEY" in value:
        raise ValueError("this is a private key; give the public key (the one line of the .pub file) and keep the private key secret")
    if len(value) > _MAX_SSH_KEY or control_character(value):
        raise ValueError("must be one line: the contents of the .pub file (e.g. ~/.ssh/id_ed25519.pub)")
    parts = value.split(maxsplit=2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise ValueError(
            f"must start with a key type ({', '.join(SSH_KEY_TYPES[:5])}, sk-...) and the key; "
            "paste the one line of the .pub file"
        )
    kind, blob = parts[0], parts[1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the key after {kind!r} is not valid base64; paste the .pub file's line unchanged") from None
    length = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if raw[4 : 4 + length] != kind.encode():
        raise ValueError(f"the key data is not an {kind} key; paste the .pub file's line unchanged")
    return value


def check_password_hash(value: str) -> str:
    if not _PASSWORD_HASH.fullmatch(value):
        raise ValueError(
            "must be a hash made by `python -c 'from jupyter_server.auth import passwd; print(passwd())'` "
            "(argon2:$argon2id$... or sha1:salt:digest), never a plain password"
        )
    return value

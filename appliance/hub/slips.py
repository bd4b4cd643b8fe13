"""The sheet of password slips: one box per participant (workshop, address, user, password) to
print and cut. It holds plain passwords, so it is written 0600 and the command says to delete it."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path

_STYLE = """
body { font-family: sans-serif; margin: 1cm; }
.slips { display: grid; grid-template-columns: 1fr 1fr; gap: 0; }
.slip { border: 1px dashed #888; padding: 0.5cm; break-inside: avoid; }
.slip h2 { font-size: 1em; margin: 0 0 0.3em 0; }
.slip dl { display: grid; grid-template-columns: auto 1fr; gap: 0.2em 0.6em; margin: 0; }
.slip dd { margin: 0; font-family: monospace; font-size: 1.2em; }
.note { font-size: 0.8em; color: #444; }
@media print { .note { display: none; } }
"""


def render(title: str, url: str, passwords: Mapping[str, str], emails: Mapping[str, str] | None = None) -> str:
    emails = emails or {}
    esc = html.escape
    slips = []
    for name, password in passwords.items():
        email = f"<dt>E-mail</dt><dd>{esc(emails[name])}</dd>" if emails.get(name) else ""
        slips.append(
            f'<div class="slip"><h2>{esc(title)}</h2><dl>'
            f'<dt>Open</dt><dd><a href="{esc(url, quote=True)}">{esc(url)}</a></dd>'
            f"<dt>User</dt><dd>{esc(name)}</dd><dt>Password</dt><dd>{esc(password)}</dd>{email}</dl></div>"
        )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}: hub passwords</title><style>{_STYLE}</style></head><body>"
        f'<p class="note">{len(passwords)} slip(s). Print, cut along the dashed lines, hand out, then delete this file.</p>'
        f'<div class="slips">{"".join(slips)}</div></body></html>\n'
    )


def write_sheet(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)

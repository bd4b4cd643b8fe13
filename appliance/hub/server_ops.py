"""Day-of operations on the hub server, run there as root by `appliance hub status|restart|collect`
(the jupyterhub role installs this file next to the hub's venv; standard library only).

It talks to the hub's own REST API on loopback with the `workshop-ops` service's token (made on
the server at the first deploy, root-only) and reads each participant's server's memory from
systemd (SystemdSpawner runs every server as a unit of its own)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

UNIT = "jupyter-{user}-singleuser"
# What a participant wrote, without what Jupyter or Python regenerate.
SKIPPED_PARTS = {".ipynb_checkpoints", "__pycache__", ".virtual_documents"}


class Hub:
    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str) -> object:
        request = urllib.request.Request(f"{self.api_url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (loopback, our own hub)
            body = answer.read()
        return json.loads(body) if body else None


def unit_memory(user: str) -> dict[str, int | None]:
    """systemd's accounting of the participant's server unit: bytes in use and its limit."""
    shown = subprocess.run(["systemctl", "show", UNIT.format(user=user), "-p", "MemoryCurrent", "-p", "MemoryMax",
                            "-p", "ActiveState"], capture_output=True, text=True, check=False).stdout
    values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def number(key: str) -> int | None:
        value = values.get(key, "")
        return int(value) if value.isdigit() else None

    return {"memory_bytes": number("MemoryCurrent") if values.get("ActiveState") == "active" else None,
            "memory_max_bytes": number("MemoryMax")}


def hub_memory() -> int | None:
    total = 0
    for unit in ("jupyterhub", "jupyterhub-proxy"):
        value = subprocess.run(["systemctl", "show", unit, "-p", "MemoryCurrent", "--value"],
                               capture_output=True, text=True, check=False).stdout.strip()
        if not value.isdigit():
            return None
        total += int(value)
    return total


def status(hub: Hub) -> dict[str, object]:
    users = []
    for user in sorted(hub.call("GET", "/users"), key=lambda u: u["name"]):  # type: ignore[union-attr]
        server = user.get("servers", {}).get("", {})
        users.append({"name": user["name"], "admin": user["admin"], "last_activity": user.get("last_activity"),
                      "server": "ready" if server.get("ready") else (server.get("pending") or "stopped"),
                      **unit_memory(user["name"])})
    return {"users": users, "hub_memory_bytes": hub_memory()}


def restart(hub: Hub, user: str, wait_seconds: float) -> str:
    """Stop the participant's server (their files stay) and start it again."""
    try:
        hub.call("DELETE", f"/users/{user}/server")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise SystemExit(f"no hub user {user!r}; `appliance hub status` lists them") from None
        if error.code != 400:  # 400: it was not running
            raise
    deadline = time.monotonic() + wait_seconds
    while hub.call("GET", f"/users/{user}").get("servers", {}).get(""):  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise SystemExit(f"{user}'s server did not stop within {wait_seconds:.0f} s")
        time.sleep(1)
    hub.call("POST", f"/users/{user}/server")
    while not hub.call("GET", f"/users/{user}").get("servers", {}).get("", {}).get("ready"):  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise SystemExit(f"{user}'s server did not start again within {wait_seconds:.0f} s")
        time.sleep(1)
    return f"{user}: server restarted"


def collect(users: list[str], homes: Path, folder: str, out: Path) -> str:
    """One archive: <user>/<folder>/... for every participant, written under a temporary name."""
    partial = out.with_name(out.name + ".partial")
    counted = 0

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if SKIPPED_PARTS & set(Path(info.name).parts) or not (info.isfile() or info.isdir()):
            return None  # links could point anywhere on the server
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(partial, "w:gz") as archive:
        for user in users:
            source = homes / user / folder
            if source.is_dir() and not source.is_symlink():
                archive.add(source, arcname=f"{user}/{folder}", filter=keep)
                counted += 1
    partial.chmod(0o600)
    partial.rename(out)
    return f"{counted} of {len(users)} participants' {folder}/ in {out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workshop-hub")
    parser.add_argument("--api-url", default="http://127.0.0.1:8081/hub/api")
    parser.add_argument("--token-file", type=Path, required=True)
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("status")
    again = actions.add_parser("restart")
    again.add_argument("user")
    again.add_argument("--wait", type=float, default=300)
    gather = actions.add_parser("collect")
    gather.add_argument("--homes", type=Path, default=Path("/home"))
    gather.add_argument("--folder", default="notebooks")
    gather.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    hub = Hub(args.api_url, args.token_file.read_text().strip())
    if args.action == "status":
        print(json.dumps(status(hub)))
    elif args.action == "restart":
        print(restart(hub, args.user, args.wait))
    else:
        names = [u["name"] for u in hub.call("GET", "/users")]  # type: ignore[union-attr]
        print(collect(sorted(names), args.homes, args.folder, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

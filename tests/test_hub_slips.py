"""The hub's config section, the roster and `appliance hub slips`: real openssl hashes, real
files and modes, the real CLI for bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.hub.passwords import ALPHABET, crypt_sha512, issue, load_accounts, new_password, verify
from appliance.hub.roster import parse_roster


def hub_workshop(workdir: Path, roster: str | None, hub_extra: str = "") -> Path:
    config = workdir / "w.yml"
    roster_line = f"  roster: {roster}\n" if roster else ""
    config.write_text('name: hubtest\nversion: "1"\nhub:\n  admins: [teacher]\n  url: https://hub.example.org/\n'
                      + roster_line + hub_extra)
    return config


def state_dir(workdir: Path) -> Path:
    return workdir / "cache" / "vm" / "hubtest-1"


# --- config ---------------------------------------------------------------------------------

def test_hub_defaults(workdir: Path) -> None:
    (workdir / "w.yml").write_text('name: mini\nversion: "1"\n')
    hub = load_config(workdir / "w.yml").workshop.hub
    assert (hub.port, hub.http_port, hub.bind_address) == (443, 80, "0.0.0.0")
    assert hub.memory_mb == 2048 and hub.cpus == 1.0 and hub.idle_minutes == 60
    assert hub.roster is None and hub.admins == [] and hub.tls_cert is None


def test_repository_workshop_has_a_valid_hub_section(repo_root: Path) -> None:
    hub = load_config(repo_root / "workshop.yml").workshop.hub
    assert hub.memory_mb >= 256


# --- roster ---------------------------------------------------------------------------------

def test_roster_reads_names_emails_header_comments() -> None:
    people = parse_roster("user,email\n# the morning group\nalice,alice@example.org\n\n bob \ncarol_2,\n", "r.csv")
    assert [(p.name, p.email) for p in people] == [("alice", "alice@example.org"), ("bob", ""), ("carol_2", "")]


ROSTER_BAD = [
    pytest.param("alice\nBob\n", r"r\.csv:2: 'Bob' is not a safe user name", id="upper-case"),
    pytest.param("alice\n1up\n", r"r\.csv:2: '1up' is not a safe user name", id="leading-digit"),
    pytest.param("alice\nbob;rm -rf\n", r"r\.csv:2: .* is not a safe user name", id="shell"),
    pytest.param("alice\n" + "a" * 33 + "\n", r"r\.csv:2: .* is not a safe user name", id="too-long"),
    pytest.param("alice\nroot\n", r"r\.csv:2: 'root' is a system account name", id="root"),
    pytest.param("workshop\n", r"r\.csv:1: 'workshop' is a system account name", id="workshop-user"),
    pytest.param("alice\nbob,not-an-address\n", r"r\.csv:2: 'not-an-address' is not an e-mail address", id="email"),
    pytest.param("alice,a@x.org,extra\n", r"r\.csv:1: has 3 columns", id="columns"),
    pytest.param("alice\nbob\nalice\n", r"r\.csv:3: 'alice' is already on line 1", id="duplicate"),
    pytest.param('alice\n"bob\n', r"r\.csv:\d+: ", id="open-quote"),
]


@pytest.mark.parametrize(("text", "expected"), ROSTER_BAD)
def test_bad_roster_row_names_its_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_roster(text, "r.csv")
    message = str(caught.value)
    assert "\n" not in message and re.search(expected, message), message


# --- passwords ------------------------------------------------------------------------------

def test_password_shape_and_randomness() -> None:
    passwords = {new_password() for _ in range(200)}
    assert len(passwords) == 200
    for password in passwords:
        assert re.fullmatch(rf"[{ALPHABET}]{{4}}(-[{ALPHABET}]{{4}}){{3}}", password)


def test_hash_is_sha512_crypt_and_verifies() -> None:
    hashed = crypt_sha512("s3cret-pass")
    assert re.fullmatch(r"\$6\$[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}", hashed), hashed
    assert verify("s3cret-pass", hashed)
    assert not verify("s3cret-pasS", hashed)
    # a known vector (glibc's test suite, "rounds" default): the hash is the standard one
    assert crypt_sha512("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJu"
        "esI68u4OTLiBFdcbYEdFCoEOfaS35inz1")


def test_issue_keeps_existing_and_reset(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hub-accounts.json"
    first = issue(path, ["alice", "bob"])
    assert set(first.new) == {"alice", "bob"} and first.kept == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_text()
    assert first.new["alice"] not in stored and first.new["bob"] not in stored  # hashes only
    hashes = load_accounts(path)
    assert verify(first.new["alice"], hashes["alice"])

    second = issue(path, ["alice", "bob", "carol"])
    assert list(second.new) == ["carol"] and second.kept == ["alice", "bob"]
    after = load_accounts(path)
    assert after["alice"] == hashes["alice"] and after["bob"] == hashes["bob"]

    third = issue(path, ["alice", "carol"], reset=["alice"])
    assert list(third.new) == ["alice"] and third.dropped == ["bob"]
    assert load_accounts(path)["alice"] != hashes["alice"]
    assert verify(third.new["alice"], load_accounts(path)["alice"])
    with pytest.raises(ConfigError, match="--reset zed: not on the roster"):
        issue(path, ["alice"], reset=["zed"])


# --- the command ----------------------------------------------------------------------------

def test_slips_command_end_to_end(appliance_cli, workdir: Path) -> None:
    (workdir / "people.csv").write_text("user,email\nalice,alice@example.org\nbob\n")
    hub_workshop(workdir, "people.csv")
    result = appliance_cli("hub", "slips", "--config", "w.yml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    state = state_dir(workdir)
    accounts = json.loads((state / "hub-accounts.json").read_text())["hub_accounts"]
    assert [a["name"] for a in accounts] == ["alice", "bob", "teacher"]
    assert stat.S_IMODE((state / "hub-accounts.json").stat().st_mode) == 0o600
    sheets = sorted(state.glob("hub-slips-*.html"))
    assert len(sheets) == 1 and stat.S_IMODE(sheets[0].stat().st_mode) == 0o600
    sheet = sheets[0].read_text()
    found = dict(re.findall(r"<dt>User</dt><dd>([^<]+)</dd><dt>Password</dt><dd>([^<]+)</dd>", sheet))
    assert set(found) == {"alice", "bob", "teacher"}
    assert "https://hub.example.org/" in sheet and "alice@example.org" in sheet
    for account in accounts:
        assert verify(found[account["name"]], account["password_hash"])

    # a second run with one more participant: only the new one gets a slip, nobody else changes
    (workdir / "people.csv").write_text("user,email\nalice,alice@example.org\nbob\ndave\n")
    again = appliance_cli("hub", "slips", "--config", "w.yml", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert "1 new password" in again.stdout and "3 user(s) keep" in again.stdout
    sheets_after = sorted(state.glob("hub-slips-*.html"))
    assert len(sheets_after) == 2 and sheets[0].read_text() == sheet  # the first sheet is untouched
    newest = next(s for s in sheets_after if s != sheets[0]).read_text()
    assert re.findall(r"<dt>User</dt><dd>([^<]+)</dd>", newest) == ["dave"]
    kept = {a["name"]: a["password_hash"] for a in json.loads((state / "hub-accounts.json").read_text())["hub_accounts"]}
    assert all(kept[a["name"]] == a["password_hash"] for a in accounts)


@pytest.mark.parametrize(("roster", "args", "expected"), [
    pytest.param("alice\nAlice Smith\n", [], r"people\.csv:2: 'Alice Smith' is not a safe user name", id="bad-row"),
    pytest.param(None, ["--url", "http://x"], r"--url 'http://x': give the hub's https:// address", id="http-url"),
    pytest.param("alice\n", ["--reset", "zed"], r"--reset zed: not on the roster", id="reset-unknown"),
])
def test_slips_bad_input_writes_nothing(appliance_cli, workdir: Path, roster: str | None, args: list[str],
                                        expected: str) -> None:
    if roster is not None:
        (workdir / "people.csv").write_text(roster)
    hub_workshop(workdir, "people.csv" if roster is not None else None)
    result = appliance_cli("hub", "slips", "--config", "w.yml", *args, cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert not (state_dir(workdir) / "hub-accounts.json").exists()
    assert not list(state_dir(workdir).glob("hub-slips-*")) if state_dir(workdir).exists() else True


def test_slips_missing_roster_file(appliance_cli, workdir: Path) -> None:
    hub_workshop(workdir, "nobody.csv")
    result = appliance_cli("hub", "slips", "--config", "w.yml", cwd=workdir)
    assert result.returncode == 2 and "nobody.csv does not exist" in result.stderr, result.stderr


def test_slips_escape_html() -> None:
    from appliance.hub.slips import render

    text = render("<b>Class</b>", "https://h/?a=1&b=\"2\"", {"alice": "abcd-efgh"})
    assert "<b>Class</b>" not in text and "&lt;b&gt;Class&lt;/b&gt;" in text
    assert 'href="https://h/?a=1&amp;b=&quot;2&quot;"' in text

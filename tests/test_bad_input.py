"""Bad workshop.yml / assets.yml through the real CLI: one line naming the place and what to
change, exit status 2, no traceback, and nothing in the workshop folder changed."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_config

GOOD_HEAD = 'name: x\nversion: "1"\n'
# The classic "billion laughs": 9 levels of 9 aliases, about 600 bytes, 9**9 leaves.
ALIAS_BOMB = '\n'.join(
    [f'l0: &l0 [{", ".join(["lol"] * 9)}]']
    + [f'l{n}: &l{n} [{", ".join([f"*l{n - 1}"] * 9)}]' for n in range(1, 9)]
) + "\n"


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below folder with its content hash (or link target): what 'unchanged' means."""
    state: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            state[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[rel] = "dir"
    return state


def check_fails(appliance_cli, workdir: Path, expected: str, config: str = "w.yml") -> str:
    before = snapshot(workdir)
    result = appliance_cli("config", "check", config, cwd=workdir, timeout=20)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("appliance: error: ")
    assert re.search(expected, lines[0]), lines[0]
    assert snapshot(workdir) == before
    return lines[0]


# --- one bad value, one line ------------------------------------------------------------------
# Each case writes these files into the workshop folder and `config check` must refuse them
# in one line matching the pattern.

REAL_ARGON2 = "argon2:$argon2id$v=19$m=10240,t=10,p=8$JdAN3fe9J45NvK/EPuGCvA$O/tbxglbwRpOFuBNTYrymAEH6370Q2z+eS1eF4GM6Do"
REAL_SHA1 = "sha1:74ba40f8a388:c913541b7ee99d15d5ed31d4226bf7838f83a50e"


def workshop_yml(text: str) -> dict[str, str]:
    return {"w.yml": GOOD_HEAD + text}


def asset_named(name: str) -> dict[str, str]:
    """A good w.yml with a manifest whose one asset has this (YAML) name."""
    return {"w.yml": GOOD_HEAD, "assets.yml": (
        "assets:\n"
        f"  - name: {name}\n    kind: dataset\n    urls: [https://example.org/a.bin]\n    hash: null\n"
        "    place: keras/datasets/a.bin\n")}


ONE_LINE_REFUSALS = [
    # the YAML itself
    pytest.param(workshop_yml("name: y\n"), r"w\.yml:3: duplicate key 'name' \(first on line 1\)", id="yaml-top-level"),
    pytest.param(workshop_yml("vm:\n  cpus: 2\n  memory_mb: 4096\n  cpus: 4\n"), r"w\.yml:6: duplicate key 'cpus' \(first on line 4\)", id="yaml-nested"),
    pytest.param(workshop_yml("<<: {title: t}\n"), r"w\.yml:3: merge keys", id="yaml-merge-key"),
    pytest.param(workshop_yml("? [a, b]\n: 1\n"), r"w\.yml:3: a key must be a plain word", id="yaml-list-as-key"),
    pytest.param(workshop_yml("---\nname: y\n"), r"w\.yml:3: YAML syntax error: expected a single document", id="yaml-two-documents"),
    # paths stay inside the repository
    pytest.param(workshop_yml("jupyter:\n  root: /etc\n"), r"w\.yml:4: jupyter\.root: '/etc' is an absolute path", id="path-root-absolute"),
    pytest.param(workshop_yml("jupyter:\n  root: ../elsewhere\n"), r"w\.yml:4: jupyter\.root: '\.\./elsewhere' goes up with '\.\.'", id="path-root-dotdot"),
    pytest.param(workshop_yml("notebooks: [../../etc/passwd]\n"), r"w\.yml:3: notebooks\[0\]: .* goes up with '\.\.'", id="path-notebook-dotdot"),
    pytest.param(workshop_yml("notebooks: [one.ipynb, /etc/hostname]\n"), r"w\.yml:3: notebooks\[1\]: '/etc/hostname' is an absolute path", id="path-notebook-absolute"),
    pytest.param(workshop_yml("assets:\n  manifest: ../assets.yml\n"), r"w\.yml:4: assets\.manifest: .* goes up", id="path-manifest-dotdot"),
    pytest.param(workshop_yml("assets:\n  manifest: 'C:\\\\assets.yml'\n"), r"w\.yml:4: assets\.manifest: .*not a relative path with '/'", id="path-manifest-windows"),
    pytest.param(workshop_yml("license_file: /etc/os-release\n"), r"w\.yml:3: license_file: '/etc/os-release' is an absolute path", id="path-licence-absolute"),
    pytest.param(workshop_yml("license_file: LICENSE.txt\n"), r"w\.yml:3: license_file: .*LICENSE\.txt does not exist", id="path-licence-missing"),
    # values
    pytest.param(workshop_yml('title: "Workshop\\nExecStart=/bin/sh"\n'), r"w\.yml:3: title: contains a line break or control character \(U\+000A\)", id="value-title-newline"),
    pytest.param(workshop_yml('description: "fine\\x1b[31m red"\n'), r"w\.yml:3: description: .*\(U\+001B\)", id="value-description-escape"),
    pytest.param(workshop_yml('vendor: "a\\x0cb"\n'), r"w\.yml:3: vendor: .*\(U\+000C\)", id="value-vendor-formfeed"),
    pytest.param(workshop_yml('url: "https://example.org/\\u2028"\n'), r"w\.yml:3: url: .*\(U\+2028\)", id="value-url-line-separator"),
    pytest.param(workshop_yml("url: javascript:alert(1)\n"), r"w\.yml:3: url: 'javascript:alert\(1\)' is not a web address", id="value-url-scheme"),
    pytest.param(workshop_yml("vm:\n  memory_mb: 4096000\n"), r"w\.yml:4: vm\.memory_mb: 4096000 is above the maximum 262144", id="value-memory-maximum"),
    pytest.param(workshop_yml("jupyter:\n  password_hash: 'argon2:hunter2'\n"), r"w\.yml:4: jupyter\.password_hash: must be a hash", id="value-hash-argon2-prefix-only"),
    pytest.param(workshop_yml("jupyter:\n  password_hash: 'sha1:salt:notahexdigest'\n"), r"jupyter\.password_hash: must be a hash", id="value-hash-sha1-bad"),
    pytest.param(workshop_yml("jupyter:\n  password_hash: '" + REAL_SHA1 + "\\n'\n"), r"jupyter\.password_hash: must be a hash", id="value-hash-trailing-newline"),
    # the asset manifest
    pytest.param(asset_named("'.'"), r"assets\.yml:2: assets\[0\]\.name: '\.' is not a plain file name", id="asset-name-dot"),
    pytest.param(asset_named("'..'"), r"assets\.yml:2: assets\[0\]\.name: '\.\.' is not a plain file name", id="asset-name-dotdot"),
    pytest.param(asset_named(".verified"), r"assets\.yml:2: assets\[0\]\.name: '\.verified' is not a plain file name", id="asset-name-hidden"),
    pytest.param(asset_named("a/b.bin"), r"assets\.yml:2: assets\[0\]\.name: 'a/b\.bin' is not a plain file name", id="asset-name-slash"),
    pytest.param(asset_named("vm"), r"assets\.yml:2: assets\[0\]\.name: 'vm' is a name cache/ or Windows keeps for itself", id="asset-name-vm"),
    pytest.param(asset_named("Wheels"), r"assets\.yml:2: assets\[0\]\.name: 'Wheels' is a name cache/", id="asset-name-wheels-any-case"),
    pytest.param(asset_named("con.txt"), r"assets\.yml:2: assets\[0\]\.name: 'con\.txt' is a name cache/ or Windows keeps", id="asset-name-windows-reserved"),
    pytest.param(asset_named('"a.bin\\n"'), r"assets\.yml:2: assets\[0\]\.name: 'a\.bin\\n' is not a plain file name", id="asset-name-newline"),
]


@pytest.mark.parametrize(("files", "expected"), ONE_LINE_REFUSALS)
def test_one_bad_value_is_refused_in_one_line(appliance_cli, workdir: Path, files: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        (workdir / name).write_text(text)
    check_fails(appliance_cli, workdir, expected)


# --- the YAML itself ---------------------------------------------------------------------------


def test_alias_bomb_is_refused_at_once(appliance_cli, workdir: Path) -> None:
    assert len(ALIAS_BOMB) < 700
    (workdir / "w.yml").write_text(GOOD_HEAD + ALIAS_BOMB)
    # The 20 s subprocess timeout is only a guard: expanding the aliases took 44 s and 3 GB.
    check_fails(appliance_cli, workdir, r"w\.yml:3: YAML anchor &l0: anchors and aliases are not supported")


def test_alias_bomb_in_the_manifest_is_refused(appliance_cli, workdir: Path) -> None:
    (workdir / "assets.yml").write_text("assets: []\n" + ALIAS_BOMB)
    (workdir / "w.yml").write_text(GOOD_HEAD)
    check_fails(appliance_cli, workdir, r"assets\.yml:2: YAML anchor &l0")


def test_an_alias_alone_names_its_line(appliance_cli, workdir: Path) -> None:
    (workdir / "w.yml").write_text(GOOD_HEAD + "title: *somewhere\n")
    check_fails(appliance_cli, workdir, r"w\.yml:3: YAML alias \*somewhere")


def test_file_over_one_mib_is_refused(appliance_cli, workdir: Path) -> None:
    # 50 MB of list items took 153 s and 4 GB; the size is refused before any parsing.
    (workdir / "w.yml").write_text(GOOD_HEAD + "notebooks:\n" + "  - a.ipynb\n" * 120_000)
    check_fails(appliance_cli, workdir, r"w\.yml: larger than the 1 MiB a workshop file may have")


def test_binary_file(appliance_cli, workdir: Path) -> None:
    (workdir / "w.yml").write_bytes(GOOD_HEAD.encode() + b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    check_fails(appliance_cli, workdir, r"w\.yml:5: binary data \(a NUL byte\), not YAML text")


def test_not_utf8(appliance_cli, workdir: Path) -> None:
    (workdir / "w.yml").write_bytes((GOOD_HEAD + "title: Atelier café\n").encode("latin-1"))
    check_fails(appliance_cli, workdir, r"w\.yml:3: not UTF-8 text; save the file as UTF-8")


def test_control_character_in_the_yaml(appliance_cli, workdir: Path) -> None:
    (workdir / "w.yml").write_text(GOOD_HEAD + "title: bell\x07\n")
    check_fails(appliance_cli, workdir, r"w\.yml:3: a character YAML does not allow")


def test_a_folder_a_path_through_a_file_and_a_pipe(appliance_cli, workdir: Path) -> None:
    (workdir / "folder.yml").mkdir()
    check_fails(appliance_cli, workdir, r"folder\.yml: is a folder, not a YAML file", config="folder.yml")
    check_fails(appliance_cli, workdir, r"one\.ipynb/w\.yml: cannot read it: Not a directory", config="notebooks/one.ipynb/w.yml")
    os.mkfifo(workdir / "pipe.yml")
    check_fails(appliance_cli, workdir, r"pipe\.yml: is not a regular file", config="pipe.yml")


def test_unreadable_file(workdir: Path, repo_root: Path) -> None:
    (workdir / "w.yml").write_text(GOOD_HEAD)
    (workdir / "w.yml").chmod(0)
    command = [sys.executable, "-m", "appliance", "config", "check", "w.yml"]
    if os.geteuid() == 0:  # root reads any file unless it gives up the capabilities that allow it
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv (util-linux) reads any file")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, cwd=workdir, env={**os.environ, "PYTHONPATH": str(repo_root)},
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "appliance: error: w.yml: cannot read it: Permission denied; check the path and its permissions"
    ]


# --- paths stay inside the repository ------------------------------------------------------------


def test_symlinks_out_of_the_repository_are_refused(appliance_cli, workdir: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(workdir / "assets.yml", outside / "assets.yml")
    (outside / "secret.ipynb").write_text("{}")
    (workdir / "linked.yml").symlink_to(outside / "assets.yml")
    (workdir / "notebooks" / "leak.ipynb").symlink_to(outside / "secret.ipynb")
    (workdir / "nbs").symlink_to(outside)
    (workdir / "w.yml").write_text(GOOD_HEAD + "assets:\n  manifest: linked.yml\n")
    check_fails(appliance_cli, workdir, r"w\.yml:4: assets\.manifest: 'linked\.yml' leads to .* outside the repository")
    (workdir / "w.yml").write_text(GOOD_HEAD + "notebooks: [leak.ipynb]\n")
    check_fails(appliance_cli, workdir, r"w\.yml:3: notebooks\[0\]: 'leak\.ipynb' leads to .* outside jupyter\.root")
    (workdir / "w.yml").write_text(GOOD_HEAD + "jupyter:\n  root: nbs\n")
    check_fails(appliance_cli, workdir, r"w\.yml:4: jupyter\.root: 'nbs' leads to")


def test_licence_file_checks(appliance_cli, workdir: Path) -> None:
    (workdir / "w.yml").write_text(GOOD_HEAD + "license_file: LICENSE.txt\n")
    (workdir / "LICENSE.txt").write_bytes(b"x" * (64 * 1024 + 1))
    check_fails(appliance_cli, workdir, r"w\.yml:3: license_file: .*LICENSE\.txt has 65537 bytes, more than 64 KiB")
    (workdir / "LICENSE.txt").write_bytes("Lizenz für alle".encode("latin-1"))
    check_fails(appliance_cli, workdir, r"license_file: .*LICENSE\.txt is not UTF-8 text")
    (workdir / "LICENSE.txt").write_bytes(b"\x7fELF\x02\x01\x01\0\0\0")
    check_fails(appliance_cli, workdir, r"license_file: .*LICENSE\.txt holds binary or control characters")
    (workdir / "LICENSE.txt").write_text("Use it freely.\n\nNo warranty.\n")
    result = appliance_cli("config", "check", "w.yml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    loaded = load_config(workdir / "w.yml")
    assert loaded.workshop.license_file == "LICENSE.txt"
    assert loaded.license_path == workdir.resolve() / "LICENSE.txt"


# --- values ------------------------------------------------------------------------------------


def test_name_with_a_trailing_newline(appliance_cli, workdir: Path) -> None:
    # `$` in a regular expression also matches before a final newline: the name check uses fullmatch.
    (workdir / "w.yml").write_text('name: "x\\n"\nversion: "1"\n')
    check_fails(appliance_cli, workdir, r"w\.yml:1: name: 'x\\n' must be lower-case")


@pytest.mark.parametrize("password_hash", [REAL_ARGON2, REAL_SHA1])
def test_real_password_hashes_pass(appliance_cli, workdir: Path, password_hash: str) -> None:
    (workdir / "w.yml").write_text(GOOD_HEAD + f"jupyter:\n  password_hash: '{password_hash}'\n")
    result = appliance_cli("config", "check", "w.yml", cwd=workdir)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory) -> dict[str, str]:
    """Real keys from ssh-keygen: {type: public line}, plus the ed25519 private key."""
    if not shutil.which("ssh-keygen"):
        pytest.skip("needs ssh-keygen (openssh-client)")
    folder = tmp_path_factory.mktemp("keys")
    keys: dict[str, str] = {}
    for kind, extra in (("ed25519", []), ("ecdsa", ["-b", "384"]), ("rsa", ["-b", "2048"])):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", f"organizer {kind}", "-f", str(folder / kind)],
                       check=True, timeout=60)
        keys[kind] = (folder / f"{kind}.pub").read_text().strip()
    keys["private"] = (folder / "ed25519").read_text()
    return keys


def test_real_public_keys_pass(appliance_cli, workdir: Path, ssh_keys: dict[str, str]) -> None:
    for kind in ("ed25519", "ecdsa", "rsa"):
        (workdir / "w.yml").write_text(GOOD_HEAD + f"vm:\n  instructor_ssh_key: '{ssh_keys[kind]}'\n")
        result = appliance_cli("config", "check", "w.yml", cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert load_config(workdir / "w.yml").workshop.vm.instructor_ssh_key == ssh_keys[kind]


def test_bad_ssh_keys(appliance_cli, workdir: Path, ssh_keys: dict[str, str]) -> None:
    ed25519 = ssh_keys["ed25519"]
    kind, blob, _comment = ed25519.split(" ", 2)
    private = ssh_keys["private"].replace("\n", "\\n")
    cases = [
        (f'"{private}"', r"vm\.instructor_ssh_key: this is a private key"),
        (f'"{ed25519}\\n{ssh_keys["rsa"]}"', r"vm\.instructor_ssh_key: must be one line"),
        (f"'ssh-dss {blob}'", r"vm\.instructor_ssh_key: must start with a key type"),
        (f"'ssh-rsa {blob}'", r"vm\.instructor_ssh_key: the key data is not an ssh-rsa key"),
        (f"'{kind} {blob[:-3]}!!!'", r"vm\.instructor_ssh_key: the key after 'ssh-ed25519' is not valid base64"),
        (f"'{kind}'", r"vm\.instructor_ssh_key: must start with a key type"),
    ]
    for value, expected in cases:
        (workdir / "w.yml").write_text(GOOD_HEAD + f"vm:\n  instructor_ssh_key: {value}\n")
        check_fails(appliance_cli, workdir, r"w\.yml:4: " + expected)


def test_host_address_open_to_the_network_is_a_warning(appliance_cli, workdir: Path) -> None:
    (workdir / "w.yml").write_text(GOOD_HEAD + "ports:\n  host_address: 0.0.0.0\n")
    result = appliance_cli("config", "check", "w.yml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("appliance: warning: ports.host_address is 0.0.0.0: ")
    assert "open to other machines on the network" in lines[0] and "set it to 127.0.0.1" in lines[0]
    for local in ("127.0.0.1", "127.0.0.2", "::1"):
        (workdir / "w.yml").write_text(GOOD_HEAD + f"ports:\n  host_address: '{local}'\n")
        quiet = appliance_cli("config", "check", "w.yml", cwd=workdir)
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


# --- the asset manifest ------------------------------------------------------------------------


def test_asset_names_differing_only_in_case(appliance_cli, workdir: Path) -> None:
    entry = "  - name: {}\n    kind: dataset\n    urls: [https://example.org/a.bin]\n    hash: null\n    place: keras/datasets/{}\n"
    (workdir / "assets.yml").write_text("assets:\n" + entry.format("A.bin", "A.bin") + entry.format("a.bin", "a.bin"))
    (workdir / "w.yml").write_text(GOOD_HEAD)
    check_fails(appliance_cli, workdir, r"assets\.yml:\d+: .*'a\.bin' differs from 'A\.bin' only in case")

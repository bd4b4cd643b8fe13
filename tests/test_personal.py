"""`appliance deploy --mode personal` before it touches a host: the personal: settings, the password
command (only an argon2 hash in jupyter_server's format, 0600, outside the repository), the play
parses, and what is missing on the controller is one line, exit 2. The real deploy over ssh is the
VM tier's tests/vm/test_personal.py."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import argon2
import pytest

from appliance.config import load_config
from appliance.values import check_password_hash

P = 'name: pers\nversion: "1"\npersonal:\n'

BAD_PERSONAL = [
    pytest.param(P + "  bind_address: everywhere\n", r"w\.yml:4: personal\.bind_address: 'everywhere' is not an IP address", id="bind"),
    pytest.param(P + "  port: 0\n", r"w\.yml:4: personal\.port: 0 is below the minimum 1", id="port"),
    pytest.param(P + "  tls_cert: c.pem\n", r"w\.yml:3: personal: give both personal\.tls_cert and personal\.tls_key", id="cert-without-key"),
    pytest.param(P + "  tls_cert: c.pem\n  tls_key: k.pem\n", r"w\.yml:4: personal\.tls_cert: .*c\.pem does not exist", id="cert-missing"),
    pytest.param(P + "  acme: {domain: https://gpu.example.org/, email: a@example.org}\n",
                 r"w\.yml:4: personal\.acme\.domain: .* is not a DNS name", id="acme-url"),
    pytest.param(P + "  acme: {domain: gpu.example.org, email: nobody}\n", r"personal\.acme\.email: 'nobody' is not an e-mail", id="acme-email"),
    pytest.param(P + "  acme: {domain: gpu.example.org}\n", r"personal\.acme\.email: required key is missing", id="acme-no-email"),
    pytest.param(P + "  acme: {domain: gpu.example.org, email: a@example.org}\n  tls_cert: c.pem\n  tls_key: k.pem\n",
                 r"personal\.acme and personal\.tls_cert both name a certificate", id="acme-and-cert"),
    pytest.param(P + "  password: hunter2hunter2\n", r"w\.yml:4: personal\.password: unknown key", id="no-password-here"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_PERSONAL)
def test_bad_personal_settings_fail_with_one_line(appliance_cli, workdir: Path, text: str, expected: str) -> None:
    (workdir / "w.yml").write_text(text)
    result = appliance_cli("config", "check", "w.yml", cwd=workdir)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(expected, lines[0]), lines[0]


def test_personal_defaults_and_acme(workdir: Path) -> None:
    (workdir / "w.yml").write_text('name: pers\nversion: "1"\n')
    personal = load_config(workdir / "w.yml").workshop.personal
    assert (personal.bind_address, personal.port, personal.tls_cert, personal.acme) == ("0.0.0.0", 8888, None, None)
    (workdir / "w.yml").write_text(P + "  port: 443\n  acme: {domain: gpu1.example.org, email: a@example.org}\n")
    personal = load_config(workdir / "w.yml").workshop.personal
    assert personal.port == 443 and personal.acme.domain == "gpu1.example.org" and personal.acme.staging is False


def _password_file(workdir: Path) -> Path:
    return workdir / "cache" / "vm" / "pers-1" / "personal-password.json"


def _stored_hash(workdir: Path) -> str:
    return json.loads(_password_file(workdir).read_text())["personal_password_hash"]


def test_generate_prints_the_password_once_and_keeps_only_its_hash(appliance_cli, workdir: Path) -> None:
    (workdir / "w.yml").write_text('name: pers\nversion: "1"\n')
    result = appliance_cli("personal", "password", "--generate", "--config", "w.yml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    password = re.search(r"shown only now; give it to the user\): (\S+)", result.stdout).group(1)
    assert re.fullmatch(r"([0-9a-hjkmnp-tv-z]{4}-){3}[0-9a-hjkmnp-tv-z]{4}", password), password
    path = _password_file(workdir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert password not in path.read_text()
    hashed = _stored_hash(workdir)
    # jupyter_server's passwd() format and parameters: what its PasswordIdentityProvider checks at login
    assert check_password_hash(hashed) == hashed
    assert hashed.startswith("argon2:$argon2id$v=19$m=10240,t=10,p=8$"), hashed
    assert argon2.PasswordHasher().verify(hashed.removeprefix("argon2:"), password)
    with pytest.raises(argon2.exceptions.VerifyMismatchError):
        argon2.PasswordHasher().verify(hashed.removeprefix("argon2:"), password + "x")


def test_a_typed_password_replaces_the_last_one(appliance_cli, workdir: Path) -> None:
    (workdir / "w.yml").write_text('name: pers\nversion: "1"\n')
    first = appliance_cli("personal", "password", "--generate", "--config", "w.yml", cwd=workdir)
    assert first.returncode == 0, first.stderr
    old = _stored_hash(workdir)
    typed = subprocess.run([sys.executable, "-m", "appliance", "personal", "password", "--password-stdin", "--config", "w.yml"],
                           cwd=workdir, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                           input="correct horse battery\n", capture_output=True, text=True, timeout=120)
    assert typed.returncode == 0, typed.stderr
    assert "replaced the earlier password" in typed.stdout and "correct horse" not in typed.stdout
    new = _stored_hash(workdir)
    assert new != old and argon2.PasswordHasher().verify(new.removeprefix("argon2:"), "correct horse battery")


def _run_password(workdir: Path, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    # A new session has no controlling terminal: getpass then reads the two answers from stdin,
    # as it does when the organizer pipes them.
    return subprocess.run([sys.executable, "-m", "appliance", "personal", "password", "--config", "w.yml", *args],
                          cwd=workdir, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                          input=stdin, capture_output=True, text=True, timeout=120, start_new_session=True)


@pytest.mark.parametrize(("stdin", "args", "expected"), [
    pytest.param("a-long-password-1\na-long-password-2\n", [], "the two passwords differ; nothing was changed", id="mismatch"),
    pytest.param("short\nshort\n", [], "the password has 5 characters; use at least 12", id="short-typed"),
    pytest.param("\n", ["--password-stdin"], "the password has 0 characters", id="empty-stdin"),
    pytest.param(" padded-password \n", ["--password-stdin"], "starts or ends with a space", id="spaces"),
])
def test_password_refusals_change_nothing(workdir: Path, stdin: str, args: list[str], expected: str) -> None:
    (workdir / "w.yml").write_text('name: pers\nversion: "1"\n')
    result = _run_password(workdir, stdin, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]  # getpass may warn first that it cannot hide the input
    assert last.startswith("appliance: error: ") and expected in last, result.stderr
    assert "Traceback" not in result.stderr
    assert not _password_file(workdir).exists()


def test_a_matching_typed_password_is_kept(workdir: Path) -> None:
    (workdir / "w.yml").write_text('name: pers\nversion: "1"\n')
    result = _run_password(workdir, "a-long-password-1\na-long-password-1\n")
    assert result.returncode == 0, result.stderr
    assert argon2.PasswordHasher().verify(_stored_hash(workdir).removeprefix("argon2:"), "a-long-password-1")


def test_personal_play_syntax(repo_root: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
         "-e", json.dumps({"workshop_config": str(repo_root / "workshop.yml")}), "personal.yml"],
        cwd=repo_root / "provision", env=dict(os.environ, ANSIBLE_CONFIG=str(repo_root / "provision" / "ansible.cfg")),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("prepare", "args", "expected"), [
    pytest.param(None, ["--inventory", "nowhere"], "--inventory nowhere: no such file", id="no-inventory"),
    pytest.param(None, ["--inventory", "inventory"], "no password for the personal Jupyter yet", id="no-password"),
    pytest.param("damaged", ["--inventory", "inventory"], "personal-password.json is damaged", id="damaged-password"),
    pytest.param("password", ["--inventory", "inventory"], "the wheelhouse", id="no-wheels"),
    pytest.param(None, ["--inventory", "inventory", "--mode", "laptop"], "invalid choice: 'laptop'", id="mode"),
])
def test_deploy_refuses_before_touching_a_host(appliance_cli, workdir: Path, prepare: str | None, args: list[str],
                                               expected: str) -> None:
    (workdir / "w.yml").write_text('name: pers\nversion: "1"\n')
    (workdir / "inventory").write_text("gpu ansible_host=192.0.2.1\n")
    if prepare == "password":
        assert appliance_cli("personal", "password", "--generate", "--config", "w.yml", cwd=workdir).returncode == 0
    elif prepare == "damaged":
        _password_file(workdir).parent.mkdir(parents=True)
        _password_file(workdir).write_text('{"personal_password_hash": "hunter2"}\n')
    mode = [] if "--mode" in args else ["--mode", "personal"]
    result = appliance_cli("deploy", *mode, "--config", "w.yml", *args, cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or "--mode" in args, result.stderr
    assert "ansible:" not in result.stdout  # no play started


def _render_jupyter_config(repo_root: Path, tmp_path: Path, overrides: dict) -> dict:
    """jupyter_server_config.json as the jupyter role writes it, rendered by Ansible itself from the
    role's defaults, the shared group vars and the play's overrides (personal.yml's, or none: the VM)."""
    from appliance.vm.provision_vars import provision_vars

    config = load_config(repo_root / "workshop.yml")
    (tmp_path / "vars.json").write_text(json.dumps(provision_vars(config)))
    out = tmp_path / "jupyter_server_config.json"
    roles = repo_root / "provision" / "roles"
    play = [{
        "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(repo_root / "provision" / "group_vars" / "all.yml"), str(roles / "jupyter" / "defaults" / "main.yml"),
                       str(tmp_path / "vars.json")],
        "tasks": [{"ansible.builtin.template": {"src": str(roles / "jupyter" / "templates" / "jupyter_server_config.json.j2"),
                                                "dest": str(out), "mode": "0600"}}],
    }]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    extra = {"workshop_config": str(repo_root / "workshop.yml"), "ansible_python_interpreter": sys.executable, **overrides}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", json.dumps(extra),
         str(tmp_path / "play.yml")],
        env=dict(os.environ, ANSIBLE_CONFIG=str(repo_root / "provision" / "ansible.cfg")),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return json.loads(out.read_text())


def test_the_vm_keeps_its_plain_loopback_forwarded_jupyter(repo_root: Path, tmp_path: Path) -> None:
    server = _render_jupyter_config(repo_root, tmp_path, {})
    assert server["ServerApp"]["ip"] == "0.0.0.0" and "certfile" not in server["ServerApp"]
    assert "ServerProxy" not in server and "PasswordIdentityProvider" not in server


def test_personal_jupyter_serves_https_with_the_password_only(repo_root: Path, tmp_path: Path) -> None:
    hashed = "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"
    server = _render_jupyter_config(repo_root, tmp_path, {
        "jupyter_port": 8443, "jupyter_bind_address": "0.0.0.0", "jupyter_password_hash": hashed,
        "jupyter_certfile": "/etc/workshop/tls/cert.pem", "jupyter_keyfile": "/etc/workshop/tls/key.pem",
        "jupyter_allow_remote_access": True, "jupyter_tensorboard_port": 6006})
    app = server["ServerApp"]
    assert (app["port"], app["certfile"], app["keyfile"]) == (8443, "/etc/workshop/tls/cert.pem", "/etc/workshop/tls/key.pem")
    assert server["IdentityProvider"] == {"token": ""}  # token login off
    assert server["PasswordIdentityProvider"] == {"hashed_password": hashed, "allow_password_change": False}
    assert server["ServerProxy"]["servers"]["tensorboard"] == {
        "port": 6006, "absolute_url": False, "launcher_entry": {"title": "TensorBoard"}}

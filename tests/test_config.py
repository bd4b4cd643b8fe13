"""workshop.yml validation: the repository's own file passes; each bad input fails with one
line that names the place and what to change, exit status 2 and no traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.config import load_config


def test_repository_config_is_valid(appliance_cli, repo_root: Path) -> None:
    result = appliance_cli("config", "check")
    assert result.returncode == 0, result.stderr
    assert "ok: dl-workshop-" in result.stdout
    loaded = load_config(repo_root / "workshop.yml")
    assert loaded.workshop.ports.host_address == "127.0.0.1"
    assert loaded.workshop.vm.memory_mb >= 2048


def test_defaults_fill_in_a_minimal_file(workdir: Path) -> None:
    (workdir / "w.yml").write_text('name: mini\nversion: "1.0"\n')
    workshop = load_config(workdir / "w.yml").workshop
    assert workshop.vm.os == "fedora"
    assert workshop.vm.memory_mb == 4096
    assert (workshop.ports.jupyter, workshop.ports.tensorboard, workshop.ports.ssh) == (8888, 6006, 2222)
    assert workshop.ports.host_address == "127.0.0.1"
    assert workshop.keras_backend == "tensorflow"
    assert workshop.artifact_name == "mini-1.0"


BAD_INPUTS = [
    pytest.param('name: x\nversion: "1"\ncolour: blue\n', r"w\.yml:3: colour: unknown key", id="unknown-key"),
    pytest.param('name: x\nversion: "1"\nvm:\n  memroy_mb: 4096\n', r"w\.yml:4: vm\.memroy_mb: unknown key", id="misspelt-nested-key"),
    pytest.param('name: x\nversion: "1"\nvm:\n  cpus: two\n', r"w\.yml:4: vm\.cpus: 'two' has the wrong type; write a whole number", id="wrong-type"),
    pytest.param('name: x\nversion: 1.5\n', r"w\.yml:2: version: 1\.5 has the wrong type; write a string \(quote it\)", id="unquoted-version"),
    pytest.param('name: x\nversion: "1"\nports:\n  jupyter: 6006\n', r"w\.yml:3: ports: ports\.tensorboard and ports\.jupyter are both 6006", id="port-clash"),
    pytest.param('name: x\nversion: "1"\nports:\n  ssh: 70000\n', r"w\.yml:4: ports\.ssh: 70000 is above the maximum 65535", id="port-range"),
    pytest.param('name: x\nversion: "1"\nports:\n  host_address: localhost\n', r"ports\.host_address: .*not an IP address", id="host-address"),
    pytest.param('name: x\nversion: "1"\nvm:\n  memory_mb: 1024\n', r"w\.yml:4: vm\.memory_mb: 1024 is below the minimum 2048", id="memory-minimum"),
    pytest.param('name: x\nversion: "1"\nkeras_backend: theano\n', r"keras_backend: 'theano' is not allowed; use one of", id="backend"),
    pytest.param('version: "1"\n', r"name: required key is missing", id="missing-name"),
    pytest.param('name: "My Workshop"\nversion: "1"\n', r"w\.yml:1: name: .*lower-case", id="unsafe-name"),
    pytest.param('name: x\nversion: "1"\nnotebooks: [missing.ipynb]\n', r"w\.yml:3: notebooks\[0\]: .*missing\.ipynb does not exist", id="missing-notebook"),
    pytest.param('name: x\nversion: "1"\nassets:\n  manifest: nowhere.yml\n', r"w\.yml:4: assets\.manifest: .*nowhere\.yml does not exist", id="missing-manifest"),
    pytest.param('name: x\nversion: "1"\nassets:\n  include: [nope.bin]\n', r"assets\.include\[0\]: 'nope\.bin' is not in assets\.yml", id="unknown-asset"),
    pytest.param('name: x\nversion: "1"\nports:\n  jupyter: [8888\n', r"w\.yml:5: YAML syntax error", id="yaml-syntax"),
    pytest.param('name: x\nversion: "1"\njupyter:\n  password_hash: hunter2\n', r"jupyter\.password_hash: must be a hash", id="plain-password"),
    pytest.param("- just\n- a list\n", r"w\.yml:1: the file must be a mapping", id="not-a-mapping"),
    pytest.param('name: x\nversion: "1"\nhub:\n  admins: [Root!]\n', r"w\.yml:4: hub\.admins: 'Root!' is not a safe user name", id="hub-admin-name"),
    pytest.param('name: x\nversion: "1"\nhub:\n  roster: ../people.csv\n', r"w\.yml:4: hub\.roster: '\.\./people\.csv' goes up", id="hub-roster-outside"),
    pytest.param('name: x\nversion: "1"\nhub:\n  memory_mb: 100\n', r"w\.yml:4: hub\.memory_mb: 100 is below the minimum 256", id="hub-memory"),
    pytest.param('name: x\nversion: "1"\nhub:\n  cpus: 0\n', r"w\.yml:4: hub\.cpus: ", id="hub-cpus"),
    pytest.param('name: x\nversion: "1"\nhub:\n  cpus: lots\n', r"w\.yml:4: hub\.cpus: ", id="hub-cpus-text"),
    pytest.param('name: x\nversion: "1"\nhub:\n  idle_minutes: 1\n', r"w\.yml:4: hub\.idle_minutes: 1 is below the minimum 5", id="hub-idle"),
    pytest.param('name: x\nversion: "1"\nhub:\n  port: 80\n', r"w\.yml:3: hub: hub\.port and hub\.http_port are both 80", id="hub-port-clash"),
    pytest.param('name: x\nversion: "1"\nhub:\n  tls_cert: cert.pem\n', r"give both hub\.tls_cert and hub\.tls_key", id="hub-cert-without-key"),
    pytest.param('name: x\nversion: "1"\nhub:\n  tls_cert: c.pem\n  tls_key: k.pem\n', r"w\.yml:4: hub\.tls_cert: .*c\.pem does not exist", id="hub-cert-missing"),
    pytest.param('name: x\nversion: "1"\nhub:\n  url: http://hub.example.org\n', r"w\.yml:4: hub\.url: .* is not an https:// address", id="hub-plain-http-url"),
    pytest.param('name: x\nversion: "1"\nhub:\n  bind_address: everywhere\n', r"w\.yml:4: hub\.bind_address: 'everywhere' is not an IP address", id="hub-bind"),
    pytest.param('name: x\nversion: "1"\nhub:\n  password: x\n', r"w\.yml:4: hub\.password: unknown key", id="hub-unknown-key"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  imgae: r.example.org/x\n', r"w\.yml:4: kubernetes\.imgae: unknown key", id="k8s-unknown-key"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  image: Registry.example.org/X:1.0\n', r"w\.yml:4: kubernetes\.image: .* is not an image name", id="k8s-image"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  storage_gb: 0\n', r"w\.yml:4: kubernetes\.storage_gb: 0 is below the minimum 1", id="k8s-storage"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  cpu_guarantee: "0.5"\n', r"w\.yml:4: kubernetes\.cpu_guarantee: '0\.5' has the wrong type; write a number", id="k8s-cpu-text"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  cpu_guarantee: 2.0\n', r"w\.yml:4: kubernetes\.cpu_guarantee: 2\.0 is above the limit hub\.cpus", id="k8s-cpu-over-limit"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  memory_guarantee_mb: 4096\n', r"w\.yml:4: kubernetes\.memory_guarantee_mb: 4096 is above the limit hub\.memory_mb", id="k8s-memory-over-limit"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  host: https://hub.example.org/\n  contact_email: a@example.org\n', r"w\.yml:4: kubernetes\.host: .* is not a DNS name", id="k8s-host-url"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  host: hub.example.org\n', r"w\.yml:3: kubernetes: kubernetes\.host needs kubernetes\.contact_email", id="k8s-host-without-email"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  auth: pam\n', r"w\.yml:4: kubernetes\.auth: 'pam' is not allowed; use one of", id="k8s-auth"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  auth: github\n  host: h.example.org\n  contact_email: a@example.org\n', r"kubernetes: auth github needs kubernetes\.oauth_client_id", id="k8s-oauth-without-client"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  auth: github\n  oauth_client_id: abc\n', r"kubernetes: auth github needs kubernetes\.host", id="k8s-oauth-without-host"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  auth: oauth\n  oauth_client_id: abc\n  host: h.example.org\n  contact_email: a@example.org\n', r"auth oauth needs kubernetes\.oauth_authorize_url", id="k8s-oauth-endpoints"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  oauth_token_url: http://id.example.org/token\n', r"w\.yml:4: kubernetes\.oauth_token_url: .* is not an https:// address", id="k8s-oauth-http"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  gpu: "yes"\n', r"w\.yml:4: kubernetes\.gpu: 'yes' has the wrong type; write true or false", id="k8s-gpu"),
    pytest.param('name: x\nversion: "1"\nkubernetes:\n  gpu_node_selector: {"gpu type": "t4"}\n', r"kubernetes\.gpu_node_selector: .* is not a Kubernetes node label", id="k8s-gpu-label"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_INPUTS)
def test_bad_input_fails_with_one_clear_line(appliance_cli, workdir: Path, text: str, expected: str) -> None:
    (workdir / "w.yml").write_text(text)
    result = appliance_cli("config", "check", "w.yml", cwd=workdir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(expected, lines[0]), lines[0]


def test_missing_config_file(appliance_cli, tmp_path: Path) -> None:
    result = appliance_cli("config", "check", str(tmp_path / "absent.yml"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("absent.yml: file not found; create it or pass the right path")


def test_bad_manifest_entry_names_the_manifest_line(appliance_cli, workdir: Path) -> None:
    (workdir / "assets.yml").write_text(
        "assets:\n  - name: a.bin\n    kind: dataset\n    urls: [https://example.org/a.bin]\n"
        "    hash: sha256:abc\n    place: keras/datasets/a.bin\n"
    )
    (workdir / "w.yml").write_text('name: x\nversion: "1"\n')
    result = appliance_cli("config", "check", "w.yml", cwd=workdir)
    assert result.returncode == 2
    assert re.search(r"assets\.yml:5: assets\[0\]\.hash: 'sha256:abc' is not", result.stderr)


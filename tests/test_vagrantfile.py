"""The Vagrantfile and the commands `appliance build` would run for VirtualBox/libvirt.

VirtualBox cannot run here, so what is checked is what can be: Vagrant parses and
validates the Vagrantfile (provider blocks ignored: their plugins check them only with
the provider installed), and the dry run names the exact commands."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed (apt-get install vagrant)")


def vagrant(repo_root: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1")
    if config is not None:
        env["WORKSHOP_CONFIG"] = str(config)
    return subprocess.run(["vagrant", *args], cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)


def test_vagrant_validates_the_vagrantfile(repo_root):
    result = vagrant(repo_root, "validate", "--ignore-provider")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_a_broken_workshop_yml_fails_validation(repo_root, tmp_path):
    broken = tmp_path / "workshop.yml"
    broken.write_text("vm: {os: debian}\n")  # no name/version: the VM name cannot be made
    result = vagrant(repo_root, "validate", "--ignore-provider", config=broken)
    assert result.returncode != 0


def test_vagrantfile_forwards_the_configured_ports_on_the_host_address(repo_root, tmp_path):
    """`vagrant ssh-config` needs a provider; the settings Vagrant computed are checked
    through Vagrant's own Ruby instead, loading the Vagrantfile with a custom workshop.yml."""
    data = yaml.safe_load((repo_root / "workshop.yml").read_text())
    data["ports"] = {"host_address": "127.0.0.1", "jupyter": 18001, "tensorboard": 18002, "ssh": 18003}
    config = tmp_path / "workshop.yml"
    config.write_text(yaml.safe_dump(data))
    script = tmp_path / "dump.rb"
    script.write_text(
        """
module Vagrant
  def self.configure(_version)
    yield Recorder.new
  end
  module Util
    module Platform
      def self.windows?; false; end
    end
  end
end
class Recorder
  def method_missing(name, *args, **kw, &block)
    if name == :network
      puts "network #{args.inspect} #{kw.sort.to_h.inspect}"
    elsif name == :customize
      puts "customize #{args.inspect}"
    elsif name == :provider
      puts "provider #{args.first}"
      block.call(Recorder.new, Recorder.new)
    elsif name == :provision
      puts "provision #{args.first} #{kw.sort.to_h.inspect}"
      block.call(Recorder.new)
    elsif name.to_s.end_with?("=")
      puts "set #{name.to_s.chomp('=')} #{args.first.inspect}"
    end
    Recorder.new
  end
  def respond_to_missing?(*) = true
end
load ARGV[0]
"""
    )
    result = subprocess.run(
        ["ruby", str(script), str(repo_root / "Vagrantfile")],
        env=dict(os.environ, WORKSHOP_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for service, port in (("jupyter", 18001), ("tensorboard", 18002)):
        assert f'network ["forwarded_port"] {{auto_correct: false, guest: {port}, host: {port}, host_ip: "127.0.0.1", id: "{service}"}}' in out.replace(
            ":auto_correct=>", "auto_correct: "
        ).replace(":guest=>", "guest: ").replace(":host=>", "host: ").replace(":host_ip=>", "host_ip: ").replace(":id=>", "id: "), out
    assert "host: 18003" in out.replace(":host=>", "host: ") and '"ssh"' in out
    assert 'set name "dl-workshop-2026.11"' in out
    assert "set memory 4096" in out and "set cpus 2" in out
    assert 'customize [["modifyvm", :id, "--audio-enabled", "off"]]' in out
    # the guest never reaches the host's 127.0.0.1
    assert 'customize [["modifyvm", :id, "--nat-localhostreachable1", "off"]]' in out
    assert '"--nat-localhostreachable1", "on"' not in out
    assert 'customize [["modifyvm", :id, "--vram", "16"]]' in out
    assert "provider virtualbox" in out and "provider libvirt" in out
    provisions = {line.split()[1]: line for line in out.splitlines() if line.startswith("provision ")}
    assert set(provisions) == {"workshop", "finalize"}, out
    assert '"ansible"' in provisions["workshop"] and '"once"' in provisions["workshop"]
    # sealing only when asked (`appliance export`), never on a re-provisioning
    assert '"ansible"' in provisions["finalize"] and '"never"' in provisions["finalize"]
    assert "ansible_local" not in out
    assert 'set playbook "provision/site.yml"' in out and 'set playbook "provision/finalize.yml"' in out
    normalized = out.replace('" => "', '"=>"')
    assert f'"workshop_config"=>"{config}"' in normalized
    vars_file = tmp_path / "cache" / "vm" / "dl-workshop-2026.11" / "workshop-vars.json"
    assert f'"workshop_vars"=>"{vars_file}"' in normalized


def test_vagrant_up_without_rendered_settings_says_what_to_run(repo_root, tmp_path):
    config = tmp_path / "workshop.yml"
    config.write_text((repo_root / "workshop.yml").read_text())
    result = vagrant(repo_root, "up", "--provider=virtualbox", config=config)
    assert result.returncode != 0
    assert "workshop-vars.json is missing: run `bin/appliance build`" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_dry_run_prints_the_vagrant_commands(appliance_cli, repo_root):
    result = appliance_cli("build", "--provider", "virtualbox", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "VBoxManage --version"
    assert lines[1].endswith("vagrant up --provider=virtualbox --provision")
    assert f"cd {repo_root}" in lines[1] and f"WORKSHOP_CONFIG={repo_root / 'workshop.yml'}" in lines[1]
    assert lines[2].endswith("vagrant halt")
    assert lines[3] == "VBoxManage showvminfo dl-workshop-2026.11 --machinereadable"


def test_dry_run_libvirt_and_provision_only(appliance_cli):
    result = appliance_cli("build", "--provider", "libvirt", "--provision-only", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "virsh --connect qemu:///system version"
    assert lines[1].endswith("vagrant up --no-provision") and lines[2].endswith("vagrant provision")
    assert lines[3].endswith("vagrant halt")


def test_dry_run_qemu_shows_forwards_on_the_host_address(appliance_cli, repo_root, debian_workshop):
    result = appliance_cli("build", "--provider", "qemu", "--dry-run", "--config", str(debian_workshop))
    assert result.returncode == 0, result.stderr
    qemu_line = next(line for line in result.stdout.splitlines() if line.startswith("qemu-system-x86_64"))
    for guest, host in ((22, 2222), (8888, 8888), (6006, 6006)):
        assert f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" in qemu_line
    assert "-accel tcg,thread=multi -cpu max" in qemu_line and "-m 4096" in qemu_line
    assert any("ansible-playbook" in line and str(repo_root / "provision" / "site.yml") in line for line in result.stdout.splitlines())


def test_build_without_virtualbox_says_so_in_one_line(appliance_cli):
    if shutil.which("VBoxManage"):
        pytest.skip("VirtualBox is installed here")
    result = appliance_cli("build", "--provider", "virtualbox")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "appliance: error: VirtualBox is not installed (no VBoxManage); install it, or use --provider qemu on Linux"
    ]


def test_export_dry_run_seals_the_vagrant_vm_before_vboxmanage_export(appliance_cli, repo_root, tmp_path):
    result = appliance_cli("export", "--provider", "virtualbox", "--dry-run", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" && ")[-1] for line in lines[:3]] == [
        f"WORKSHOP_CONFIG={repo_root / 'workshop.yml'} vagrant up --no-provision",
        f"WORKSHOP_CONFIG={repo_root / 'workshop.yml'} vagrant provision --provision-with finalize",
        f"WORKSHOP_CONFIG={repo_root / 'workshop.yml'} vagrant halt",
    ]
    # before the export: no host loopback for the guest, no ssh forward (no instructor key)
    vm = "'<id from .vagrant/machines/default/virtualbox/id>'"
    assert lines[3] == f"VBoxManage modifyvm {vm} --nat-localhostreachable1 off"
    assert lines[4] == f"VBoxManage modifyvm {vm} --natpf1 delete ssh"
    assert lines[5].startswith("VBoxManage export ") and "--ovf20" in lines[5] and "--options manifest,nomacs" in lines[5]
    assert "--eulafile" not in lines[5]  # no license_file in workshop.yml: no licence to accept
    assert lines[6].endswith(f"{tmp_path / 'dl-workshop-2026.11.ova'}")
    unsealed = appliance_cli("export", "--provider", "virtualbox", "--dry-run", "--no-finalize", "--out", str(tmp_path))
    assert unsealed.stdout.splitlines()[0].startswith("VBoxManage modifyvm ")
    assert unsealed.stdout.splitlines()[2].startswith("VBoxManage export ")


def test_export_dry_run_qemu_seals_the_build_disk_only(appliance_cli, repo_root, tmp_path):
    result = appliance_cli("export", "--provider", "qemu", "--dry-run", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    built = repo_root / "cache" / "vm" / "dl-workshop-2026.11" / "disk.qcow2"
    # a copy is sealed (finalize removes the build's access), the built disk stays as it is
    sealed = built.with_name("sealed.qcow2")
    assert lines[0] == f"qemu-img create -q -f qcow2 -b {built.resolve()} -F qcow2 {sealed}"
    assert lines[1].startswith("qemu-system-x86_64 ") and f"file={sealed}," in lines[1]
    assert lines[2].endswith("provision/finalize.yml") and '"workshop_vars"' in lines[2]
    assert lines[4].startswith("qemu-img convert -p -O vmdk -o subformat=streamOptimized " + str(sealed))
    given = appliance_cli("export", "--provider", "qemu", "--dry-run", "--disk", str(tmp_path / "x.qcow2"))
    assert given.stdout.splitlines()[0].startswith("qemu-img convert")  # --disk: exported as it is

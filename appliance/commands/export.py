"""`appliance export [--config FILE] [--disk PATH] [--provider qemu|virtualbox]`"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import tempfile
import time
from pathlib import Path

from appliance import ova, vbox
from appliance.config import LoadedConfig, load_config
from appliance.errors import ApplianceError, ConfigError
from appliance.paths import REPO_ROOT, config_path, dist_dir
from appliance.vm.qemu import built_disk_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write dist/<name>-<version>.ova (and .sha256) from the built VM",
        description="Export the built VM as an OVA that VirtualBox imports with the workshop's settings.",
    )
    parser.add_argument("--config", type=Path, default=config_path(), help="workshop.yml (default: the repository's)")
    parser.add_argument("--disk", type=Path, help="the built disk image (qcow2 or raw) for the qemu path "
                        "(default: cache/vm/<name>-<version>/disk.qcow2, where `appliance build` leaves it)")
    parser.add_argument("--provider", choices=("auto", "qemu", "virtualbox"), default="auto",
                        help="virtualbox: VBoxManage export of the Vagrant VM; qemu: the VirtualBox-free writer "
                        "(default: virtualbox when VBoxManage and a Vagrant VirtualBox VM exist)")
    parser.add_argument("--firmware", choices=("bios", "efi"), default="bios",
                        help="how the disk boots (qemu path; default bios)")
    parser.add_argument("--out", type=Path, help="output folder (default: dist/)")
    parser.add_argument("--no-finalize", action="store_true",
                        help="export the built VM as it is, without sealing it first (provision/finalize.yml: "
                        "build manifest, caches and logs cleaned, host keys and machine id reset, free space trimmed)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.set_defaults(run=run)


def _eula(loaded: LoadedConfig) -> str | None:
    """The licence text workshop.yml names (license_file), or None: without one the OVA has
    no EulaSection, which `VBoxManage import` would otherwise stop at."""
    name = loaded.workshop.license_file
    if not name:
        return None
    path = loaded.root / name
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"license_file {name}: cannot be read as UTF-8 text ({exc.__class__.__name__}); "
                          "fix the path in workshop.yml") from None
    # Licence texts (the GPL's) separate pages with form feeds, which XML 1.0 does not allow.
    text = text.replace("\f", "\n")
    bad = re.search(r"[\x00-\x08\x0b\x0e-\x1f\x7f]", text)
    if bad:
        raise ConfigError(f"license_file {name}: holds the control character {bad.group()!r}, which the OVF "
                          "cannot carry; remove it")
    if not text:
        raise ConfigError(f"license_file {name}: is empty; write the licence text or drop license_file")
    return text


def _say(message: str) -> None:
    print(f"export: {message}", flush=True)


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    eula = _eula(loaded)  # read first: a bad licence file fails before any sealing
    out_dir = args.out or dist_dir(loaded.root)
    provider = args.provider
    vm_id = vbox.vagrant_vm_id(REPO_ROOT)  # Vagrant runs in the repository (vagrant_driver)
    if provider == "auto":
        provider = "virtualbox" if vbox.vboxmanage() and vm_id and args.disk is None else "qemu"
    if args.dry_run:
        for command in planned_commands(loaded, provider, args, out_dir, vm_id):
            print(command)
        return 0
    if provider == "virtualbox":
        return _export_virtualbox(loaded, out_dir, vm_id, eula, finalize=not args.no_finalize)

    disk = args.disk or built_disk_path(loaded)
    if not disk.is_file():
        raise ApplianceError(f"{disk}: no built disk image; run `appliance build` or pass --disk PATH")
    if args.disk is not None:
        # Only the build's own disk is known to let in the build's key and to hold a workshop VM.
        _say(f"exporting {disk} as it is (--disk: not sealed by finalize)")
    elif not args.no_finalize:
        from appliance.vm import qemu_build

        # Sealing removes the build's own way in, so it works on a copy (an overlay on the built
        # disk): the built VM stays as it was, to test, provision again or export again.
        overlay = qemu_build.sealed_overlay_path(loaded)
        _say(f"sealing a copy of the built VM first (provision/finalize.yml on {overlay.name})")
        qemu_build.make_overlay(disk, overlay)
        # When sealing fails, the copy stays for a look (the message says where).
        sealed = qemu_build.finalize(loaded, overlay, log=_say)
        _say(f"sealed in {sealed.report.total_seconds:.0f} s (boot to ssh {sealed.boot_seconds:.0f} s)")
        try:
            return _export_disk(loaded, args, overlay, out_dir, eula)
        finally:
            overlay.unlink(missing_ok=True)
    return _export_disk(loaded, args, disk, out_dir, eula)


def _export_disk(loaded: LoadedConfig, args: argparse.Namespace, disk: Path, out_dir: Path,
                 eula: str | None) -> int:
    settings = ova.settings_from_workshop(loaded.workshop, eula=eula, firmware=args.firmware.upper())
    from appliance.vm.qemu_build import recorded_os  # the label says what the build made, not what vm.os asks

    settings = dataclasses.replace(settings, os=recorded_os(disk, settings.os))
    result = ova.export_qemu(settings, disk, out_dir, _say)
    _report(result.ova, result.ova_size, result.seconds, result.disk)
    return 0


def planned_commands(loaded: LoadedConfig, provider: str, args: argparse.Namespace, out_dir: Path,
                     vm_id: str | None) -> list[str]:
    """What `appliance export` runs, for --dry-run (checked by the tests where VirtualBox is absent)."""
    final = out_dir / f"{loaded.workshop.artifact_name}.ova"
    if provider == "virtualbox":
        from appliance.vm import vagrant_driver

        commands = [] if args.no_finalize else vagrant_driver.planned_finalize_commands(loaded)
        vm = vm_id or "<id from .vagrant/machines/default/virtualbox/id>"
        eula = out_dir / ".export-XXXX" / "EULA.txt" if loaded.workshop.license_file else None
        # The ssh forward is listed as present: --dry-run does not ask VirtualBox which rules exist.
        prepare = vbox.prepare_argvs(loaded.workshop, vm, ["ssh"])
        argv = vbox.export_argv(loaded.workshop, vm, out_dir / ".export-XXXX" / final.name, eula_file=eula)
        return [*commands, *map(shlex.join, prepare), shlex.join(argv),
                f"mv {out_dir}/.export-XXXX/{final.name} {final}"]
    disk = args.disk or built_disk_path(loaded)
    commands = []
    if args.disk is None and not args.no_finalize:
        from appliance.vm.playbook import FINALIZE_PLAYBOOK
        from appliance.vm.qemu_build import overlay_command, planned_play_commands, sealed_overlay_path

        overlay = sealed_overlay_path(loaded)
        commands.append(shlex.join(overlay_command(disk, overlay)))
        commands += planned_play_commands(loaded, overlay, FINALIZE_PLAYBOOK)
        disk = overlay
    _, vmdk, _ = ova.artifact_names(loaded.workshop.artifact_name)
    commands.append(shlex.join(["qemu-img", "convert", "-p", "-O", "vmdk", "-o", "subformat=streamOptimized",
                                str(disk), str(out_dir / ".export-XXXX" / vmdk)]))
    commands.append(f"(OVF + SHA-256 manifest written) -> ustar tar, .ovf first -> {final} and {final.name}.sha256")
    return commands


def _export_virtualbox(loaded: LoadedConfig, out_dir: Path, vm_id: str | None, eula_text: str | None,
                       finalize: bool) -> int:
    program = vbox.vboxmanage()
    if program is None:
        raise ApplianceError("VBoxManage is not on PATH; install VirtualBox or use --provider qemu --disk PATH")
    if vm_id is None:
        raise ApplianceError("no VirtualBox VM from `vagrant up` in this checkout; run `appliance build` first")
    if finalize:
        from appliance.vm import vagrant_driver

        _say("sealing the VM first (vagrant provision --provision-with finalize)")
        vagrant_driver.finalize(loaded, log=_say)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{loaded.workshop.artifact_name}.ova"
    started = time.monotonic()
    for argv in vbox.prepare_argvs(loaded.workshop, vm_id, vbox.forwarding_rules(program, vm_id), program):
        vbox.run(argv)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as work:
        eula = Path(work) / "EULA.txt" if eula_text else None
        if eula is not None:
            eula.write_text(f"{eula_text}\n", encoding="utf-8")
        partial = Path(work) / final.name
        argv = vbox.export_argv(loaded.workshop, vm_id, partial, program=program, eula_file=eula)
        _say("running " + " ".join(argv[:3]) + " ...")
        vbox.run(argv)
        digest = ova.sha256_file(partial)
        os.replace(partial, final)
    ova.write_sha256_file(final, digest)
    _report(final, final.stat().st_size, time.monotonic() - started, None)
    return 0


def _report(path: Path, size: int, seconds: float, disk: ova.DiskInfo | None) -> None:
    print(f"wrote {path} ({size / 1e9:.2f} GB) and {path.name}.sha256 in {seconds:.0f} s")
    if disk is not None:
        print(f"OVA / data in the guest disk: {size / 1e9:.2f} GB / {disk.data_bytes / 1e9:.2f} GB "
              f"= {size / max(disk.data_bytes, 1):.2f} (virtual disk {disk.virtual_size / 1e9:.1f} GB)")

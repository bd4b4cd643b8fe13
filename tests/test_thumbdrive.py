"""`appliance thumbdrive build|write`: the image layout and its refusals, and real writes onto
loop-mounted FAT32 and exFAT file systems made here (three at once, a flipped byte, a drive
that fails mid-write, a re-run, targets on the system disk)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.thumbdrive import checksums, layout
from appliance.thumbdrive.targets import mount_of, mounts
from shiphelpers import loop_devices_usable, loop_drives, make_checkout, mount_command

LOOP_REASON = loop_devices_usable()
needs_loops = [pytest.mark.thumbdrive, pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))]


def build(appliance_cli, root: Path, ova: Path, out: Path, *extra: str):
    return appliance_cli("thumbdrive", "build", "--config", str(root / "workshop.yml"), "--ova", str(ova),
                         "--out", str(out), *extra)


@pytest.fixture
def checkout(tmp_path) -> Path:
    return make_checkout(tmp_path / "checkout")


@pytest.fixture
def small_ova(tmp_path) -> Path:
    path = tmp_path / "test-workshop-1.2.ova"
    path.write_bytes(os.urandom(1_500_000))
    return path


# --- build -------------------------------------------------------------------------------

def page_text(page: str) -> str:
    """What a browser shows of index.html."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_build_lays_out_the_image_with_checksums_and_guide(appliance_cli, checkout, small_ova, tmp_path):
    # A token the build made lies in the cache: it must not reach the guide (each imported copy
    # makes its own).
    token = checkout / "cache" / "vm" / "test-workshop-1.2" / "jupyter-token"
    token.parent.mkdir(parents=True)
    token.write_text("s3cr3t-t0ken\n")
    out = tmp_path / "image"
    result = build(appliance_cli, checkout, small_ova, out, "--drive-size", "64M", "--filesystem", "fat32")
    assert result.returncode == 0, result.stderr
    assert re.search(r"wrote .*image: \d+ files, [\d.]+ GB", result.stdout)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert layout.MARKER_NAME in files  # marks the folder as one a later build may replace
    files.remove(layout.MARKER_NAME)
    assert "test-workshop-1.2.ova" in files
    assert {"index.html", "README.txt", "SHA256SUMS"} <= set(files)
    installers = [f for f in files if f.startswith("virtualbox/")]
    assert len(installers) == 5 and any(f.endswith("-Win.exe") for f in installers)
    # no launcher at the drive's top (the local-mode copy of the tool may hold scripts of its own)
    assert not [f for f in files if f.startswith(("wheels/", "tools/", "python/"))
                or ("/" not in f and f.endswith((".cmd", ".command", ".sh")))]
    assert "local-mode/notebooks/01-mnist-mlp.ipynb" in files
    assert "local-mode/local/setup.bash" in files
    assert "local-mode/cache/mnist.npz" in files
    assert "local-mode/appliance/cli.py" in files
    assert not [f for f in files if "__pycache__" in f]
    assert all(layout.fat_name_problem(f) is None for f in files)

    # every file but SHA256SUMS is listed, and the real sha256sum agrees
    listed = checksums.read_sums(out)
    assert set(listed) == set(files) - {"SHA256SUMS"}
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    readme = (out / "README.txt").read_text()
    page = (out / "index.html").read_text()
    for text in (readme, page_text(page)):
        assert "http://localhost:18888/" in text
        assert "s3cr3t-t0ken" not in text
        # where each participant reads the token of their own copy
        assert "makes its own token" in text and "VirtualBox window" in text and "login message" in text
        assert "Import Appliance" in text
        # no licence in workshop.yml: the plain import works (an --eula form would confuse)
        assert "VBoxManage import test-workshop-1.2.ova" in text and "--eula" not in text
        assert "VT-x" in text and "Hyper-V" in text and "WSL2" in text
        # a VM-only drive (drive.platforms: []) promises no start without the VM
        assert "Apple Silicon" in text and "Work without the VM" not in text and "start-workshop" not in text
        assert "already in use" in text
        assert "VirtualBox-7.2.20-175154-Win.exe" in text
    assert page.startswith("<!DOCTYPE html>") and '<a href="http://localhost:18888/">' in page


def test_guide_with_a_licence_and_a_password(appliance_cli, tmp_path, small_ova):
    from shiphelpers import WORKSHOP
    data = dict(WORKSHOP, license_file="LICENSE.txt",
                jupyter={"password_hash": "argon2:$argon2id$v=19$m=10240,t=10,p=8$abc$def"})
    root = make_checkout(tmp_path / "c", installers=False, workshop=data)
    (root / "LICENSE.txt").write_text("For learning only.\n")
    out = tmp_path / "image"
    result = build(appliance_cli, root, small_ova, out, "--drive-size", "64M")
    assert result.returncode == 0, result.stderr
    for text in ((out / "README.txt").read_text(), page_text((out / "index.html").read_text())):
        assert "VBoxManage import test-workshop-1.2.ova --vsys 0 --eula accept" in text
        assert "accept the licence" in text
        assert "organizers give it to you" in text and "makes its own token" not in text


# --- build --out: what may be replaced ------------------------------------------------------

def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_build_refuses_a_folder_it_did_not_make(appliance_cli, checkout, small_ova, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("four years of work\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = build(appliance_cli, checkout, small_ova, out, "--drive-size", "64M")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--force" in result.stderr and "Traceback" not in result.stderr
    assert tree(out) == {"thesis.txt": b"four years of work\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside it either
    # a file is never replaced, not even with --force
    paper = tmp_path / "paper.txt"
    paper.write_text("draft\n")
    result = build(appliance_cli, checkout, small_ova, paper, "--drive-size", "64M", "--force")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and paper.read_text() == "draft\n"
    # a folder that cannot be made: one line, not a traceback
    under_file = build(appliance_cli, checkout, small_ova, paper / "image", "--drive-size", "64M")
    assert under_file.returncode == 1 and under_file.stderr.count("\n") == 1, under_file.stderr
    assert "Traceback" not in under_file.stderr and paper.read_text() == "draft\n"
    # --force replaces the folder as asked
    forced = build(appliance_cli, checkout, small_ova, out, "--drive-size", "64M", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "thesis.txt").exists() and (out / "SHA256SUMS").is_file()


def test_build_replaces_its_own_earlier_image(appliance_cli, checkout, small_ova, tmp_path):
    out = tmp_path / "image"
    assert build(appliance_cli, checkout, small_ova, out, "--drive-size", "64M").returncode == 0
    (out / "README.txt").write_text("stale\n")
    # a folder named like the tool's old temporary names is someone else's: kept
    for name in ("image.partial", "image.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("mine\n")
    again = build(appliance_cli, checkout, small_ova, out, "--drive-size", "64M")
    assert again.returncode == 0, again.stderr
    assert (out / "README.txt").read_text() != "stale\n"
    for name in ("image.partial", "image.old"):
        assert (tmp_path / name / "keep.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("place", ["/", "HOME", "CHECKOUT", "ABOVE"])
def test_build_never_replaces_the_root_home_or_the_checkout(appliance_cli, checkout, small_ova, tmp_path, place):
    target = {"/": "/", "HOME": str(Path.home()), "CHECKOUT": str(checkout), "ABOVE": str(checkout.parent)}[place]
    result = build(appliance_cli, checkout, small_ova, Path(target), "--drive-size", "64M", "--force")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"appliance: error: --out {target}:")
    assert (checkout / "workshop.yml").is_file()


def test_build_reports_missing_installers(appliance_cli, tmp_path, small_ova):
    root = make_checkout(tmp_path / "c", installers=False)
    result = build(appliance_cli, root, small_ova, tmp_path / "image", "--drive-size", "64M")
    assert result.returncode == 0, result.stderr
    missing = [line for line in result.stdout.splitlines() if line.startswith("thumbdrive: missing: virtualbox/")]
    assert len(missing) == 5
    assert "5 missing" in result.stdout
    assert not (tmp_path / "image" / "virtualbox").exists()


# --- build: symbolic links in what the drive carries from the checkout --------------------------

def test_a_link_inside_the_repository_puts_its_content_on_the_drive(appliance_cli, checkout, small_ova, tmp_path):
    (checkout / "shared").mkdir()
    (checkout / "shared" / "table.csv").write_text("a,b\n1,2\n")
    (checkout / "notebooks" / "table.csv").symlink_to("../shared/table.csv")
    (checkout / "notebooks" / "shared").symlink_to("../shared", target_is_directory=True)
    out = tmp_path / "image"
    result = build(appliance_cli, checkout, small_ova, out, "--drive-size", "64M")
    assert result.returncode == 0, result.stderr
    for copied in (out / "local-mode/notebooks/table.csv", out / "local-mode/notebooks/shared/table.csv"):
        assert not copied.is_symlink() and copied.read_text() == "a,b\n1,2\n"  # FAT holds no links


@pytest.mark.parametrize("link", ["file-outside", "folder-outside", "deep-outside", "broken", "loop", "tree-outside"])
def test_build_refuses_a_link_leading_out_of_the_repository(appliance_cli, checkout, small_ova, tmp_path, link):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "id_ed25519").write_text("PRIVATE KEY of the build machine\n")
    notebooks = checkout / "notebooks"
    named = {
        "file-outside": (notebooks / "data.csv", elsewhere / "id_ed25519"),
        "folder-outside": (notebooks / "data", elsewhere),
        "deep-outside": (notebooks / "data", Path("../../elsewhere")),        # relative, via ..
        "broken": (notebooks / "data.csv", Path("missing.csv")),
        "loop": (notebooks / "part" / "again", Path("..")),                  # notebooks/part/again -> notebooks
        "tree-outside": (checkout / "local", elsewhere),                      # a whole folder the drive carries
    }
    where, target = named[link]
    if link == "tree-outside":
        shutil.rmtree(where)
    where.parent.mkdir(exist_ok=True)
    where.symlink_to(target)
    out = tmp_path / "image"
    result = build(appliance_cli, checkout, small_ova, out, "--drive-size", "64M")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"appliance: error: {where}: a symbolic link"), result.stderr
    if link.endswith("outside"):
        assert "outside the repository" in result.stderr and "remove the link" in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".image")]


def test_fat32_refuses_a_file_of_4_gib(appliance_cli, checkout, tmp_path):
    big = tmp_path / "test-workshop-1.2.ova"
    with big.open("wb") as handle:  # sparse: nothing is written
        handle.truncate(4 * 1024**3)
    out = tmp_path / "image"
    result = build(appliance_cli, checkout, big, out, "--drive-size", "16G", "--filesystem", "fat32")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "FAT32 cannot hold a file of 4 GiB" in result.stderr and "exfat" in result.stderr
    assert not out.exists() and not out.with_name("image.partial").exists()
    # the same layout is fine on exFAT as far as file sizes go (then it is the drive size that counts)
    plan_result = build(appliance_cli, checkout, big, out, "--drive-size", "4G", "--filesystem", "exfat")
    assert plan_result.returncode == 1 and "use a bigger --drive-size" in plan_result.stderr


def test_refuses_a_layout_bigger_than_the_drive(appliance_cli, checkout, small_ova, tmp_path):
    result = build(appliance_cli, checkout, small_ova, tmp_path / "image", "--drive-size", "1M")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "needs" in result.stderr and "bigger --drive-size" in result.stderr
    assert not (tmp_path / "image").exists()


def test_refuses_names_fat_rejects(appliance_cli, checkout, small_ova, tmp_path):
    (checkout / "notebooks" / "what?.ipynb").write_text("{}")
    result = build(appliance_cli, checkout, small_ova, tmp_path / "image", "--drive-size", "64M")
    assert result.returncode == 1
    assert "what?.ipynb" in result.stderr and "FAT" in result.stderr


def test_parse_size():
    assert layout.parse_size("16G") == 16 * 10**9
    assert layout.parse_size("32GB") == 32 * 10**9
    assert layout.parse_size("64GiB") == 64 * 1024**3
    assert layout.parse_size("500M") == 500 * 10**6
    with pytest.raises(Exception, match="not a size"):
        layout.parse_size("big")


# --- write: refusals (no loop devices needed) ---------------------------------------------

@pytest.mark.parametrize("target", ["/tmp", "/"])
def test_write_refuses_the_system_disk(appliance_cli, target):
    result = appliance_cli("thumbdrive", "write", target)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "running system" in result.stderr and "--force" in result.stderr


def test_write_refuses_what_is_not_a_directory(appliance_cli, tmp_path):
    result = appliance_cli("thumbdrive", "write", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "not a directory" in result.stderr and result.stderr.count("\n") == 1


def test_mountinfo_finds_the_root_mount():
    table = mounts()
    assert mount_of(Path("/"), table).mount_point == Path("/")
    assert mount_of(Path("/proc/self"), table).fstype == "proc"


# --- write: real drives ---------------------------------------------------------------------

@pytest.fixture
def image(appliance_cli, tmp_path) -> Path:
    """An image of about 6 MB: a 3 MB OVA, a 2 MB wheel, installers, guide."""
    root = make_checkout(tmp_path / "checkout", wheel_bytes=2_000_000)
    ova = tmp_path / "test-workshop-1.2.ova"
    ova.write_bytes(os.urandom(3_000_000))
    out = tmp_path / "image"
    result = build(appliance_cli, root, ova, out, "--drive-size", "64M", "--filesystem", "fat32")
    assert result.returncode == 0, result.stderr
    return out


def write(appliance_cli, image: Path, *targets: Path, extra: tuple[str, ...] = ()):
    return appliance_cli("thumbdrive", "write", "--image", str(image), *extra, *map(str, targets))


def table_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^(/\S+) \((\S+)\)\s+(ok|failed)\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+s\s*(.*)$", line)
        if match:
            rows[match.group(1)] = list(match.groups()[1:])
    return rows


def drive_matches_image(image: Path, mount_point: Path) -> bool:
    check = subprocess.run(["sha256sum", "--quiet", "-c", str(image / "SHA256SUMS")], cwd=mount_point,
                           capture_output=True, text=True)
    return check.returncode == 0


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))
def test_three_drives_at_once_fat32_and_exfat_then_rerun_skips(appliance_cli, image, tmp_path):
    with loop_drives(tmp_path, [("fat32", 64), ("exfat", 64), ("fat32", 64)]) as drives:
        points = [d.mount_point for d in drives]
        result = write(appliance_cli, image, *points)
        assert result.returncode == 0, result.stdout + result.stderr
        rows = table_rows(result.stdout)
        total = len(checksums.read_sums(image)) + 1  # + SHA256SUMS itself
        assert set(rows) == {str(p) for p in points}
        for point, row in rows.items():
            assert row[1] == "ok" and int(row[2]) == total and int(row[4]) == total, row
        lines = result.stdout.splitlines()
        for point in points:  # a progress line per drive, before the table
            assert any(line.startswith(f"{point} (") and ": done:" in line for line in lines), lines

        for drive in drives:  # from the device, not from the cache
            drive.drop_caches()
            assert drive_matches_image(image, drive.mount_point)
            assert (drive.mount_point / "test-workshop-1.2.ova").stat().st_size == 3_000_000
            assert not list(drive.mount_point.rglob("*.partial"))

        again = write(appliance_cli, image, *points)
        assert again.returncode == 0, again.stdout + again.stderr
        for row in table_rows(again.stdout).values():
            assert row[1] == "ok" and int(row[2]) == 0 and int(row[3]) == total, row


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))
def test_a_file_changed_with_its_old_mtime_is_copied_again(appliance_cli, image, tmp_path):
    """Nothing on the drive is trusted on a re-run: not a stamp file, not an mtime."""
    with loop_drives(tmp_path, [("exfat", 64)]) as drives:
        point = drives[0].mount_point
        assert write(appliance_cli, image, point).returncode == 0
        readme = point / "README.txt"
        before = readme.stat()
        data = bytearray(readme.read_bytes())
        data[10] ^= 0x20
        readme.write_bytes(bytes(data))
        os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns))
        # a forged record of "verified" files, as the old writer kept on the drive
        (point / ".workshop-verified.json").write_text('{"files": {}}')
        drives[0].drop_caches()
        assert not drive_matches_image(image, point)
        again = write(appliance_cli, image, point)
        assert again.returncode == 0, again.stdout + again.stderr
        row = table_rows(again.stdout)[str(point)]
        total = len(checksums.read_sums(image)) + 1
        assert row[1:4] == ["ok", "1", str(total - 1)], row
        drives[0].drop_caches()
        assert drive_matches_image(image, point)


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))
def test_a_symbolic_link_on_the_drive_is_never_followed(appliance_cli, image, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours\n")
    with loop_drives(tmp_path, [("ext4", 64)]) as drives:
        point = drives[0].mount_point
        (point / "local-mode").symlink_to(outside)          # a folder of the image
        (point / "README.txt").symlink_to(victim)           # a file of the image
        result = write(appliance_cli, image, point)
        assert result.returncode == 1
        row = table_rows(result.stdout)[str(point)]
        assert row[1] == "failed" and "symbolic link" in row[5] and "local-mode" in row[5], row
        assert list(outside.iterdir()) == []
        assert victim.read_text() == "not yours\n"
        (point / "local-mode").unlink()
        fixed = write(appliance_cli, image, point)
        assert fixed.returncode == 0, fixed.stdout
        assert list(outside.iterdir()) == [] and victim.read_text() == "not yours\n"
        # the file link was replaced by the file itself, never written through
        assert not (point / "README.txt").is_symlink()
        assert drive_matches_image(image, point)


def _flip_byte_in_backing_file(backing: Path, needle: bytes) -> None:
    data = backing.read_bytes()
    offset = data.find(needle)
    assert offset >= 0, "file content not found on the drive image"
    with backing.open("r+b") as handle:
        handle.seek(offset + len(needle) // 2)
        byte = handle.read(1)
        handle.seek(offset + len(needle) // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
        handle.flush()
        os.fsync(handle.fileno())


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))
def test_a_flipped_byte_on_one_drive_is_caught(appliance_cli, image, tmp_path):
    with loop_drives(tmp_path, [("fat32", 64), ("exfat", 64), ("fat32", 64)]) as drives:
        points = [d.mount_point for d in drives]
        assert write(appliance_cli, image, *points).returncode == 0
        victim = drives[1]
        wheel = "test-workshop-1.2.ova"  # random bytes: the needle is found once
        needle = (image / wheel).read_bytes()[100_000:100_064]
        victim.unmount()  # change the medium underneath the file system, as a bad flash cell would
        _flip_byte_in_backing_file(victim.backing, needle)
        victim.drop_caches()

        result = write(appliance_cli, image, *points, extra=("--verify-only",))
        assert result.returncode == 1
        rows = table_rows(result.stdout)
        assert rows[str(points[1])][1] == "failed"
        assert f"verification failed: {wheel} checksum mismatch" in rows[str(points[1])][5]
        assert rows[str(points[0])][1] == "ok" and rows[str(points[2])][1] == "ok"

        # the next write copies the damaged file again, and only that one
        repair = write(appliance_cli, image, *points)
        assert repair.returncode == 0, repair.stdout
        repaired = table_rows(repair.stdout)
        assert repaired[str(points[1])][2] == "1" and repaired[str(points[0])][2] == "0"
        victim.drop_caches()
        assert drive_matches_image(image, victim.mount_point)


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))
def test_a_full_drive_fails_alone(appliance_cli, image, tmp_path):
    with loop_drives(tmp_path, [("fat32", 64), ("exfat", 40), ("exfat", 64)]) as drives:
        points = [d.mount_point for d in drives]
        # fill the middle drive so the image no longer fits
        filler = points[1] / "filler.bin"
        image_bytes = sum(f.stat().st_size for f in image.rglob("*") if f.is_file())
        count = (shutil.disk_usage(points[1]).free - image_bytes // 2) // 2**20
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", f"count={count}", "status=none"], check=True)
        result = write(appliance_cli, image, *points)
        assert result.returncode == 1
        rows = table_rows(result.stdout)
        assert rows[str(points[1])][1] == "failed" and "not enough space" in rows[str(points[1])][5]
        assert rows[str(points[0])][1] == "ok" and rows[str(points[2])][1] == "ok"
        for index in (0, 2):
            drives[index].drop_caches()
            assert drive_matches_image(image, drives[index].mount_point)


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None or shutil.which("dmsetup") is None,
                    reason=str(LOOP_REASON or "dmsetup is not installed"))
def test_a_drive_failing_mid_write_fails_alone(appliance_cli, image, tmp_path):
    """A drive whose blocks past 4 MB return I/O errors (device-mapper `error` target): the file
    system and its free space look fine, the copy breaks part-way through."""
    backing = tmp_path / "failing.img"
    subprocess.run(["truncate", "-s", "64M", str(backing)], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True, capture_output=True,
                          text=True).stdout.strip()
    name = f"appliance-test-{os.getpid()}"
    sectors = 64 * 2048
    good = 4 * 2048
    table = f"0 {good} linear {loop} 0\n{good} {sectors - good} error\n"
    mount_point = tmp_path / "failing"
    mount_point.mkdir()
    try:
        created = subprocess.run(["dmsetup", "create", name], input=table, text=True, capture_output=True)
        if created.returncode != 0:
            pytest.skip("device-mapper is not usable here: " + (created.stderr.strip().splitlines() or ["?"])[0])
        device = f"/dev/mapper/{name}"
        subprocess.run(["udevadm", "settle"], check=False, capture_output=True)
        if not Path(device).exists():
            subprocess.run(["dmsetup", "mknodes", name], check=False, capture_output=True)
        # exFAT keeps its tables (FAT, bitmap, up-case table, root) at the start: inside the good part
        subprocess.run(["mkfs.exfat", device], check=True, capture_output=True)
        subprocess.run(mount_command("exfat", device, mount_point), check=True, capture_output=True)
        with loop_drives(tmp_path, [("fat32", 64), ("exfat", 64)]) as drives:
            points = [drives[0].mount_point, mount_point, drives[1].mount_point]
            result = write(appliance_cli, image, *points, extra=("--force",))
            rows = table_rows(result.stdout)
            assert result.returncode == 1, result.stdout
            assert rows[str(mount_point)][1] == "failed", rows
            reason = rows[str(mount_point)][5]
            assert "I/O error" in reason or "verification failed" in reason or "not connected" in reason, reason
            assert rows[str(points[0])][1] == "ok" and rows[str(points[2])][1] == "ok"
            for drive in drives:
                drive.drop_caches()
                assert drive_matches_image(image, drive.mount_point)
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
        subprocess.run(["dmsetup", "remove", name], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))
def test_an_unmounted_drive_is_refused_and_loop_drives_are_accepted(appliance_cli, image, tmp_path):
    with loop_drives(tmp_path, [("fat32", 64)]) as drives:
        drive = drives[0]
        drive.unmount()  # the mount point is now a plain folder on the system disk
        result = write(appliance_cli, image, drive.mount_point)
        assert result.returncode == 2 and "running system" in result.stderr
        drive.mount()
        result = write(appliance_cli, image, drive.mount_point)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))
def test_a_filled_fat32_drive_fails_alone(appliance_cli, image, tmp_path):
    """FAT32 this time. Where the file system reports its free space the write refuses at the
    start; where it does not (fusefat), the copy runs into ENOSPC part-way. Either way that
    drive fails alone with the reason, and the others are complete."""
    with loop_drives(tmp_path, [("exfat", 64), ("fat32", 40), ("fat32", 64)]) as drives:
        points = [d.mount_point for d in drives]
        filler = points[1] / "filler.bin"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=37", "status=none"], check=True)
        result = write(appliance_cli, image, *points)
        assert result.returncode == 1, result.stdout
        rows = table_rows(result.stdout)
        reason = rows[str(points[1])][5]
        assert rows[str(points[1])][1] == "failed"
        # fusefat reports a full drive as EPERM rather than ENOSPC; the kernel's vfat as ENOSPC
        assert "not enough space" in reason or reason.startswith("writing "), reason
        assert rows[str(points[0])][1] == "ok" and rows[str(points[2])][1] == "ok"
        for index in (0, 2):
            drives[index].drop_caches()
            assert drive_matches_image(image, drives[index].mount_point)


def _fuse_daemon_pid(mount_point: Path) -> int | None:
    """The FUSE server this test started for mount_point (found by its command line)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(mount_point).encode() in argv:
            return int(proc.name)
    return None


@pytest.mark.thumbdrive
@pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))
def test_a_drive_that_disappears_mid_write_fails_alone(appliance_cli, tmp_path):
    """The exFAT drive's FUSE server is killed while a file is being copied to it: like a stick
    pulled out. The other drive finishes and verifies."""
    root = make_checkout(tmp_path / "checkout", wheel_bytes=1000)
    ova = tmp_path / "test-workshop-1.2.ova"
    with ova.open("wb") as handle:
        for _ in range(12):
            handle.write(os.urandom(8_000_000))
    image = tmp_path / "image"
    assert build(appliance_cli, root, ova, image, "--drive-size", "256M").returncode == 0
    with loop_drives(tmp_path, [("exfat", 200), ("exfat", 200)]) as drives:
        victim = drives[1]
        pid = _fuse_daemon_pid(victim.mount_point)
        if pid is None:
            pytest.skip("the exFAT drive is mounted by the kernel, not by a FUSE server this test can stop")
        from shiphelpers import REPO_ROOT
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "thumbdrive", "write", "--image", str(image),
             str(drives[0].mount_point), str(victim.mount_point)],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        partial = victim.mount_point / "test-workshop-1.2.ova.partial"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if partial.stat().st_size > 0:
                    break
            except OSError:
                pass
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=300)
        rows = table_rows(stdout)
        assert process.returncode == 1, stdout + stderr
        assert rows[str(victim.mount_point)][1] == "failed", rows
        assert "disappeared" in rows[str(victim.mount_point)][5] or "I/O error" in rows[str(victim.mount_point)][5], rows
        assert rows[str(drives[0].mount_point)][1] == "ok", rows
        drives[0].drop_caches()
        assert drive_matches_image(image, drives[0].mount_point)


@pytest.mark.thumbdrive
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")
def test_a_file_system_without_a_drive_is_refused(appliance_cli, tmp_path):
    """A tmpfs is mounted and writable, but it is no drive: refused unless --force."""
    point = tmp_path / "ram"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)], check=True)
    try:
        result = appliance_cli("thumbdrive", "write", str(point))
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "not on a block device" in result.stderr and "--force" in result.stderr
    finally:
        subprocess.run(["umount", str(point)], check=False)


# --- local mode on the drive: what the guide may promise, the launchers --------------------

def test_build_refuses_a_guide_promising_platforms_without_wheels_uv_or_python(appliance_cli, tmp_path, small_ova):
    from shiphelpers import WORKSHOP
    data = {k: v for k, v in WORKSHOP.items() if k != "drive"}  # the default: four platforms, CPython 3.13
    root = make_checkout(tmp_path / "c", installers=False, workshop=data)
    out = tmp_path / "image"
    result = build(appliance_cli, root, small_ova, out, "--drive-size", "64M")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    for platform in ("win_amd64", "macosx_arm64", "linux_x86_64", "linux_aarch64"):
        assert f"{platform}: " in lines[0]
    assert "CPython 3.13" in lines[0] and "uv" in lines[0] and "drive.platforms" in lines[0]
    assert not out.exists()


def test_build_counts_a_wheel_whose_hash_is_not_the_locks_as_missing(appliance_cli, tmp_path, small_ova):
    from shiphelpers import WORKSHOP
    data = dict(WORKSHOP, drive={"platforms": ["linux_x86_64"], "python": "3.11"})
    root = make_checkout(tmp_path / "c", installers=False, workshop=data)  # its numpy wheel is random bytes
    result = build(appliance_cli, root, small_ova, tmp_path / "image", "--drive-size", "64M")
    assert result.returncode == 2
    assert "linux_x86_64: 1 wheel(s) for Python 3.11 (e.g. numpy==2.1.0)" in result.stderr
    assert "win_amd64" not in result.stderr


def launcher_call(text: str, uv: str) -> list[str]:
    """The arguments after `<uv> run` in a launcher, with line continuations joined."""
    text = text.replace("\\\n", " ").replace("\r\n", "\n")
    line = next(ln for ln in text.splitlines() if f"{uv}\" run " in ln)
    return line.split(f"{uv}\" run ", 1)[1].split()


def test_the_three_launchers_call_the_one_entry_point_with_the_same_arguments(tmp_path):
    from appliance import launcher
    from appliance.thumbdrive import launchers

    scripts = launchers.scripts("dl-workshop-2026.11", "3.13", ["win_amd64", "macosx_arm64", "linux_x86_64", "linux_aarch64"])
    assert set(scripts) == {launchers.WINDOWS, launchers.MACOS, launchers.LINUX}
    linux = launcher_call(scripts[launchers.LINUX], "$home_dir/bin/uv")
    macos = launcher_call(scripts[launchers.MACOS], "$home_dir/bin/uv")
    windows = launcher_call(scripts[launchers.WINDOWS], "%WHOME%\\bin\\uv.exe")
    assert linux == macos
    assert linux[:5] == windows[:5] == ["--no-project", "--python", "3.13", "python", "-I"]
    assert linux[5] == '"$drive/local-mode/appliance/launcher.py"'
    assert windows[5] == '"%DRIVE%\\local-mode\\appliance\\launcher.py"'
    flags = lambda args: [a for a in args if a.startswith("--")]  # noqa: E731
    assert flags(linux) == flags(windows) == ["--no-project", "--python", "--drive", "--home", "--uv"]
    # the entry point (standard library only: it runs on the drive's bare CPython) takes these
    helped = subprocess.run([sys.executable, "-I", str(Path(launcher.__file__))], capture_output=True, text=True,
                            cwd=tmp_path)
    assert helped.returncode == 2 and "--drive" in helped.stderr  # argparse: the required options
    parser_flags = set(re.findall(r"--[a-z-]+", subprocess.run(
        [sys.executable, "-I", str(Path(launcher.__file__)), "--help"], capture_output=True, text=True).stdout))
    assert {"--drive", "--home", "--uv", "--no-browser", "--port"} <= parser_flags
    assert linux[-1] == '"$@"' and windows[-1] == "%*"

    # Windows: CRLF throughout, quoted paths (spaces), UTF-8 code page (non-ASCII user names),
    # uv's Python from the drive, no network
    cmd = scripts[launchers.WINDOWS]
    assert "\r\n" in cmd and "\n" not in cmd.replace("\r\n", "")
    assert "chcp 65001" in cmd and '"%USERPROFILE%\\dl-workshop-2026.11"' in cmd.replace('set "WHOME=', '"')
    assert 'set "UV_PYTHON_INSTALL_MIRROR=file:///%DRIVE:\\=/%/python"' in cmd and 'set "UV_OFFLINE=1"' in cmd
    assert '--python-downloads-json-url "%DRIVE%\\python\\downloads.json" 3.13' in cmd

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (bin/install-test-deps installs it)")
    for name in (launchers.MACOS, launchers.LINUX):
        path = tmp_path / name
        path.write_text(scripts[name])
        check = subprocess.run(["shellcheck", "--shell=sh", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


def test_the_launcher_never_removes_a_folder_it_did_not_make(tmp_path):
    """The drive's launcher and local mode share the env code: a participant's own `env` folder
    in the workshop folder is refused in one line (exit 2) and left as it is."""
    from appliance import launcher

    drive = tmp_path / "drive"
    (drive / "local-mode").mkdir(parents=True)
    (drive / "local-mode" / "drive.json").write_text(json.dumps({
        "name": "dl-test-1", "python": "3.11", "wheels": "wheels", "lock": "local-mode/requirements/workshop.lock",
        "lock_sha256": "0" * 64, "notebooks": "local-mode/notebooks", "assets": [], "keras_backend": "tensorflow",
        "jupyter_port": 8888}))
    home = tmp_path / "home é" / "dl-test-1"
    (home / "env").mkdir(parents=True)
    (home / "env" / "thesis.tex").write_text("mine")
    result = subprocess.run([sys.executable, "-I", str(Path(launcher.__file__)), "--drive", str(drive), "--home", str(home),
                             "--uv", "/nonexistent/uv", "--no-browser"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"workshop: {home / 'env'} exists but is not a Python environment the workshop made; move it away and start again"]
    assert (home / "env" / "thesis.tex").read_text() == "mine"

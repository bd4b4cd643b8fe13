"""The launchers at the top of the drive: thin callers of appliance/launcher.py, run by the
drive's uv with the drive's CPython. Each copies uv into the participant's home folder (a drive
may be mounted without execute rights, and goes on to the next person), lets uv install the
CPython archive from the drive (UV_PYTHON_INSTALL_MIRROR + the drive's downloads JSON, no
network, no administrator rights), then runs the one Python entry point."""

from __future__ import annotations

WINDOWS = "Start workshop (Windows).cmd"
MACOS = "Start workshop (macOS).command"
LINUX = "start-workshop-linux.sh"
ENTRY = "local-mode/appliance/launcher.py"

_POSIX = """#!/bin/sh
# Starts the workshop from this drive without a VM ({what}). Made by `appliance thumbdrive build`.
# Everything goes to ~/{name} (WORKSHOP_HOME overrides); extra arguments go to the launcher
# (--no-browser, --port N).
set -eu
drive=$(cd "$(dirname "$0")" && pwd -P)
case "$(uname -s)/$(uname -m)" in
{cases}    *) echo "workshop: this drive has no local mode for $(uname -s) $(uname -m); use the VM (see README.txt)" >&2
       exit 2 ;;
esac
if [ ! -f "$drive/tools/$platform/uv" ]; then
    echo "workshop: $drive/tools/$platform/uv is missing; copy the drive again" >&2
    exit 2
fi
home_dir="${{WORKSHOP_HOME:-$HOME/{name}}}"
mkdir -p "$home_dir/bin"
if ! cmp -s "$drive/tools/$platform/uv" "$home_dir/bin/uv"; then
    cp "$drive/tools/$platform/uv" "$home_dir/bin/uv.partial"
    chmod 755 "$home_dir/bin/uv.partial"
    mv -f "$home_dir/bin/uv.partial" "$home_dir/bin/uv"
fi
export UV_NO_CONFIG=1 UV_OFFLINE=1 UV_PYTHON_PREFERENCE=only-managed
export UV_PYTHON_INSTALL_DIR="$home_dir/python" UV_CACHE_DIR="$home_dir/uv-cache"
export UV_PYTHON_INSTALL_MIRROR="file://$drive/python"
"$home_dir/bin/uv" python install --quiet --python-downloads-json-url "$drive/python/downloads.json" {python}
exec "$home_dir/bin/uv" run --no-project --python {python} python -I "$drive/{entry}" \\
    --drive "$drive" --home "$home_dir" --uv "$home_dir/bin/uv" "$@"
"""

_CASES = {
    "linux_x86_64": "    Linux/x86_64) platform=linux_x86_64 ;;\n",
    "linux_aarch64": "    Linux/aarch64|Linux/arm64) platform=linux_aarch64 ;;\n",
    "macosx_arm64": "    Darwin/arm64) platform=macosx_arm64 ;;\n",
}

# chcp 65001: a user folder with non-ASCII letters reaches uv intact. %~dp0. is the drive's
# folder (also at a drive's root, E:\.), quoted everywhere for spaces.
_WINDOWS = """@echo off
rem Starts the workshop from this drive without a VM (Windows). Made by `appliance thumbdrive build`.
rem Everything goes to %USERPROFILE%\\{name}; extra arguments go to the launcher.
chcp 65001 >nul
setlocal
set "DRIVE=%~dp0."
if not exist "%DRIVE%\\tools\\win_amd64\\uv.exe" (
    echo workshop: tools\\win_amd64\\uv.exe is missing on this drive; copy the drive again
    pause
    exit /b 2
)
set "WHOME=%USERPROFILE%\\{name}"
if not exist "%WHOME%\\bin" mkdir "%WHOME%\\bin"
copy /b /y "%DRIVE%\\tools\\win_amd64\\uv.exe" "%WHOME%\\bin\\uv.exe" >nul || goto failed
set "UV_NO_CONFIG=1"
set "UV_OFFLINE=1"
set "UV_PYTHON_PREFERENCE=only-managed"
set "UV_PYTHON_INSTALL_DIR=%WHOME%\\python"
set "UV_CACHE_DIR=%WHOME%\\uv-cache"
set "UV_PYTHON_INSTALL_MIRROR=file:///%DRIVE:\\=/%/python"
"%WHOME%\\bin\\uv.exe" python install --quiet --python-downloads-json-url "%DRIVE%\\python\\downloads.json" {python} || goto failed
"%WHOME%\\bin\\uv.exe" run --no-project --python {python} python -I "%DRIVE%\\{entry_win}" --drive "%DRIVE%" --home "%WHOME%" --uv "%WHOME%\\bin\\uv.exe" %*
if errorlevel 1 goto failed
exit /b 0
:failed
echo workshop: the start failed (see above); ask the organizers
pause
exit /b 2
"""


def scripts(name: str, python: str, platforms: list[str]) -> dict[str, str]:
    """Drive path -> launcher text, only for the OSes the drive serves."""
    result: dict[str, str] = {}
    linux = [p for p in platforms if p.startswith("linux_")]
    if linux:
        cases = "".join(_CASES[p] for p in linux)
        result[LINUX] = _POSIX.format(what="Linux", name=name, cases=cases, python=python, entry=ENTRY)
    if "macosx_arm64" in platforms:
        result[MACOS] = _POSIX.format(what="macOS", name=name, cases=_CASES["macosx_arm64"], python=python, entry=ENTRY)
    if "win_amd64" in platforms:
        # CRLF: cmd.exe misreads labels and blocks in LF-only batch files.
        text = _WINDOWS.format(name=name, python=python, entry_win=ENTRY.replace("/", "\\"))
        result[WINDOWS] = text.replace("\n", "\r\n")
    return result

"""The participant guide on the drive: index.html (opened in a browser) and README.txt
(the same text for anyone who opens the plain file). One source: a list of sections."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from appliance.config import Workshop
from appliance.thumbdrive import launchers
from appliance.thumbdrive.localmode import LABELS


@dataclass(frozen=True)
class GuideFacts:
    workshop: Workshop
    ova_name: str
    installers: dict[str, str]          # platform -> file name under virtualbox/
    local_sizes: dict[str, int] = field(default_factory=dict)  # drive platform -> bytes it needs

    @property
    def local_platforms(self) -> list[str]:
        return list(self.local_sizes)

    @property
    def url(self) -> str:
        host = self.workshop.ports.host_address
        host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "::1") else host
        return f"http://{host}:{self.workshop.ports.jupyter}/"


PLATFORM_LABELS = {
    "windows": "Windows (64-bit)",
    "macos-intel": "macOS on Intel",
    "macos-arm64": "macOS on Apple Silicon (M1 and later)",
    "linux-deb": "Linux: Debian / Ubuntu (.deb)",
    "linux-rpm": "Linux: Fedora / RHEL (.rpm)",
}


def _sections(facts: GuideFacts) -> list[tuple[str, list[str]]]:
    w = facts.workshop
    # No copy shares a secret with another: each imported machine makes its own token at
    # first boot and shows it on its console, so the guide says where to read it.
    if w.jupyter.password_hash:
        login = ["Jupyter asks for the workshop password: the organizers give it to you on the day."]
    else:
        login = [
            "Jupyter asks for a token. Your machine makes its own token when it first starts and shows it "
            "in its VirtualBox window, the console screen above the login prompt (no need to log in). "
            "Type it exactly as shown there.",
            "The same token is in the login message when you log in on the console; every participant's "
            "machine has a different one.",
        ]
    if w.license_file:
        importing = [
            "In VirtualBox: File > Import Appliance..., choose the .ova file, keep the settings, click "
            "Next, read and accept the licence, click Finish.",
            f"From a terminal instead:  VBoxManage import {facts.ova_name} --vsys 0 --eula accept",
        ]
    else:
        importing = [
            "In VirtualBox: File > Import Appliance..., choose the .ova file, keep the settings, click Finish.",
            f"From a terminal instead:  VBoxManage import {facts.ova_name}",
        ]
    installers = [f"{PLATFORM_LABELS.get(p, p)}: virtualbox/{name}" for p, name in sorted(facts.installers.items())]
    local = facts.local_platforms
    on_drive = [f"{facts.ova_name}: the workshop virtual machine (import it in VirtualBox)."]
    if facts.installers:
        on_drive.append("virtualbox/: VirtualBox installers for "
                        + ", ".join(PLATFORM_LABELS.get(p, p) for p in sorted(facts.installers)) + ".")
    if local:
        on_drive += [
            "The start files (" + ", ".join(n for n in launchers.scripts(w.artifact_name, w.drive.python, local)) + "): "
            "the workshop without a VM on " + "; ".join(LABELS[p] for p in local) + ".",
            f"wheels/, python/, tools/: the Python packages, Python {w.drive.python} and the uv installer "
            "for those computers; nothing needs the internet.",
            "local-mode/: the notebooks, their data and the code the start files run.",
        ]
    on_drive.append("SHA256SUMS: checksums of every file (sha256sum -c SHA256SUMS checks them).")
    if not installers:
        installers = ["Download VirtualBox from https://www.virtualbox.org/wiki/Downloads"]
    return [
        ("What is on this drive", on_drive),
        ("1. Install VirtualBox", installers + [
            "Copy the installer for your computer to your disk first, then run it.",
        ]),
        ("2. Import the workshop machine", [
            f"Copy {facts.ova_name} from this drive to your disk first, so other participants can use the drive.",
            *importing,
            f"The machine gets {w.vm.memory_mb} MB of memory and {w.vm.cpus} CPUs; your computer needs a bit more than that free.",
            "Select the machine and click Start. Wait about a minute for it to boot; its window then "
            "shows the address and (without a workshop password) the Jupyter token.",
        ]),
        ("3. Open the notebooks", [
            f"Open your web browser at {facts.url}",
            *login,
            f"TensorBoard is at http://localhost:{w.ports.tensorboard}/ when a notebook starts it.",
            "Save your work with File > Download in Jupyter before you delete the machine.",
        ]),
        *_local_section(facts),
        ("Troubleshooting", [
            "\"VT-x is disabled in the BIOS\" / \"AMD-V is disabled\" / the VM stops at once: turn on "
            "virtualization (Intel VT-x, AMD SVM) in your computer's firmware setup (press F2, F10, Del or "
            "Esc while it starts), save, and start again.",
            "Windows: a green turtle in the VirtualBox status bar or a very slow VM means Hyper-V is on "
            "(WSL2, Docker Desktop, Windows Sandbox, Memory integrity use it). Turn off \"Hyper-V\", "
            "\"Virtual Machine Platform\" and \"Windows Hypervisor Platform\" in Windows Features and "
            "restart" + (", or work without the VM (see above)." if "win_amd64" in local else "."),
            "Apple Silicon Macs (M1 and later): the workshop VM is built for Intel/AMD (x86-64) "
            "processors and does not run there." + (" Work without the VM (see above)." if "macosx_arm64" in local
                                                    else " Ask the organizers for another way to take part."),
            f"\"Address already in use\" or the page does not open: another program uses port "
            f"{w.ports.jupyter}. Close it (another Jupyter?), or in VirtualBox: Settings > Network > "
            f"Advanced > Port Forwarding, change the host port of 'jupyter' (for example to "
            f"{w.ports.jupyter + 1}) and open that port in the browser.",
            "Import fails with a checksum error: the copy is damaged; copy the .ova again from the drive.",
            "Not enough memory: close other programs, or lower the memory in Settings > System (not below 2048 MB).",
        ]),
    ]


def _local_section(facts: GuideFacts) -> list[tuple[str, list[str]]]:
    """Only what this drive holds: a platform is named only when its wheels, uv and Python are here."""
    w = facts.workshop
    local = facts.local_platforms
    if not local:
        return []
    folder = w.artifact_name
    steps = []
    if "win_amd64" in local:
        steps.append(f"Windows: double-click \"{launchers.WINDOWS}\" on the drive.")
    if "macosx_arm64" in local:
        steps.append(f"macOS (Apple Silicon): double-click \"{launchers.MACOS}\" on the drive, or in Terminal run: "
                     f"sh \"/Volumes/<the drive's name>/{launchers.MACOS}\"")
    if any(p.startswith("linux_") for p in local):
        arches = " and ".join(LABELS[p].removeprefix("Linux on ") for p in local if p.startswith("linux_"))
        steps.append(f"Linux ({arches}): open a terminal in the drive's folder and run:  sh {launchers.LINUX}")
    again = [text for platform, text in (("win_amd64", "double-click start-workshop.cmd (Windows)"),
                                         ("macosx_arm64", "double-click start-workshop.command (macOS)"),
                                         ("linux_", "run  sh start-workshop.sh  (Linux)"))
             if any(p.startswith(platform) for p in local)]
    # Measured (bench/thumbdrive.py): the installed environment plus uv's cache take about 4.5
    # times the wheels and Python archive they come from.
    largest = max(facts.local_sizes.values())
    return [("Without a VM: nothing to install, no internet needed", [
        *steps,
        f"The first start copies Python {w.drive.python} and the workshop packages from the drive into the folder "
        f"{folder} in your home folder (about {math.ceil(largest * 5 / 1e9)} GB of free space; a few minutes), "
        "without administrator rights.",
        "Later starts take a few seconds and need no drive: in that folder, " + "; ".join(again) + ".",
        f"Your browser opens JupyterLab at http://127.0.0.1:{w.ports.jupyter}/lab (or the next free port); the "
        f"window that starts it shows the address, and the token is in {folder}/jupyter-token.",
        f"Your notebooks are saved in {folder}/notebooks; nothing is written to the drive. Close that window "
        "(or press Ctrl-C in it) to stop JupyterLab.",
        "Other computers (" + ", ".join(LABELS[p] for p in LABELS if p not in local) + ", Intel Macs) use the VM."
        if len(local) < len(LABELS) else "Intel Macs use the VM.",
    ])]


def readme_text(facts: GuideFacts) -> str:
    title = f"{facts.workshop.title} {facts.workshop.version}"
    lines = [title, "=" * len(title), ""]
    if facts.workshop.description:
        lines += [facts.workshop.description, ""]
    for heading, items in _sections(facts):
        lines += [heading, "-" * len(heading)]
        lines += [f"* {item}" for item in items]
        lines.append("")
    # CRLF: Notepad on older Windows shows LF-only files as one line.
    return "\r\n".join(lines)


def index_html(facts: GuideFacts) -> str:
    title = html.escape(f"{facts.workshop.title} {facts.workshop.version}")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em;"
        "line-height:1.5}code{background:#eee;padding:0 .2em}h2{border-bottom:1px solid #ccc}</style>",
        "</head>", "<body>", f"<h1>{title}</h1>",
    ]
    if facts.workshop.description:
        parts.append(f"<p>{html.escape(facts.workshop.description)}</p>")
    for heading, items in _sections(facts):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append("<ul>")
        for item in items:
            text = html.escape(item)
            text = text.replace(html.escape(facts.url), f'<a href="{html.escape(facts.url)}">{html.escape(facts.url)}</a>')
            for name in list(facts.installers.values()) + [facts.ova_name]:
                text = text.replace(html.escape(name), f"<code>{html.escape(name)}</code>")
            parts.append(f"<li>{text}</li>")
        parts.append("</ul>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)

"""The participant guide on the drive: index.html (opened in a browser) and README.txt
(the same text for anyone who opens the plain file). One source: a list of sections."""

from __future__ import annotations

import html
from dataclasses import dataclass

from appliance.config import Workshop


@dataclass(frozen=True)
class GuideFacts:
    workshop: Workshop
    ova_name: str
    installers: dict[str, str]          # platform -> file name under virtualbox/

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
    if not installers:
        installers = ["Download VirtualBox from https://www.virtualbox.org/wiki/Downloads"]
    return [
        ("What is on this drive", [
            f"{facts.ova_name}: the workshop virtual machine (import it in VirtualBox).",
            "virtualbox/: VirtualBox installers for Windows, macOS and Linux.",
            "local-mode/: the notebooks and an offline Python package folder, to work without a VM.",
            "SHA256SUMS: checksums of every file (sha256sum -c SHA256SUMS checks them).",
        ]),
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
        ("Local mode instead of the VM", [
            "If the VM does not run on your computer (Apple Silicon Macs, no virtualization), work locally:",
            "Install Python 3.10 to 3.13 (python.org or your package manager).",
            "Copy the local-mode folder to your disk, open a terminal in it and run:  bash local/setup.bash",
            "then:  bash local/run-jupyter.bash   and open the address it prints.",
            "The setup installs from the wheels on this drive; no internet connection is needed.",
        ]),
        ("Troubleshooting", [
            "\"VT-x is disabled in the BIOS\" / \"AMD-V is disabled\" / the VM stops at once: turn on "
            "virtualization (Intel VT-x, AMD SVM) in your computer's firmware setup (press F2, F10, Del or "
            "Esc while it starts), save, and start again.",
            "Windows: a green turtle in the VirtualBox status bar or a very slow VM means Hyper-V is on "
            "(WSL2, Docker Desktop, Windows Sandbox, Memory integrity use it). Turn off \"Hyper-V\", "
            "\"Virtual Machine Platform\" and \"Windows Hypervisor Platform\" in Windows Features and "
            "restart, or use local mode.",
            "Apple Silicon Macs (M1 and later): the workshop VM is built for Intel/AMD (x86-64) "
            "processors and does not run there. Use local mode.",
            f"\"Address already in use\" or the page does not open: another program uses port "
            f"{w.ports.jupyter}. Close it (another Jupyter?), or in VirtualBox: Settings > Network > "
            f"Advanced > Port Forwarding, change the host port of 'jupyter' (for example to "
            f"{w.ports.jupyter + 1}) and open that port in the browser.",
            "Import fails with a checksum error: the copy is damaged; copy the .ova again from the drive.",
            "Not enough memory: close other programs, or lower the memory in Settings > System (not below 2048 MB).",
        ]),
    ]


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

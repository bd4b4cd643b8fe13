"""Run code on a kernel of a running Jupyter server from outside, as JupyterLab does: the
kernels REST API starts one, its websocket channels carry execute requests (Jupyter's
messaging protocol). Shared by the tiers that check a server they did not start in-process
(the VM, the single-user image)."""

from __future__ import annotations

import json
import uuid

import pytest
import requests
import websocket


def run_cells(base_url: str, token: str, sources: list[str], timeout: float = 900, kernel_name: str = "workshop") -> str:
    """Run `sources` in order on a new `kernel_name` kernel; returns what they printed, fails
    the test on an error. The kernel is shut down afterwards."""
    auth = {"Authorization": f"token {token}"}
    kernel = requests.post(f"{base_url}/api/kernels", headers=auth, json={"name": kernel_name}, timeout=60).json()
    ws = websocket.create_connection(
        f"ws{base_url.removeprefix('http')}/api/kernels/{kernel['id']}/channels", header=auth, timeout=timeout
    )
    try:
        output = []
        for source in sources:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                           "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": source, "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False},
            }))
            while True:
                message = json.loads(ws.recv())
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = message["msg_type"]
                if kind == "stream":
                    output.append(message["content"]["text"])
                elif kind == "error":
                    pytest.fail(f"cell failed:\n{source[:500]}\n" + "\n".join(message["content"]["traceback"]))
                elif kind == "execute_reply":
                    assert message["content"]["status"] == "ok"
                    break
    finally:
        ws.close()
        requests.delete(f"{base_url}/api/kernels/{kernel['id']}", headers=auth, timeout=60)
    return "".join(output)

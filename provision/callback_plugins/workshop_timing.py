"""Time per role and the count of changed tasks, for `appliance build`'s summary.

Like ansible.posix's profile_roles, but ansible-core only, and it also writes the numbers
as JSON to $APPLIANCE_ANSIBLE_REPORT when that is set, so the build can print them.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: workshop_timing
    type: aggregate
    short_description: time per role and changed-task count
    description: Prints time per role at the end of the play; writes JSON to $APPLIANCE_ANSIBLE_REPORT.
    requirements:
      - enable in ansible.cfg (callbacks_enabled)
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "workshop_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._roles: dict[str, float] = {}
        self._current: tuple[str, float] | None = None
        # seconds per task ("role : task"), so a slow re-run names its slow tasks
        self._tasks: dict[str, float] = {}
        self._task_name = ""
        self._changed: list[str] = []
        self._failed: list[str] = []
        self._started = time.monotonic()

    def _close_current(self) -> None:
        if self._current is not None:
            role, started = self._current
            seconds = time.monotonic() - started
            self._roles[role] = self._roles.get(role, 0.0) + seconds
            self._tasks[self._task_name] = self._tasks.get(self._task_name, 0.0) + seconds
            self._current = None

    def _task_start(self, task) -> None:
        self._close_current()
        role = task._role.get_name() if task._role else "(play)"
        self._task_name = task.get_name()
        self._current = (role, time.monotonic())

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._task_start(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._task_start(task)

    def _label(self, result) -> str:
        # get_name() already reads "role : task" for tasks in roles
        return result._task.get_name()

    def v2_runner_on_ok(self, result) -> None:
        if result._result.get("changed", False):
            self._changed.append(self._label(result))

    def v2_runner_item_on_ok(self, result) -> None:
        pass

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        if not ignore_errors:
            self._failed.append(self._label(result))

    def v2_playbook_on_stats(self, stats) -> None:
        self._close_current()
        total = time.monotonic() - self._started
        self._display.banner("TIME PER ROLE")
        for role, seconds in sorted(self._roles.items(), key=lambda item: -item[1]):
            self._display.display(f"{role:<20} {seconds:8.1f} s")
        self._display.display(f"{'total':<20} {total:8.1f} s; changed tasks: {len(self._changed)}")
        report = os.environ.get("APPLIANCE_ANSIBLE_REPORT")
        if report:
            hosts = sorted(stats.processed.keys())
            summary = {host: stats.summarize(host) for host in hosts}
            data = {
                "roles": self._roles,
                "total_seconds": total,
                "changed_tasks": self._changed,
                "failed_tasks": self._failed,
                "slowest_tasks": dict(sorted(self._tasks.items(), key=lambda item: -item[1])[:10]),
                "stats": summary,
            }
            temporary = report + ".tmp"
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
            os.replace(temporary, report)

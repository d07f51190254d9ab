"""``make run``'s process: run a command (``dagster dev``) and, when it is asked to stop, stop
every process it started, within seconds.

    python -m batch_pipelines.demo.supervise dagster dev -w workspace.yaml -p 3000

``dagster dev`` starts a webserver, a daemon and code servers. Ctrl-C reaches them all (they share
the terminal's process group), but a SIGTERM sent to ``make`` alone reaches nobody: make exits and
they run on, until each is SIGKILLed. So this process

- asks the kernel to send it SIGTERM when its parent (make) dies (Linux ``PR_SET_PDEATHSIG``);
- is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process whose parent exits is re-parented
  here, not to init, so it is still found among the descendants and stopped;
- on SIGINT, SIGTERM or SIGHUP, sends SIGTERM to every descendant (their graceful shutdown), and
  SIGKILLs whatever is left after :data:`GRACE_SECONDS`.

It exits with the command's status, or 128 + the signal that stopped it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["GRACE_SECONDS", "main"]

#: How long the descendants get to shut down on SIGTERM before they are SIGKILLed: dagster dev's
#: webserver and daemon stop within a second or two; its code server may not stop at all.
GRACE_SECONDS = 5.0

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        raise SystemExit("usage: python -m batch_pipelines.demo.supervise COMMAND [ARGS...]")
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the death signal was armed
        stopping.append(signal.SIGTERM)

    child = subprocess.Popen(command)
    while not stopping and child.poll() is None:
        _reap_orphans(but=child.pid)
        time.sleep(0.2)
    _stop_descendants(but=child.pid)
    status = child.wait()
    return 128 + stopping[0] if stopping else status


def _stop_descendants(*, but: int) -> None:
    """SIGTERM to every descendant, SIGKILL to those alive after the grace period; orphans reaped
    (``but`` the command, which its Popen waits for)."""
    _signal_all(_descendants(), signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while (left := _descendants()) and time.monotonic() < deadline:
        _reap_orphans(but=but)
        time.sleep(0.1)
    _signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + GRACE_SECONDS  # a SIGKILLed process ends at once, bar a stuck disk
    while _descendants() and time.monotonic() < deadline:
        _reap_orphans(but=but)
        time.sleep(0.05)


def _descendants() -> list[int]:
    """Live processes below this one (zombies are dead: they only wait to be reaped)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The fields after the command's closing parenthesis: state, ppid, ...
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry.name))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _reap_orphans(*, but: int) -> None:
    """Collect the exit status of re-parented processes that ended, ``but`` one (the command)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if state == "Z" and int(ppid) == os.getpid() and int(entry.name) != but:
                try:
                    os.waitpid(int(entry.name), os.WNOHANG)
                except ChildProcessError:
                    pass


def _prctl(option: int, value: int) -> None:
    """Linux's prctl; elsewhere nothing (a SIGTERM to make alone then leaves the command running)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, value, 0, 0, 0)


if __name__ == "__main__":
    sys.exit(main())

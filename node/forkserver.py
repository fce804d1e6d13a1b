"""``python -m node.forkserver``: import torch and the node once, then fork one fl-node per request.

The console starts this once for its local nodes (``[local] spawn``); every node is a fork of a
process that has already paid for torch, the workflow's modules and ``torch._dynamo`` (which
torch.optim imports on the first optimiser, ~1 s), instead of four interpreters importing the
same modules at once on two cores. Each node is still a real process with its own pid: the
console signals it directly, and this server reaps it and reports how it ended.

Fork safety: before any fork this process holds no zmq context, no socket, no thread (torch's
intra-op pool starts on the first parallel op, and ``OMP_NUM_THREADS=1`` keeps OpenMP from
starting one at import): only imported modules. The check (``threads`` in the ready line) counts
``/proc/self/task``. A child resets its signal handlers, follows the server's death
(``PR_SET_PDEATHSIG``), points stdout/stderr at its log, runs ``node.cli.main`` (which makes the
node's zmq context, sockets and torch threads itself), and leaves with ``os._exit``: it runs no
inherited ``atexit`` handler and skips the ~0.7 s interpreter teardown torch costs.

Protocol, one JSON object per line:

- stdin: ``{"id": N, "name": NAME, "argv": [fl-node arguments], "log": PATH}`` to start a node.
- stdout: ``{"ready": {"pid", "threads", "import_s"}}`` once imported;
  ``{"started": N, "name": NAME, "pid": PID}`` per fork; ``{"exited": PID, "code": CODE}`` when a
  child ends (CODE as ``Popen.returncode``: the exit status, or ``-signal``).

End of stdin, SIGTERM or the console's death (``PR_SET_PDEATHSIG``) stop it: it SIGTERMs its
children, waits up to 5 s, SIGKILLs the rest, reaps them all and exits. SIGINT is ignored here:
the console decides when its nodes stop (a terminal's Ctrl+C reaches the nodes directly).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import sys
import time
import traceback
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
STOP_GRACE = 5.0
_FORK_BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
NODE_TITLE = b"fl-node"  # the children's process name (/proc/PID/comm), so `ps` tells them apart


def _prctl(option: int, value: int | bytes) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(option, value, 0, 0, 0)
    except OSError:
        pass


def preload() -> None:
    """Everything a node imports before its first round, imported once here."""
    import torch._dynamo  # noqa: F401 - torch.optim's first optimiser imports it

    import node.cli  # noqa: F401 - torch, zmq, the workflow


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


class ForkServer:
    def __init__(self) -> None:
        self.children: dict[int, str] = {}
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    def emit(self, message: dict[str, Any]) -> None:
        try:
            os.write(1, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # the console is gone; we stop on stdin's end or its death signal

    def serve(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        buffer = b""
        while not self.stopping:
            readable, _, _ = select.select([0, self._wake_r], [], [], 1.0)
            if self._wake_r in readable:
                self._drain_wakeups()
            self.reap()
            if 0 in readable and not self.stopping:
                chunk = os.read(0, 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.spawn(json.loads(line))
        self.stop_children()

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def spawn(self, request: dict[str, Any]) -> None:
        threads = thread_count()
        if threads != 1:
            print(f"forkserver: forking with {threads} threads alive", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        # A signal for the new node must not run this server's handlers in it (a SIGTERM would
        # be swallowed by ``on_term``'s copy): blocked across the fork, unblocked in the child
        # once its handlers are the defaults again, so it then stops the node as it should.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._child(request, parent, mask)
            except SystemExit as exc:  # argparse's usage errors, a node's sys.exit
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - the child must never return into the server
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.children[pid] = str(request.get("name", ""))
        self.emit({"started": request.get("id"), "name": request.get("name"), "pid": pid})

    def _child(self, request: dict[str, Any], parent: int, mask: set[signal.Signals]) -> int:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(self._wake_r)
        os.close(self._wake_w)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the server died before the line above
            return 1
        _prctl(_PR_SET_NAME, NODE_TITLE)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        argv = [str(a) for a in request["argv"]]
        sys.argv = ["fl-node", *argv]
        from node.cli import main

        return main(argv)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.pop(pid, None)
            self.emit({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    def stop_children(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)
            self.emit({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def main() -> int:
    server_stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal server_stop
        server_stop = True
        if server is not None:
            server.stopping = True

    server: ForkServer | None = None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    preload()
    gc.collect()
    gc.freeze()  # the imported modules' objects stay shared with the children, untouched
    server = ForkServer()
    server.stopping = server_stop
    server.emit(
        {
            "ready": {
                "pid": os.getpid(),
                "threads": thread_count(),
                "import_s": round(time.monotonic() - started, 3),
            }
        }
    )
    server.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A network lab: nodes in their own network namespaces, on one bridge, links rate-limited with tc.

``NetLab(nodes=4, rate_mbit=50)`` builds, on this machine (root, iproute2):

- a *hub* namespace ``fl<tag>-hub`` holding a Linux bridge ``br0`` with the lab's first address,
  ``10.213.X.1/24`` (X is drawn at random per lab). The console runs there, bound to that
  address: "the console on the bridge's address".
- per node ``i`` a namespace ``fl<tag>-n<i>`` with ``eth0`` at ``10.213.X.(i+2)/24`` and ``lo``
  up, joined to the bridge by a veth pair whose other end (``v<i>``) lives in the hub namespace.

The root namespace gets no interface and no address: everything lives in namespaces the lab
created, and traffic only flows between them. Two labs may coexist (each has its own hub, so
even equal subnets could not clash; X still differs between the labs of one process).

**Rate limit.** ``rate_mbit`` (None: unlimited) is applied both ways with a token bucket
filter (tbf): on the egress of the node's ``eth0`` (the node's uplink) and on the egress of the
hub's ``v<i>`` (its downlink), so every node has its own ``rate_mbit`` up and down, as a site
behind its own access link. The bucket settings (:func:`tbf_args`):

- ``burst`` = max(64 KiB, 4 ms of the rate): at least a 64 KiB GSO super-packet, so TCP's
  segmentation offload is not cut back into MTU packets, and at least what the link sends
  between two timer ticks at HZ=250, so coarse timers do not cap the rate below its setting;
- ``latency`` 50 ms: the queue holds 50 ms of traffic beyond the bucket. With no propagation
  delay the bandwidth-delay product is tiny, so a deeper queue would only add bufferbloat;
  the drops when it overflows are what TCP's congestion control expects, and cost it little.

There is **no added latency or loss**: this kernel has no ``netem``. A 20 Mbit/s link measures
19.2 Mbit/s of TCP payload end to end (``python -m bench.netlab`` checks it): tbf counts whole
Ethernet frames, and 1448 payload bytes per 1514-byte frame is 95.6 %.

Lifetime: ``with NetLab(...) as lab:`` tears everything down on exit, on an exception, on
SIGINT/SIGTERM (while a lab is alive this module handles both, tears every lab down, then
hands the signal to the handler that was there before) and at interpreter exit.
:meth:`NetLab.teardown` reaps the processes started in the lab's namespaces, then deletes the
namespaces (which takes their veths, the bridge and the qdiscs with them).
:func:`cleanup_stale` removes namespaces a crashed earlier run left behind, by name.
:func:`lab_unavailable` says why no lab can be built here (tests skip with it).

``python -m bench.netlab [--rate 20] [--seconds 3]``: builds a 2-node lab, measures TCP
throughput node 0 -> node 1 limited and unlimited (bench/throughput.py), prints it and tears
the lab down.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from bench.throughput import measure_mbit

log = logging.getLogger(__name__)

PREFIX = "fl"
"""Every lab namespace is named ``fl<tag>-hub`` or ``fl<tag>-n<i>``."""
DEFAULT_TAG_PREFIX = "nl"
"""Default tags are ``nl<pid>x<seq>``: :func:`cleanup_stale` keeps a live process's labs."""
SUBNET = "10.213"
BRIDGE = "br0"
NODE_LINK = "eth0"
MAX_NODES = 253
COMMAND_TIMEOUT = 20.0
"""Seconds one ``ip``/``tc`` command may take."""
REAP_TIMEOUT = 3.0
"""Seconds a process in the lab gets between SIGTERM and SIGKILL at teardown."""
TBF_MIN_BURST = 64 * 1024
TBF_TIMER_HZ = 250
TBF_LATENCY_MS = 50

_TAG = re.compile(r"[A-Za-z0-9]{1,40}")
_NAME = re.compile(r"(?P<tag>[A-Za-z0-9]{1,40})-(?:hub|n\d{1,3})")
_DEFAULT_TAG = re.compile(rf"{DEFAULT_TAG_PREFIX}(?P<pid>\d+)x\d+")
_SEQ = itertools.count()


class LabError(RuntimeError):
    """A lab could not be built (or a command in it failed): what ran and what it said."""


# ----------------------------------------------------------------------------- commands


def _command(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip``/``tc``, bounded; a failure raises :class:`LabError` with its stderr."""
    try:
        done = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def namespaces() -> list[str]:
    """The names of this machine's named network namespaces (``ip netns list``)."""
    out = _command(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids_in(ns: str) -> list[int]:
    done = _command(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_in(ns: str) -> None:
    """SIGKILL every process still in ``ns`` (all started in the lab), by pid."""
    for pid in _pids_in(ns):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def tbf_burst(rate_mbit: float) -> int:
    """The token bucket's size in bytes for a ``rate_mbit`` link: a GSO packet, a timer tick."""
    if not rate_mbit > 0:
        raise ValueError(f"rate_mbit must be > 0, got {rate_mbit}")
    return max(TBF_MIN_BURST, int(rate_mbit * 1e6 / 8 / TBF_TIMER_HZ))


def tbf_args(rate_mbit: float) -> list[str]:
    """The tbf parameters for a ``rate_mbit`` link (see the module's docstring for why)."""
    return [
        "rate",
        f"{int(rate_mbit * 1000)}kbit",
        "burst",
        str(tbf_burst(rate_mbit)),
        "latency",
        f"{TBF_LATENCY_MS}ms",
    ]


# ----------------------------------------------------------------------------- signals, exit

_live: list[NetLab] = []
_saved_handlers: dict[int, Any] = {}
_lock = threading.RLock()
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Tear every lab down, then do what the handler before ours would have done."""
    previous = _saved_handlers.get(signum)
    _teardown_all()  # restores the previous handlers too
    if callable(previous):
        previous(signum, frame)
    else:  # SIG_DFL (or None: set from C): let the default action happen
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _register(lab: NetLab) -> None:
    """Count ``lab`` as live; the first live lab installs the signal handlers (main thread)."""
    with _lock:
        if not _saved_handlers and threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                previous = signal.getsignal(sig)
                if previous == signal.SIG_IGN:  # ignored (a background job's SIGINT): keep so
                    continue
                _saved_handlers[sig] = previous
                signal.signal(sig, _on_signal)
        _live.append(lab)


def _unregister(lab: NetLab) -> None:
    """``lab`` is gone; the last one restores the handlers that were there before (main thread)."""
    with _lock:
        if lab in _live:
            _live.remove(lab)
        if _live or not _saved_handlers:
            return
        if threading.current_thread() is threading.main_thread():
            for sig, previous in _saved_handlers.items():
                if signal.getsignal(sig) is _on_signal:  # someone else's since: leave it
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            _saved_handlers.clear()


def _teardown_all() -> None:
    """Tear down every live lab (at a signal and at interpreter exit)."""
    for lab in list(_live):
        lab.teardown()


atexit.register(_teardown_all)


# ----------------------------------------------------------------------------- the lab


class NetLab:
    """Nodes in their own network namespaces on one bridge (see the module's docstring).

    ``nodes``: how many node namespaces (1..253). ``rate_mbit``: each node's link rate, both
    ways (None: unlimited). ``tag``: names the namespaces ``fl<tag>-…`` (letters and digits;
    default ``nl<pid>x<n>``, unique per process). Built on construction; a failure tears down
    what was built and raises :class:`LabError`.
    """

    def __init__(self, nodes: int, rate_mbit: float | None = None, tag: str | None = None) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be in 1..{MAX_NODES}, got {nodes}")
        if rate_mbit is not None and not rate_mbit > 0:
            raise ValueError(f"rate_mbit must be > 0 or None, got {rate_mbit}")
        tag = tag if tag is not None else f"{DEFAULT_TAG_PREFIX}{os.getpid()}x{next(_SEQ)}"
        if not _TAG.fullmatch(tag):
            raise ValueError(f"tag must be 1-40 letters or digits, got {tag!r}")
        self.tag = tag
        self.rate_mbit = rate_mbit
        with _lock:
            taken = {lab.subnet for lab in _live}
            free = [f"{SUBNET}.{x}" for x in range(1, 255) if f"{SUBNET}.{x}" not in taken]
            self.subnet = random.SystemRandom().choice(free)
        self.hub_ns = f"{PREFIX}{tag}-hub"
        self.hub_address = f"{self.subnet}.1"
        self.node_ns = [f"{PREFIX}{tag}-n{i}" for i in range(nodes)]
        self.node_address = [f"{self.subnet}.{i + 2}" for i in range(nodes)]
        self._children: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._closed = False
        _register(self)
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        log.info("%s", self.describe())

    # ------------------------------------------------------------------ building

    def _add_ns(self, ns: str) -> None:
        if ns in namespaces():
            raise LabError(f"namespace {ns} exists already (a stale lab? see cleanup_stale)")
        _command(["ip", "netns", "add", ns])
        self._created.append(ns)

    def _build(self) -> None:
        hub = self.hub_ns
        self._add_ns(hub)
        _command(["ip", "-n", hub, "link", "set", "lo", "up"])
        _command(["ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge"])
        _command(["ip", "-n", hub, "addr", "add", f"{self.hub_address}/24", "dev", BRIDGE])
        _command(["ip", "-n", hub, "link", "set", BRIDGE, "up"])
        for i, (ns, address) in enumerate(zip(self.node_ns, self.node_address, strict=True)):
            self._add_ns(ns)
            # Made inside the hub namespace, its peer moved straight into the node's: no end of
            # the pair ever exists in the root namespace.
            port = f"v{i}"
            _command(
                ["ip", "-n", hub, "link", "add", port, "type", "veth"]
                + ["peer", "name", NODE_LINK, "netns", ns]
            )
            _command(["ip", "-n", hub, "link", "set", port, "master", BRIDGE])
            _command(["ip", "-n", hub, "link", "set", port, "up"])
            _command(["ip", "-n", ns, "link", "set", "lo", "up"])
            _command(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", NODE_LINK])
            _command(["ip", "-n", ns, "link", "set", NODE_LINK, "up"])
        self.set_rate(self.rate_mbit)

    def set_rate(self, rate_mbit: float | None) -> None:
        """Limit every node's link to ``rate_mbit`` both ways (None: lift the limits)."""
        if rate_mbit is not None and not rate_mbit > 0:
            raise ValueError(f"rate_mbit must be > 0 or None, got {rate_mbit}")
        for i, ns in enumerate(self.node_ns):
            for where, dev in ((ns, NODE_LINK), (self.hub_ns, f"v{i}")):
                if rate_mbit is None:
                    _command(["tc", "-n", where, "qdisc", "del", "dev", dev, "root"], check=False)
                else:
                    _command(
                        ["tc", "-n", where, "qdisc", "replace", "dev", dev, "root", "tbf"]
                        + tbf_args(rate_mbit)
                    )
        self.rate_mbit = rate_mbit

    # ------------------------------------------------------------------ using

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the lab: the hub first, then the nodes."""
        return [self.hub_ns, *self.node_ns]

    @property
    def closed(self) -> bool:
        """True once :meth:`teardown` ran: nothing of the lab is left."""
        return self._closed

    def exec_args(self, ns: str) -> list[str]:
        """The command prefix that runs a program inside ``ns`` (one of this lab's)."""
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not a namespace of this lab ({self.namespaces})")
        if self._closed:
            raise LabError("the lab is torn down")
        return ["ip", "netns", "exec", ns]

    def popen(self, ns: str, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside ``ns``; :meth:`teardown` reaps it if it is still running.

        ``ip netns exec`` execs the program, so the Popen's pid is the program's own.
        """
        process = subprocess.Popen([*self.exec_args(ns), *args], **kw)
        self._children.append(process)
        return process

    def run(self, ns: str, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``args`` inside ``ns`` to the end (``timeout`` defaults to 60 s)."""
        kw.setdefault("timeout", 60.0)
        return subprocess.run([*self.exec_args(ns), *args], **kw)

    def link_bytes(self, node: int) -> tuple[int, int]:
        """(received, sent) bytes so far on node ``node``'s link (its ``eth0``)."""
        done = _command(["ip", "-n", self.node_ns[node], "-s", "-j", "link", "show", NODE_LINK])
        stats = json.loads(done.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def describe(self) -> str:
        """One paragraph: the topology, the addresses and the links."""
        n = len(self.node_ns)
        if self.rate_mbit is None:
            link = "unlimited links"
        else:
            link = (
                f"every link {self.rate_mbit:g} Mbit/s each way (tc tbf on both veth ends, "
                f"burst {tbf_burst(self.rate_mbit) // 1024} KiB, queue {TBF_LATENCY_MS} ms)"
            )
        return (
            f"{n} node namespaces {self.node_ns[0]}..{self.node_ns[-1]} "
            f"({self.node_address[0]}..{self.node_address[-1]}) on a bridge in {self.hub_ns} "
            f"({self.hub_address}/24); {link}; no added latency or loss (no netem in this kernel)"
        )

    # ------------------------------------------------------------------ tearing down

    def teardown(self) -> None:
        """Reap the lab's processes and delete its namespaces. Idempotent; never raises."""
        with _lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._reap_children()
            for ns in reversed(self._created):  # nodes first, the hub last
                try:
                    _kill_in(ns)
                    _command(["ip", "netns", "del", ns])
                except LabError as exc:
                    log.warning("netlab teardown: %s", exc)
            self._created.clear()
        finally:
            _unregister(self)

    def _reap_children(self) -> None:
        alive = [p for p in self._children if p.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in alive:
            try:
                process.wait(timeout=REAP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=REAP_TIMEOUT)
        self._children.clear()

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def __repr__(self) -> str:
        state = "torn down" if self._closed else f"{len(self.node_ns)} nodes"
        return f"NetLab({self.tag!r}, {state}, rate_mbit={self.rate_mbit})"


# ----------------------------------------------------------------------------- housekeeping


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX + DEFAULT_TAG_PREFIX) -> list[str]:
    """Delete namespaces an earlier, crashed lab left behind; returns the names deleted.

    Only names of the lab's own form are touched: ``prefix`` + letters/digits + ``-hub`` or
    ``-n<i>``, and ``prefix`` must start with ``fl``. A lab still alive in this process is kept,
    and so is one whose default tag (``nl<pid>x<n>``) names a live process. Processes left
    inside a stale namespace (started by that lab) are killed first.
    """
    if not prefix.startswith(PREFIX):
        raise ValueError(f"prefix must start with {PREFIX!r}: only the lab's names are touched")
    with _lock:
        ours = {ns for lab in _live for ns in lab.namespaces}
    removed = []
    for ns in namespaces():
        if not ns.startswith(prefix) or ns in ours:
            continue
        name = _NAME.fullmatch(ns[len(PREFIX) :])
        if name is None:
            continue
        owner = _DEFAULT_TAG.fullmatch(name["tag"])
        if owner is not None and _pid_alive(int(owner["pid"])):
            continue
        try:
            _kill_in(ns)
            _command(["ip", "netns", "del", ns])
            removed.append(ns)
        except LabError as exc:
            log.warning("netlab cleanup: %s", exc)
    return removed


@functools.cache
def lab_unavailable() -> str | None:
    """Why no lab can be built on this machine (None: it can). Probes once per process."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "building a network lab needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (iproute2)"
    try:
        with NetLab(1, rate_mbit=10.0) as probe:
            done = probe.run(probe.node_ns[0], ["true"], capture_output=True, text=True)
            if done.returncode != 0:
                return f"cannot run a program in a network namespace: {done.stderr.strip()}"
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot build a network lab here: {exc}"
    return None


# ----------------------------------------------------------------------------- self-check


def main(argv: list[str] | None = None) -> int:
    """Build a 2-node lab, measure node 0 -> node 1 limited and unlimited, tear it down."""
    p = argparse.ArgumentParser(prog="python -m bench.netlab", description=main.__doc__)
    p.add_argument("--rate", type=float, default=20.0, help="link rate, Mbit/s (default 20)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements per setting (median)")
    args = p.parse_args(argv)
    why = lab_unavailable()
    if why is not None:
        print(f"netlab: unavailable: {why}")
        return 1
    removed = cleanup_stale()
    if removed:
        print(f"netlab: removed stale namespaces {removed}")
    with NetLab(2, rate_mbit=args.rate) as lab:
        print(lab.describe())
        rows = []
        for rate in (args.rate, None):
            lab.set_rate(rate)
            runs = sorted(
                measure_mbit(
                    lab, lab.node_ns[0], lab.node_ns[1], lab.node_address[1], seconds=args.seconds
                )
                for _ in range(args.repeats)
            )
            rows.append((rate, runs))
    print(f"{'link':>12} {'measured, median':>18} {'of the rate':>12}  runs (Mbit/s)")
    for rate, runs in rows:
        median = runs[len(runs) // 2]
        label = "unlimited" if rate is None else f"{rate:g} Mbit/s"
        share = "" if rate is None else f"{median / rate:.0%}"
        shown = " ".join(f"{r:.1f}" for r in runs)
        print(f"{label:>12} {median:>13.1f} Mbit/s {share:>12}  {shown}")
    print(
        "(TCP payload; tbf counts whole Ethernet frames, so 1448/1514 = 95.6% of the rate is the "
        "most a saturated link can show)"
    )
    print(f"torn down; namespaces left: {[ns for ns in namespaces() if ns in lab.namespaces]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""fl-node: a headless participant of a federated run.

    fl-node --connect tcp://HOST:PORT --run-id ID [--name NAME] [--data PATH]
            [--curve-key NODE.key_secret --server-key CONSOLE.key]
    fl-node data.toml [--name NAME]

It joins the console, follows its broadcasts and runs the learning workflow until the run is
Finished (exit 0). A refused join prints the reason and exits 3. Ctrl+C / SIGTERM leave the
run cleanly (exit 0 after telling the console).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import sys
import zlib
from pathlib import Path

import tomlkit
import zmq.asyncio

from node.attacks import parse_attack
from node.datafetch import DataFetchError
from node.device import DeviceError
from node.gossip import GossipService
from node.link import ConsoleLink, ConsoleUnreachable, JoinRejected
from node.privacy import PrivacyError
from node.security import NodeSecurity, load_node_keys
from node.stages import StartLearningStage, follow_gossip
from node.workflow import LearningWorkflow, NodeContext
from transport.exit_codes import ExitCode, exit_code_help
from transport.keys import KeyFileError
from transport.net import LOOPBACK, is_wildcard
from transport.spec import DEVICES, is_device

log = logging.getLogger("fl-node")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fl-node",
        description="Join a federated run as a node.",
        epilog=exit_code_help(
            ExitCode.OK,
            ExitCode.USAGE,
            ExitCode.REJECTED,
            ExitCode.UNREACHABLE,
            ExitCode.CANNOT_TRAIN,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "config", nargs="?", type=Path, help="data.toml: take the address and run_id from it"
    )
    p.add_argument("--connect", help="the console's control endpoint, e.g. tcp://10.0.0.5:5556")
    p.add_argument("--run-id", help="the run to join (must match the console's)")
    p.add_argument("--name", help="this node's id (default: HOSTNAME-PID)")
    p.add_argument("--data", type=Path, help="train on this data file instead of the run's source")
    p.add_argument(
        "--gossip-host",
        default="127.0.0.1",
        help="address to bind the gossip socket on and announce to peers (default 127.0.0.1); "
        "with 0.0.0.0 (every interface) peers are told the address the console sees this node at",
    )
    p.add_argument(
        "--join-timeout",
        type=float,
        default=None,
        help="give up if the console is unreachable this long",
    )
    p.add_argument(
        "--curve-key",
        type=Path,
        metavar="NODE.key_secret",
        help="CURVE: this node's secret key file (from fl-console keygen); needs --server-key",
    )
    p.add_argument(
        "--server-key",
        type=Path,
        metavar="CONSOLE.key",
        help="CURVE: the console's public key file (console.key from fl-console keygen)",
    )
    p.add_argument(
        "--attack",
        type=parse_attack,
        metavar="scale:S|signflip[:S]",
        help="robustness testing only: send a corrupted update (a byzantine trainer)",
    )
    p.add_argument(
        "--device",
        type=_device,
        metavar="auto|cpu|cuda|cuda:N|mps",
        help="train on this device instead of the run's [learning] device (aggregation, "
        "hashing and checkpoints stay on the CPU in float32)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _device(value: str) -> str:
    if not is_device(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: must be one of {' | '.join(DEVICES)} (N: the GPU's index)"
        )
    return value


def _from_config(path: Path) -> tuple[str, str]:
    """Read just the run id and control endpoint from a data.toml (the console validates the rest)."""
    doc = tomlkit.parse(path.read_text()).unwrap()
    server = doc.get("server", {})
    host = server.get("host", "127.0.0.1")
    if is_wildcard(host):
        host = LOOPBACK
    return str(
        doc.get("run_id", "digits-demo")
    ), f"tcp://{host}:{int(server.get('control_port', 5556))}"


async def _cancelled(task: asyncio.Task[None], within: float = 5.0) -> None:
    """Cancel ``task`` and wait (bounded) until it has stopped, before its sockets close.

    The cancel is repeated: on Python 3.11 ``asyncio.wait_for`` can swallow a cancellation
    that arrives as its inner wait completes, and the workflow would go on, into closed links.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.debug("the workflow ended with %r while stopping", task.exception())


async def run_node(
    args: argparse.Namespace,
    node_id: str,
    run_id: str,
    endpoint: str,
    security: NodeSecurity | None = None,
) -> int:
    """Join the run at ``endpoint`` and take part until it finishes or we are stopped."""
    ctx = zmq.asyncio.Context()
    gossip = GossipService(
        node_id=node_id,
        run_id=run_id,
        context=ctx,
        bind_host=args.gossip_host,
        security=security,
    )
    link: ConsoleLink | None = None
    leave_reason = "shutdown"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        gossip.start()
        link = ConsoleLink(
            node_id=node_id,
            run_id=run_id,
            control_endpoint=endpoint,
            gossip_endpoint=gossip.endpoint,
            context=ctx,
            security=security.console() if security is not None else None,
        )
        link.gossip_stats = gossip.stats  # its refusals go to the console with heartbeats
        if security is not None:
            link.on_snapshot.append(security.follow)  # peers' keys, for gossip
        joining = asyncio.create_task(link.start(max_wait=args.join_timeout))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({joining, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            joining.cancel()
            return ExitCode.OK
        stopping.cancel()
        spec = joining.result()
        seed = zlib.crc32(f"{spec.seed}:{node_id}".encode())
        nctx = NodeContext(
            node_id=node_id,
            spec=spec,
            link=link,
            gossip=gossip,
            data_path=args.data,
            rng=random.Random(seed),
            attack=args.attack,
            device_name=args.device,
        )
        follow_gossip(gossip, nctx)
        import torch

        torch.set_num_threads(spec.learning.torch_threads)
        workflow = asyncio.create_task(LearningWorkflow(nctx, StartLearningStage()).run())
        stopping = asyncio.create_task(stop.wait())
        removed = asyncio.create_task(link.removed.wait())
        done, _ = await asyncio.wait(
            {workflow, stopping, removed}, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in (stopping, removed):
            waiter.cancel()
        if removed in done and workflow not in done:  # kicked or banned: leave at once
            await _cancelled(workflow)
            raise JoinRejected(f"removed from the run by the console: {link.removal}")
        if workflow in done:
            try:
                workflow.result()  # re-raise a crash
            except (DeviceError, PrivacyError) as exc:  # at warmup: tell the operator why
                print(f"fl-node: cannot train: {exc}", file=sys.stderr)
                leave_reason = f"cannot train: {exc}"
                return ExitCode.CANNOT_TRAIN
            log.info("run finished; stages: %s", " ".join(nctx.history[-8:]))
            return ExitCode.OK
        log.info("stopping on signal")
        await _cancelled(workflow)
        return ExitCode.OK
    except JoinRejected as exc:
        print(f"fl-node: {exc}", file=sys.stderr)
        return ExitCode.REJECTED
    except (ConsoleUnreachable, DataFetchError) as exc:
        print(f"fl-node: {exc}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    finally:
        # Leaving now. A stop request that comes late (the console stopping its nodes just as
        # this one finishes) must not land while asyncio closes its self-pipe: it would print
        # "Exception ignored ... Bad file descriptor". The rest of the way out is bounded.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        if link is not None:
            finished = link.latest is not None and link.latest.snapshot.state.value == "Finished"
            await link.close(leave=not (finished or link.removed.is_set()), reason=leave_reason)
        await gossip.close()
        ctx.destroy(linger=0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.config is not None:
        if not args.config.exists():
            print(f"fl-node: {args.config}: no such file", file=sys.stderr)
            return ExitCode.USAGE
        run_id, endpoint = _from_config(args.config)
    else:
        if not args.connect or not args.run_id:
            print("fl-node: give a data.toml, or both --connect and --run-id", file=sys.stderr)
            return ExitCode.USAGE
        run_id, endpoint = args.run_id, args.connect
    run_id = args.run_id or run_id
    endpoint = args.connect or endpoint
    node_id = args.name or f"{socket.gethostname()}-{os.getpid()}"
    if (args.curve_key is None) != (args.server_key is None):
        print("fl-node: CURVE needs both --curve-key and --server-key", file=sys.stderr)
        return ExitCode.USAGE
    security = None
    if args.curve_key is not None:
        try:
            security = NodeSecurity(load_node_keys(args.curve_key, args.server_key))
        except KeyFileError as exc:
            print(f"fl-node: {exc}", file=sys.stderr)
            return ExitCode.USAGE
    return asyncio.run(run_node(args, node_id, run_id, endpoint, security))


if __name__ == "__main__":
    raise SystemExit(main())

"""``fl-console``: the operator's command.

``fl-console data.toml --check`` validates the config and prints what the run will be;
``fl-console keygen DIR`` writes CURVE keys for ``[security]`` (:mod:`console.keygen`). Every
mode starts by loading the config; :func:`main` picks the mode from the parsed arguments
(:func:`choose_mode`) and calls its handler from :data:`MODES`. To add a mode, add its
arguments in :func:`build_parser`, a handler ``(args, config) -> int``, and a line in
:func:`choose_mode`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.text import Text

from console.config import Config, ConfigError, format_issues, load_config
from console.coordinator import MAX_AUTO_WITNESSES
from transport.exit_codes import ExitCode, exit_code_help
from transport.keys import KeyFileError, read_key_dir
from transport.net import is_loopback

Handler = Callable[[argparse.Namespace, Config], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-console",
        description="Run and watch a federated learning run described by a data.toml file.",
        epilog="fl-console keygen DIR [--nodes N]: make CURVE keys for [security] curve = true\n"
        "fl-console ctl data.toml VERB: status, pause, resume, end-phase, kick, unban, set\n"
        "fl-console attach data.toml: the console's screen for a run that is already running\n\n"
        + exit_code_help(ExitCode.OK, ExitCode.RUN_FAILED, ExitCode.USAGE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, nargs="?", help="the run's config file (data.toml)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print a summary of the run and exit (0 valid, 2 not)",
    )
    parser.add_argument(
        "--headless",
        action="store_true",
        help="run with no screen: log to stderr, show a progress bar, exit 0 when Finished",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        metavar="PATH",
        help="write a JSON summary of the run here at the end",
    )
    parser.add_argument(
        "--metrics-csv",
        type=Path,
        metavar="PATH",
        help="with --headless: write one CSV row per round and client here at the end",
    )
    parser.add_argument(
        "--spawn",
        type=int,
        metavar="N",
        help="start N local fl-node processes (overrides [local] spawn)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run from its last checkpoint"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="where the event log and node logs go (default: runs/RUN_ID)",
    )
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="EVENTS",
        help="replay a recorded events.jsonl in the console",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def choose_mode(args: argparse.Namespace) -> str:
    if args.check:
        return "check"
    if args.headless:
        return "headless"
    return "interactive"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keygen"]:  # a subcommand (a config file called keygen: ./keygen)
        from console.keygen import main as keygen

        return keygen(argv[1:])
    if argv[:1] == ["ctl"]:
        from console.remote.ctl import main as ctl

        return ctl(argv[1:])
    if argv[:1] == ["attach"]:
        from console.remote.attach import main as attach

        return attach(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or bad arguments (argparse has printed why)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    if args.replay is not None:
        return run_replay_mode(args)
    if args.config is None:
        _stderr().print(
            "fl-console: give a config file (data.toml), or --replay EVENTS", markup=False
        )
        return ExitCode.USAGE
    if args.spawn is not None and args.spawn < 0:
        _stderr().print("fl-console: --spawn must be >= 0", markup=False)
        return ExitCode.USAGE
    if args.metrics_csv is not None and not args.headless:
        _stderr().print("fl-console: --metrics-csv needs --headless", markup=False)
        return ExitCode.USAGE
    config = load_or_report(args.config)
    if config is None:
        return ExitCode.USAGE
    return MODES[choose_mode(args)](args, config)


def load_or_report(path: Path) -> Config | None:
    """The config, or None after printing every problem with it to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        errors = _stderr()
        errors.print(format_issues(exc.issues, path), markup=False, highlight=False)
        count = len(exc.issues)
        errors.print(
            Text(f"{path}: {count} error{'s' if count != 1 else ''}; nothing was started.")
        )
        return None


def run_check(args: argparse.Namespace, config: Config) -> int:
    out = Console(soft_wrap=True, highlight=False)
    out.print(Text.assemble((f"{args.config}", "bold"), " is valid", style="green"))
    for label, value in summary(config):
        out.print(Text.assemble((f"  {label:<13}", "bold"), value))
    return ExitCode.OK


def _run_dir(args: argparse.Namespace, config: Config) -> Path:
    return args.run_dir if args.run_dir is not None else Path("runs") / config.run_id


def _spawn(args: argparse.Namespace, config: Config) -> int:
    return config.local.spawn if args.spawn is None else args.spawn


def run_headless_mode(args: argparse.Namespace, config: Config) -> int:
    from console.server.spawn import LocalNodes

    # The nodes' fork server imports torch (~2 s) while the console imports and binds.
    nodes = LocalNodes(
        run_id=config.run_id, control_endpoint="", log_dir=_run_dir(args, config) / "nodes"
    )
    if _spawn(args, config):
        nodes.prepare()

    import asyncio
    import logging

    from rich.logging import RichHandler

    from console.headless import run_headless
    from console.server.checkpoint import CheckpointError
    from console.server.spawn import DataServerError

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=_stderr(), show_path=False)],
    )
    try:
        return asyncio.run(
            run_headless(
                config,
                spawn=_spawn(args, config),
                run_dir=_run_dir(args, config),
                summary_path=args.summary,
                metrics_csv=args.metrics_csv,
                resume=args.resume,
                nodes=nodes,
            )
        )
    except (CheckpointError, DataServerError, KeyFileError) as exc:  # a key file gone since --check
        _stderr().print(f"fl-console: {exc}", markup=False)
        return ExitCode.USAGE
    except OSError as exc:  # most often: a port already in use
        _stderr().print(f"fl-console: {exc}", markup=False)
        return ExitCode.USAGE


def run_interactive(args: argparse.Namespace, config: Config) -> int:
    from console.app import run_app

    return run_app(
        config, spawn=_spawn(args, config), run_dir=_run_dir(args, config), resume=args.resume
    )


def run_replay_mode(args: argparse.Namespace) -> int:
    if not args.replay.exists():
        _stderr().print(f"fl-console: {args.replay}: no such file", markup=False)
        return ExitCode.USAGE
    from console.app import run_replay

    return run_replay(args.replay)


MODES: dict[str, Handler] = {
    "check": run_check,
    "headless": run_headless_mode,
    "interactive": run_interactive,
}


def summary(config: Config) -> list[tuple[str, str]]:
    """What the run will be, as (label, text) rows."""
    return [
        ("run", f"{config.run_id} (seed {config.seed})"),
        ("server", _server(config)),
        ("clients", _clients(config)),
        ("rounds", _rounds(config)),
        ("model", _model(config)),
        ("data", _data(config)),
        ("learning", _learning(config)),
        ("gossip", _gossip(config)),
        ("device", _device(config)),
        ("privacy", _privacy(config)),
        ("nodes", _nodes(config)),
        ("security", _security(config)),
        ("checkpoints", str(config.checkpoint.dir)),
    ]


def _server(config: Config) -> str:
    server = config.server
    reach = "loopback only" if is_loopback(server.host) else "reachable from other machines"
    text = (
        f"state {server.endpoint(server.state_port)}, "
        f"control {server.endpoint(server.control_port)}"
    )
    if config.data.serve:
        text += f", data {server.endpoint(server.data_port)}"
    return f"{text} ({reach})"


def _clients(config: Config) -> str:
    c = config.coordinator
    witnesses = (
        f"{c.witness_nodes} witnesses"
        if c.witness_nodes
        else f"every live client (up to {MAX_AUTO_WITNESSES}) witnesses"
    )
    return (
        f"starts with {c.init_min_clients}, continues while >= {c.min_clients}; "
        f"{config.learning.train_set_size} trainers and {witnesses} per round"
    )


def _rounds(config: Config) -> str:
    c = config.coordinator
    epochs = -(-c.total_rounds // c.rounds_per_epoch)
    return (
        f"{c.total_rounds} in epochs of up to {c.rounds_per_epoch} "
        f"(at least {epochs} epoch{'s' if epochs != 1 else ''})"
    )


def _model(config: Config) -> str:
    model = config.model
    if model.name == "mlp":
        return f"mlp, hidden {list(model.hidden)}"
    if model.name == "cnn":
        return f"cnn, channels {list(model.channels)}"
    return model.name


def _data(config: Config) -> str:
    data = config.data
    source = data.source
    if source == "synthetic":
        source = f"synthetic ({data.samples} x {data.features}, {data.classes} classes)"
    split = "iid" if data.partition == "iid" else f"{data.partition} (alpha {data.alpha:g})"
    served = ", served by the console" if data.serve else ""
    return f"{source}, {split}, {data.test_fraction:g} held out{served}"


def _learning(config: Config) -> str:
    learning = config.learning
    aggregator = learning.aggregator
    if aggregator == "trimmed_mean":
        aggregator += f" (trim {learning.trim_fraction:g})"
    elif aggregator == "krum":
        aggregator += f" (byzantine_f {learning.byzantine_f})"
    epochs = f"{learning.local_epochs} local epoch{'s' if learning.local_epochs != 1 else ''}"
    return (
        f"{learning.optimizer} lr {learning.learning_rate:g}, {epochs}, "
        f"batch {learning.batch_size}, aggregator {aggregator}"
    )


def _gossip(config: Config) -> str:
    learning = config.learning
    codec = {
        "none": "float32 updates",
        "fp16": "fp16 updates",
        "int8": "int8 updates (a scale per 256 values)",
        "topk": f"top-{learning.topk_fraction:g} updates with error feedback",
    }[learning.compression]
    if learning.gossip_fanout == 0:
        return f"{codec}, each trainer pushes to every peer"
    return f"{codec}, each trainer uploads to {learning.gossip_fanout}, peers relay"


def _device(config: Config) -> str:
    device = config.learning.device
    where = "auto: each node's GPU if it has one, else its CPU" if device == "auto" else device
    return f"{where} (fl-node --device overrides it)"


def _privacy(config: Config) -> str:
    p = config.privacy
    if not p.dp:
        return "off"
    limit = f"target epsilon {p.target_epsilon:g}" if p.target_epsilon > 0 else "no epsilon limit"
    return (
        f"DP-SGD: noise multiplier {p.noise_multiplier:g}, max grad norm {p.max_grad_norm:g}, "
        f"epsilon at delta {p.delta:g}, {limit}"
    )


def _nodes(config: Config) -> str:
    spawn = config.local.spawn
    if spawn == 0:
        return "none spawned: start fl-node processes yourself"
    return f"spawns {spawn} local fl-node process{'es' if spawn != 1 else ''}"


def _security(config: Config) -> str:
    security = config.security
    if not security.curve:
        if is_loopback(config.server.host):
            return "off (loopback only)"
        return (
            f"off: anyone who can reach {config.server.host} can join and read the run "
            "(set [security] curve = true)"
        )
    keys = len(security.allowed)
    if security.authorized_keys is not None:
        keys += len(read_key_dir(security.authorized_keys))
    return (
        f"CURVE on every socket, key {security.server_key}; {keys} authorized node "
        f"key{'s' if keys != 1 else ''}; spawned nodes get fresh keys"
    )


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


if __name__ == "__main__":
    raise SystemExit(main())

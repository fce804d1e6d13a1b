"""``fl-console keygen DIR [--name NAME] [--nodes N]``: CURVE key pairs for ``[security]``.

``fl-console keygen DIR --operator NAME`` writes an operator's key pair instead (for
``fl-console ctl`` and ``attach``) and prints the line for the console's ``[security] operators``.

Writes the console's key pair and N node key pairs into DIR (secret files readable by their
owner only), copies the node public keys into ``DIR/authorized`` (the console's
``authorized_keys``), and prints what to put in ``data.toml`` and what to copy to each node's
machine. Nothing is ever overwritten: run it again to add nodes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from transport.exit_codes import ExitCode
from transport.keys import KeyFileError, read_keypair, write_keypair, write_public_key

CONSOLE_KEY_NAME = "console"


@dataclass(frozen=True)
class GeneratedKeys:
    directory: Path
    console_public: Path
    console_secret: Path
    console_reused: bool  # the console's key pair was already there and is kept
    authorized: Path  # the directory of node public keys the console admits
    nodes: tuple[tuple[Path, Path], ...]  # (public, secret) per node made now


def generate_keys(
    directory: Path, *, name: str = CONSOLE_KEY_NAME, nodes: int = 0
) -> GeneratedKeys:
    """The console's key pair and ``nodes`` node key pairs in ``directory``.

    Node public keys are also copied into ``directory/authorized``. An existing console key
    pair is kept (and checked: :class:`~transport.keys.KeyFileError`); node names continue
    after the ones already there.
    """
    console_public = directory / f"{name}.key"
    console_secret = directory / f"{name}.key_secret"
    reused = console_secret.exists()
    if reused:
        key, _ = read_keypair(console_secret)
        if not console_public.exists():
            write_public_key(console_public, key)
    else:
        console_public, console_secret = write_keypair(directory, name)
    authorized = directory / "authorized"
    authorized.mkdir(parents=True, exist_ok=True)
    made: list[tuple[Path, Path]] = []
    index = 0
    while len(made) < nodes:
        node = f"node-{index}"
        index += 1
        if any((directory / f"{node}{suffix}").exists() for suffix in (".key", ".key_secret")):
            continue
        public, secret = write_keypair(directory, node)
        key, _ = read_keypair(secret)
        write_public_key(authorized / public.name, key)
        made.append((public, secret))
    return GeneratedKeys(directory, console_public, console_secret, reused, authorized, tuple(made))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-console keygen",
        description="Write CURVE key pairs for [security] curve = true: the console's and N nodes'.",
    )
    parser.add_argument("dir", type=Path, help="where the key files go (created if need be)")
    parser.add_argument(
        "--name", default=CONSOLE_KEY_NAME, help="the console key's file name (default: console)"
    )
    parser.add_argument(
        "--nodes", type=int, default=0, metavar="N", help="also make N node key pairs"
    )
    parser.add_argument(
        "--operator",
        metavar="NAME",
        help="only write an operator's key pair NAME.key(_secret), for fl-console ctl / attach",
    )
    return parser


def write_operator_key(directory: Path, name: str, out: Console) -> None:
    """An operator's key pair in ``directory`` and what to do with it (never overwrites)."""
    if any((directory / f"{name}{suffix}").exists() for suffix in (".key", ".key_secret")):
        raise KeyFileError(f"{directory / name}.key(_secret) exists already: pick another name")
    public, secret = write_keypair(directory, name)
    key, _ = read_keypair(secret)
    out.print(f"wrote {secret} (secret: stays with the operator) and {public}", markup=False)
    out.print(
        "\nin the console's data.toml, let this key act (a list of keys):\n"
        f'    [security]\n    operators = ["{key.decode()}"]\n'
        "\nthen, with the console's public key file (console.key):\n"
        f"    fl-console ctl data.toml status --key {secret} --server-key console.key",
        markup=False,
    )


def main(argv: Sequence[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or bad arguments (argparse has printed why)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    if args.nodes < 0:
        errors.print("fl-console keygen: --nodes must be >= 0", markup=False)
        return ExitCode.USAGE
    if args.operator is not None:
        try:
            write_operator_key(args.dir, args.operator, Console(soft_wrap=True, highlight=False))
        except (KeyFileError, OSError) as exc:
            errors.print(f"fl-console keygen: {exc}", markup=False)
            return ExitCode.USAGE
        return ExitCode.OK
    try:
        keys = generate_keys(args.dir, name=args.name, nodes=args.nodes)
    except (KeyFileError, OSError) as exc:
        errors.print(f"fl-console keygen: {exc}", markup=False)
        return ExitCode.USAGE
    report(keys, Console(soft_wrap=True, highlight=False))
    return ExitCode.OK


def report(keys: GeneratedKeys, out: Console) -> None:
    """What was written, the [security] section for data.toml, and what each node needs."""
    kept = "kept" if keys.console_reused else "wrote"
    out.print(
        f"{kept} the console's key pair: {keys.console_secret} (secret: stays on the console's "
        f"machine) and {keys.console_public} (public: copy it to every node)",
        markup=False,
    )
    for public, secret in keys.nodes:
        out.print(f"wrote {secret} (secret) and {public}; authorized in {keys.authorized}/")
    out.print(
        "\nin data.toml (relative paths there are relative to the data.toml file):", markup=False
    )
    section = [
        "[security]",
        "curve = true",
        f'server_key = "{_shown(keys.console_secret)}"',
        f'authorized_keys = "{_shown(keys.authorized)}"',
    ]
    out.print("\n".join(f"    {line}" for line in section), markup=False)
    if not keys.nodes:
        out.print(
            "\nno node keys made (--nodes N makes some); a node's .key file in "
            f"{keys.authorized}/ authorizes it",
            markup=False,
        )
        return
    out.print(
        "\non each node's machine: copy its .key_secret and the console's public key, then run",
        markup=False,
    )
    for _, secret in keys.nodes:
        out.print(
            f"    {secret.stem}: fl-node --connect tcp://CONSOLE_ADDRESS:5556 --run-id RUN_ID "
            f"--name {secret.stem} --curve-key {secret.name} --server-key {keys.console_public.name}",
            markup=False,
        )


def _shown(path: Path) -> str:
    """A path as data.toml takes it (relative paths there are relative to the file itself)."""
    return path.as_posix()

"""CURVE key files and key sets: what ``fl-console keygen`` writes and both sides read.

A key pair is two files in pyzmq's certificate format (``zmq.auth.load_certificate`` reads
them): ``NAME.key`` holds the public key and may be shared; ``NAME.key_secret`` holds both keys
and is created readable by its owner only. Keys are Z85 text, 40 characters for 32 bytes.
Everything here raises :class:`KeyFileError` with the file and what is wrong with it.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import zmq
from zmq.utils import z85

Z85_KEY_LENGTH = 40
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


class KeyFileError(ValueError):
    """A key file (or key text) that cannot be used; the message names it and says why."""


def is_z85_key(text: str | bytes) -> bool:
    """Whether ``text`` is a Z85-encoded 32-byte CURVE key."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if len(raw) != Z85_KEY_LENGTH:
        return False
    try:
        return len(z85.decode(raw)) == 32
    except (ValueError, KeyError, IndexError):
        return False


def short(key: str | bytes) -> str:
    """A key as shown in logs: enough to tell keys apart, not a wall of text."""
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    return f"{text[:8]}…" if len(text) > 8 else text


def _read_fields(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    found: dict[str, bytes] = {}
    for line in text.splitlines():
        line = line.strip()
        for name in (b"public-key", b"secret-key"):
            if line.startswith(name) and b"=" in line:
                found[name.decode()] = line.split(b"=", 1)[1].strip(b" \t'\"")
    return found


def read_public_key(path: str | os.PathLike[str]) -> bytes:
    """The Z85 public key in a ``.key`` (or ``.key_secret``) file."""
    file = Path(path)
    key = _read_fields(file).get("public-key")
    if key is None:
        raise KeyFileError(f"{file}: not a CURVE key file (no public-key line)")
    if not is_z85_key(key):
        raise KeyFileError(f"{file}: the public key is not a 40-character Z85 CURVE key")
    return key


def read_keypair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; checks that the two belong together."""
    file = Path(path)
    fields = _read_fields(file)
    public, secret = fields.get("public-key"), fields.get("secret-key")
    if secret is None:
        hint = f" (give the {SECRET_SUFFIX} file)" if public is not None else ""
        raise KeyFileError(f"{file}: holds no secret key{hint}")
    if not is_z85_key(secret):
        raise KeyFileError(f"{file}: the secret key is not a 40-character Z85 CURVE key")
    derived = zmq.curve_public(secret)
    if public is not None and public != derived:
        raise KeyFileError(f"{file}: the public key does not belong to the secret key")
    return derived, secret


def read_key_dir(directory: str | os.PathLike[str]) -> dict[Path, bytes]:
    """Every ``*.key`` file in ``directory`` -> its public key (sorted by file name)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise KeyFileError(f"{folder}: no such directory of public keys")
    return {file: read_public_key(file) for file in sorted(folder.glob(f"*{PUBLIC_SUFFIX}"))}


def write_keypair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``directory``; never overwrites.

    Returns (public file, secret file). Raises ``FileExistsError`` when either exists.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    for file in (public_file, secret_file):
        if file.exists():
            raise FileExistsError(f"{file} exists; not overwriting a key")
    public, secret = zmq.curve_keypair()
    banner = (
        f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by fl-console  ****\n"
    )
    _write_new(secret_file, _certificate(banner, public, secret), mode=0o600)
    _write_new(public_file, _certificate(banner, public, None), mode=0o644)
    return public_file, secret_file


def write_public_key(file: str | os.PathLike[str], key: bytes) -> Path:
    """Write a public key file (``.key``) for ``key``; never overwrites."""
    path = Path(file)
    _write_new(path, _certificate("#   written by fl-console\n", key, None), mode=0o644)
    return path


def _certificate(banner: str, public: bytes, secret: bytes | None) -> str:
    lines = [banner, "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_new(file: Path, text: str, *, mode: int) -> None:
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


class KeyAllowlist:
    """A set of Z85 public keys that may change while a ZAP handler reads it (thread-safe).

    The console's allowlist grows when it spawns nodes with fresh keys; a node's gossip
    allowlist follows the run's broadcast membership.
    """

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._keys = frozenset(keys)
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        return key in self._keys  # one read of an immutable set: no lock needed

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: bytes) -> None:
        with self._lock:
            self._keys = self._keys | {key}

    def replace(self, keys: Iterable[bytes]) -> None:
        new = frozenset(keys)
        with self._lock:
            self._keys = new

"""CURVE key files: written owner-only, never overwritten, read back with clear errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from transport.keys import (
    KeyAllowlist,
    KeyFileError,
    is_z85_key,
    read_key_dir,
    read_keypair,
    read_public_key,
    write_keypair,
    write_public_key,
)


def test_written_keypair_reads_back_and_the_secret_file_is_owner_only(tmp_path: Path) -> None:
    public_file, secret_file = write_keypair(tmp_path / "keys", "node-0")

    public, secret = read_keypair(secret_file)

    assert read_public_key(public_file) == public and zmq.curve_public(secret) == public
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(secret_file) == (public, secret)  # pyzmq's format
    assert zmq.auth.load_certificate(public_file) == (public, None)


def test_keypair_is_never_overwritten(tmp_path: Path) -> None:
    _, secret_file = write_keypair(tmp_path, "console")
    before = secret_file.read_bytes()

    with pytest.raises(FileExistsError):
        write_keypair(tmp_path, "console")

    assert secret_file.read_bytes() == before


def test_public_file_given_as_secret_key_says_which_file_to_give(tmp_path: Path) -> None:
    public_file, _ = write_keypair(tmp_path, "console")

    with pytest.raises(KeyFileError, match=r"console\.key: holds no secret key .*key_secret"):
        read_keypair(public_file)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no public-key line"),
        ('curve\n    public-key = "tooshort"\n', "not a 40-character Z85"),
    ],
)
def test_broken_public_key_file_is_reported_with_its_name(
    tmp_path: Path, text: str, message: str
) -> None:
    file = tmp_path / "site-a.key"
    file.write_text(text)

    with pytest.raises(KeyFileError, match=message) as info:
        read_public_key(file)

    assert str(file) in str(info.value)


def test_secret_file_whose_public_key_does_not_match_is_refused(tmp_path: Path) -> None:
    _, secret_file = write_keypair(tmp_path, "a")
    other, _ = zmq.curve_keypair()
    public, secret = read_keypair(secret_file)
    secret_file.write_text(
        f'curve\n    public-key = "{other.decode()}"\n    secret-key = "{secret.decode()}"\n'
    )

    with pytest.raises(KeyFileError, match="does not belong"):
        read_keypair(secret_file)


def test_missing_key_file_and_directory_are_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        read_keypair(tmp_path / "nope.key_secret")
    with pytest.raises(KeyFileError, match="no such directory"):
        read_key_dir(tmp_path / "nope")


def test_key_dir_reads_every_public_key_file(tmp_path: Path) -> None:
    keys = [zmq.curve_keypair()[0] for _ in range(3)]
    for i, key in enumerate(keys):
        write_public_key(tmp_path / f"site-{i}.key", key)
    (tmp_path / "notes.txt").write_text("not a key")

    found = read_key_dir(tmp_path)

    assert list(found.values()) == keys and all(p.suffix == ".key" for p in found)


def test_z85_key_check() -> None:
    public, _ = zmq.curve_keypair()
    assert is_z85_key(public) and is_z85_key(public.decode())
    assert not is_z85_key("x" * 39) and not is_z85_key(" " * 40)


def test_allowlist_changes_are_seen_at_once() -> None:
    a, b = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    allow = KeyAllowlist([a])
    assert a in allow and b not in allow
    allow.add(b)
    assert b in allow and len(allow) == 2
    allow.replace([b])
    assert a not in allow and set(allow) == {b}

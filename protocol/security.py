"""CURVE keys: who may talk to whom (docs/architecture.md, "Security").

``loadmaster keygen DIR`` and ``loadagent keygen DIR`` write a key pair in ZeroMQ's
certificate format: ``NAME.key`` (the public key, to give to the other side) and
``NAME.key_secret`` (both keys, created readable by its owner only). A master given its
pair (``--key DIR``) serves its control and stats sockets with CURVE and accepts only the
agents whose public key file is in ``--authorized-agents DIR``; an agent given its own
pair and the master's public key (``--master-key FILE``) talks to that master only, and
so do its workers. ``Curve`` holds what one side needs; the socket factories of
``protocol/wire/channel.py`` apply it.

Files are read with pyzmq's certificate parser (``zmq.auth.load_certificate``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

__all__ = ["PUBLIC_SUFFIX", "SECRET_SUFFIX", "Curve", "KeyFileError", "KeyPair", "curve_keys",
           "curve_of", "fingerprint", "keygen", "load_authorized", "load_keypair",
           "load_public", "write_keys"]

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
MAX_KEY_FILE = 64 * 1024  # a certificate is a few hundred bytes
MAX_AUTHORIZED = 100_000  # public key files in an --authorized-agents folder


class KeyFileError(ValueError):
    """A key file or folder that cannot be used; the message names it and why."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85, 40 bytes
    secret: bytes


@dataclass(frozen=True)
class Curve:
    """One side's CURVE settings: its pair and, on a client, the server's public key."""

    pair: KeyPair
    server_public: bytes | None = None  # None: this side is the server

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Set the socket's CURVE options (before it binds or connects)."""
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        if self.server_public is None:
            sock.curve_server = True
        else:
            sock.curve_serverkey = self.server_public


def curve_keys(curve: Curve | None) -> list[bytes]:
    """A client's CURVE settings as WorkerJob carries them (empty: none)."""
    if curve is None:
        return []
    assert curve.server_public is not None
    return [curve.pair.public, curve.pair.secret, curve.server_public]


def curve_of(keys: list[bytes]) -> Curve | None:
    """The inverse of ``curve_keys``."""
    if not keys:
        return None
    public, secret, server = keys
    return Curve(KeyPair(public, secret), server)


def fingerprint(public: bytes) -> str:
    """A short, stable name of a public key for logs (the key itself is not secret, but
    40 characters of Z85 are hard to compare by eye)."""
    return "SHA256:" + hashlib.sha256(public).hexdigest()[:16]


_CERT = """#   ****  loadtest CURVE {what} ({name}), written by `keygen`  ****
#   {note}

metadata
curve
    public-key = "{public}"
{secret_line}"""


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def keygen(folder: Path, name: str) -> tuple[Path, Path]:
    """Write a new pair as ``folder/NAME.key`` and ``folder/NAME.key_secret`` (0600); the
    folder is created (0700) when missing. KeyFileError if either file exists."""
    public, secret = zmq.curve_keypair()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise KeyFileError(f"{folder}: cannot create the folder: {e.strerror or e}") from None
    pub_path, sec_path = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    for path in (pub_path, sec_path):
        if path.exists():
            raise KeyFileError(f"{path}: already exists (a key pair is never overwritten)")
    fields = {"name": name, "public": public.decode()}
    try:
        _write(sec_path, _CERT.format(what="secret key", note="keep it secret: readable by "
                                      "its owner only", secret_line=f'    secret-key = '
                                      f'"{secret.decode()}"\n', **fields), 0o600)
        _write(pub_path, _CERT.format(what="public key", note="give it to the other side",
                                      secret_line="", **fields), 0o644)
    except OSError as e:
        raise KeyFileError(f"{folder}: cannot write the key pair: {e.strerror or e}") from None
    return pub_path, sec_path


def write_keys(folder: Path, name: str, program: str) -> None:
    """``PROGRAM keygen``: write the pair, say where; exit 2 (named) when it cannot."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        print(f"{program}: --name {name!r}: letters, digits, - and _ only", file=sys.stderr)
        raise SystemExit(2)
    try:
        public, secret = keygen(folder, name)
    except KeyFileError as e:
        print(f"{program}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"public key: {public} (fingerprint {fingerprint(load_public(public, ''))})")
    print(f"secret key: {secret} (mode 600: keep it on this machine)")


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise KeyFileError(f"{path}: {e.strerror or e}") from None
    if size > MAX_KEY_FILE:
        raise KeyFileError(f"{path}: not a key file ({size} bytes)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: not a key file written by keygen ({e})") from None
    if public is None or len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyFileError(f"{path}: not a key file written by keygen (no 40-character "
                        f"public-key)")
    try:
        zmq.utils.z85.decode(public)
        if secret is not None:
            zmq.utils.z85.decode(secret)
    except ValueError:
        raise KeyFileError(f"{path}: a key that is not Z85 text") from None
    return public, secret


def load_keypair(folder: Path, option: str = "--key") -> KeyPair:
    """The pair in a keygen folder: exactly one ``*.key_secret``, which no group or other
    user may read (as ssh asks of a private key)."""
    if not folder.is_dir():
        raise KeyFileError(f"{option} {folder}: not a folder (make one with keygen)")
    secrets = sorted(folder.glob(f"*{SECRET_SUFFIX}"))
    if len(secrets) != 1:
        found = "none" if not secrets else ", ".join(p.name for p in secrets)
        raise KeyFileError(f"{option} {folder}: expected one *{SECRET_SUFFIX} file, found "
                        f"{found}")
    path = secrets[0]
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{option} {path}: readable by others (mode {stat.S_IMODE(mode):o}); "
                        f"chmod 600 it")
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{option} {path}: holds no secret key")
    return KeyPair(public, secret)


def load_public(path: Path, option: str) -> bytes:
    """A public key file (``NAME.key``; a secret file holds it too)."""
    if path.is_dir():
        raise KeyFileError(f"{option} {path}: a folder; give the public key file "
                        f"(NAME{PUBLIC_SUFFIX})")
    try:
        return _load(path)[0]
    except KeyFileError as e:
        raise KeyFileError(f"{option} {e}") from None


def load_authorized(folder: Path, option: str = "--authorized-agents") -> dict[bytes, str]:
    """Every public key in ``folder/*.key`` -> its file's name. At least one."""
    if not folder.is_dir():
        raise KeyFileError(f"{option} {folder}: not a folder of public key files")
    out: dict[bytes, str] = {}
    for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}"))[:MAX_AUTHORIZED]:
        try:
            out[_load(path)[0]] = path.name
        except KeyFileError as e:
            raise KeyFileError(f"{option} {e}") from None
    if not out:
        raise KeyFileError(f"{option} {folder}: no *{PUBLIC_SUFFIX} file in it")
    return out

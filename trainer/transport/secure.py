"""Admission and message integrity of the distributed runtime: the run's secret, the join handshake, channels.

Trust model: whoever holds the run's secret is a member of the run; nobody else gets a rank, reads a
message or injects one. A member is trusted to hold the secret, not to send sane content: what it
sends is still checked field by field (:mod:`trainer.transport.wire`), and a bad message costs only its
sender.

* **The secret** is 32 random bytes, read from the file named by ``SFSIM_SECRET_FILE`` (which must not
  be readable by group or others) or from ``SFSIM_SECRET``; never from a command line. The local
  launcher writes a fresh one per run to a 0600 file (:func:`new_secret_file`).
* **Ranks are bound to keys**: each rank has its own key derived from the secret (:func:`role_key`). A
  role may hold the run's secret or only its rank's credential (:func:`role_credential`; the local
  launcher gives each device only its own), so a device cannot claim another device's rank: its
  claim fails the MAC and is refused with a line, and the real holder is admitted. Servers hold the
  run's secret (they admit every rank).
* **Admission** (:func:`admit` on the server, :func:`join` on a device): over a TCP connection to the
  master address, before any rank exists. The server sends a random challenge; the device answers with
  the rank it claims, its own challenge and an HMAC-SHA256 over both under a key derived from that
  rank's key; the server checks it (constant time), refuses a wrong MAC or a rank already taken, and
  answers with its own HMAC (so a device also knows it reached the real server) plus the port of the
  rendezvous store. That connection then carries every message between the two.
* **Channels** (:class:`Channel`): a message is a length-prefixed frame; encrypted, a frame is an
  8-byte counter and an AES-256-GCM ciphertext under a key derived (HKDF-SHA256) from the secret and
  both challenges, one key per direction. The receiver expects the next counter exactly: a replayed,
  reordered, forged or tampered frame raises :class:`~trainer.transport.wire.WireError` and its sender
  is dropped. A frame whose length differs from what the checked header announced is refused before
  it is read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import struct
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sfsim.errors import SfsimError
from trainer.transport.wire import WireError

SECRET_FILE_ENV = "SFSIM_SECRET_FILE"
SECRET_ENV = "SFSIM_SECRET"
ENCRYPT_ENV = "SFSIM_ENCRYPT"  # on | off | auto (auto: off for --launch local's roles, on for any other role)
HELLO = b"SFSIM-JOIN-1"
NONCE = 32  # bytes of each side's challenge
MAC = 32  # HMAC-SHA256
TAG = 16  # AES-GCM tag
COUNTER = 8
LEN = struct.Struct(">I")  # frame length prefix
MAX_FRAME = (2 << 30) + 64  # the largest message wire.py allows, plus the counter and tag
AAD = b"sfsim"  # associated data of every frame
HANDSHAKE_S = 5.0  # a joining process has this long to answer the challenge


# -- the secret ------------------------------------------------------------------------------------------
def load_secret() -> bytes | None:
    """The run's secret from ``SFSIM_SECRET_FILE`` (a file private to its owner) or ``SFSIM_SECRET``; else None."""
    path = os.environ.get(SECRET_FILE_ENV)
    if path:
        p = Path(path)
        try:
            mode = p.stat().st_mode
            data = p.read_bytes().strip()
        except OSError as err:
            raise SfsimError(f"{SECRET_FILE_ENV}={path}: cannot read it ({err.strerror})") from None
        if mode & 0o077:
            raise SfsimError(f"{SECRET_FILE_ENV}={path}: readable by group or others (mode {mode & 0o777:o}); "
                             f"run chmod 600 {path}")
        if len(data) < 16:
            raise SfsimError(f"{SECRET_FILE_ENV}={path}: a secret needs at least 16 bytes (e.g. "
                             "python -c 'import secrets; print(secrets.token_hex(32))' > FILE)")
        return data
    text = os.environ.get(SECRET_ENV)
    if text:
        if len(text) < 16:
            raise SfsimError(f"{SECRET_ENV}: a secret needs at least 16 characters")
        return text.encode()
    return None


def need_secret() -> bytes:
    """:func:`load_secret`, or a one-line error saying how to give one."""
    secret = load_secret()
    if secret is None:
        raise SfsimError(f"a distributed run needs its secret on every role: set {SECRET_FILE_ENV}=FILE (a chmod 600 "
                         f"file with e.g. the output of: python -c 'import secrets; print(secrets.token_hex(32))') "
                         f"or {SECRET_ENV}")
    return secret


def new_secret_file(folder: Path) -> Path:
    """A fresh random secret in a new 0600 file under ``folder`` (the local launcher's, one per run)."""
    path = Path(folder) / f"secret-{secrets.token_hex(8)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def encrypt_default(multi_host: bool) -> bool:
    """Whether messages are encrypted: ``SFSIM_ENCRYPT`` (on/off), else on for multi-host runs only."""
    value = os.environ.get(ENCRYPT_ENV, "auto").lower()
    if value not in ("on", "off", "auto", "1", "0"):
        raise SfsimError(f"{ENCRYPT_ENV}={value!r}: use on, off or auto")
    return multi_host if value == "auto" else value in ("on", "1")


ROLE_PREFIX = "sfsim-role-"  # a role credential file: "sfsim-role-<rank>:<64 hex digits>"


def role_key(secret: bytes, rank: int) -> bytes:
    """Rank ``rank``'s key, derived from the run's secret: what its admission and channel keys come from."""
    return _kdf(secret, b"sfsim", b"role %d" % rank)


def role_credential(secret: bytes, rank: int) -> str:
    """The credential of rank ``rank`` alone (a file's text): it admits that rank and no other.

    Example:
        >>> role_credential(b"0123456789abcdef0123", 2).startswith("sfsim-role-2:")
        True
    """
    return f"{ROLE_PREFIX}{rank}:{role_key(secret, rank).hex()}"


def identity(secret: bytes, rank: int) -> bytes:
    """The key rank ``rank`` joins with: derived from the run's secret, or read from a role credential
    (:func:`role_credential`), which must be this rank's."""
    if not secret.startswith(ROLE_PREFIX.encode()):
        return role_key(secret, rank)
    head, _, key = secret.decode(errors="replace").partition(":")
    if head != f"{ROLE_PREFIX}{rank}" or len(key) != 64:
        raise SfsimError(f"the secret given is the credential of {head.removeprefix(ROLE_PREFIX) or '?'}, "
                         f"not of rank {rank}: give this role its own credential or the run's secret")
    try:
        return bytes.fromhex(key)
    except ValueError:
        raise SfsimError(f"the credential of rank {rank} is not 64 hex digits") from None


def _kdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


# -- channels ----------------------------------------------------------------------------------------------
class Channel:
    """One peer's connection: length-prefixed frames, AES-GCM with per-direction counters when ``keys`` are set.

    Args:
        sock: the connected socket (admitted by :func:`admit` / :func:`join`).
        keys: (send key, receive key) for AES-256-GCM, or ``None`` for plaintext frames.
    """

    def __init__(self, sock: socket.socket, keys: tuple[bytes, bytes] | None = None):
        self.sock = sock
        self.sock.settimeout(None)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a header frame goes at once
        self.encrypted = keys is not None
        self._tx = AESGCM(keys[0]) if keys else None
        self._rx = AESGCM(keys[1]) if keys else None
        self.sent = self.received = 0  # frame counters (the GCM nonces)

    @property
    def overhead(self) -> int:
        """Bytes a frame adds to its content (length prefix, and counter + tag when encrypted)."""
        return LEN.size + (COUNTER + TAG if self.encrypted else 0)

    def send(self, *parts) -> int:
        """Send ``parts`` (bytes-like) as one frame; return the bytes put on the wire."""
        if self._tx is not None:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            body = bytearray(COUNTER + len(data) + TAG)
            body[:COUNTER] = struct.pack(">Q", self.sent)
            _seal(self._tx, _nonce(self.sent), data, memoryview(body)[COUNTER:])
            parts = (body,)
        size = sum(memoryview(p).nbytes for p in parts)
        self.sock.sendall(LEN.pack(size))
        for p in parts:
            self.sock.sendall(p)
        self.sent += 1
        return size + LEN.size

    def recv(self, expect: int) -> bytearray:
        """The next frame's content, which must be ``expect`` bytes; raise WireError (or ConnectionError on EOF)."""
        (size,) = LEN.unpack(self._read(LEN.size))
        want = expect + (COUNTER + TAG if self.encrypted else 0)
        if size != want:
            raise WireError(f"frame of {size} bytes where {want} were announced")
        body = self._read(size)
        if self._rx is None:
            self.received += 1
            return body
        (n,) = struct.unpack(">Q", body[:COUNTER])
        if n != self.received:
            what = "replayed" if n < self.received else "out-of-order"
            raise WireError(f"{what} message (counter {n}, expected {self.received})")
        try:
            plain = _open(self._rx, _nonce(n), memoryview(body)[COUNTER:], expect)
        except InvalidTag:
            raise WireError("forged or tampered message (authentication failed)") from None
        self.received += 1
        return plain

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionError("connection closed")
            got += k
        return buf

    def shutdown(self) -> None:
        """No more frames from this side (the peer reads what was sent, then end of stream)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """End the connection both ways (the descriptor stays until the process ends: no reuse under a
        thread that may still be writing to it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _seal(aead: AESGCM, nonce: bytes, data, out: memoryview) -> None:
    """Encrypt ``data`` into ``out`` (ciphertext + tag), without a copy where this cryptography can."""
    if hasattr(aead, "encrypt_into"):
        aead.encrypt_into(nonce, data, AAD, out)
    else:
        out[:] = aead.encrypt(nonce, bytes(data), AAD)


def _open(aead: AESGCM, nonce: bytes, body: memoryview, n: int) -> bytearray:
    """Decrypt and authenticate ``body`` (ciphertext + tag) into a new ``n``-byte buffer; raise InvalidTag."""
    if hasattr(aead, "decrypt_into"):
        plain = bytearray(n)
        aead.decrypt_into(nonce, body, AAD, plain)
        return plain
    return bytearray(aead.decrypt(nonce, bytes(body), AAD))


def _nonce(n: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", n)  # 96-bit GCM nonce; one key per direction and connection


def _keys(secret: bytes, salt: bytes, rank: int, server: bool) -> tuple[bytes, bytes]:
    """(send, receive) keys of the connection with device ``rank``, from the server's side or the device's."""
    down = _kdf(secret, salt, b"sfsim down %d" % rank)
    up = _kdf(secret, salt, b"sfsim up %d" % rank)
    return (down, up) if server else (up, down)


# -- admission -----------------------------------------------------------------------------------------------
def listen(host: str, port: int) -> socket.socket:
    """The server's admission socket, bound to the master address only."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as err:
        s.close()
        raise SfsimError(f"cannot listen on {host}:{port} ({err.strerror}): is the port in use? "
                         "pick another --master port") from None
    s.listen(64)
    return s


def admit(lsock: socket.socket, secret: bytes, ranks: dict[int, str], deadline_s: float, store_port: int,
          encrypt: bool, log) -> dict[int, Channel]:
    """Admit one process per rank in ``ranks`` (rank -> role name) within ``deadline_s``; return their channels.

    A join with a wrong MAC, a rank outside ``ranks`` or already taken, or no answer within
    :data:`HANDSHAKE_S` is refused (one line through ``log``) and admission goes on.

    Raises:
        SfsimError: one line naming the ranks that did not join in time.
    """
    if secret.startswith(ROLE_PREFIX.encode()):
        raise SfsimError("a server admits with the run's secret, not a role credential: give it the run's secret")
    out, end = {}, time.monotonic() + deadline_s
    while len(out) < len(ranks):
        left = end - time.monotonic()
        if left <= 0:
            missing = [f"{r} ({ranks[r]})" for r in sorted(ranks) if r not in out]
            raise SfsimError(f"rendezvous: rank{'s' if len(missing) > 1 else ''} {', '.join(missing)} did not join "
                             f"within {deadline_s:g} s (--peer-timeout); check that every role started and holds "
                             f"the run's secret")
        lsock.settimeout(min(left, 1.0))
        try:
            conn, addr = lsock.accept()
        except TimeoutError:
            continue
        try:
            rank, ch = _admit_one(conn, secret, ranks, out, store_port, encrypt)
        except (OSError, WireError, ValueError) as err:
            log(f"refused a join from {addr[0]}:{addr[1]}: {err}")
            conn.close()
            continue
        out[rank] = ch
    return out


def _admit_one(conn, secret: bytes, ranks: dict, taken: dict, store_port: int, encrypt: bool):
    conn.settimeout(HANDSHAKE_S)
    ours = secrets.token_bytes(NONCE)
    conn.sendall(HELLO + ours)
    ans = _exact(conn, 4 + NONCE + MAC)
    rank, theirs, mac = int.from_bytes(ans[:4], "big"), ans[4:4 + NONCE], ans[4 + NONCE:]
    if rank not in ranks:
        raise WireError(f"rank {rank} is not a device rank of this run")
    who = role_key(secret, rank)  # the claim is proven with the claimed rank's own key: no rank can take another's
    key = _kdf(who, b"sfsim", b"admission")
    if not hmac.compare_digest(mac, _mac(key, b"join", ours, theirs, ans[:4])):
        raise WireError(f"wrong secret (claimed rank {rank})")
    if rank in taken:
        raise WireError(f"rank {rank} is taken")
    flags = struct.pack(">BI", int(encrypt), store_port)
    conn.sendall(flags + _mac(key, b"accept", ours, theirs, ans[:4], flags))
    salt = ours + theirs
    return rank, Channel(conn, _keys(who, salt, rank, server=True) if encrypt else None)


def join(host: str, port: int, rank: int, secret: bytes, deadline_s: float) -> tuple[Channel, int]:
    """Prove the secret to the server at ``host:port`` and claim ``rank``; return (channel, store port).

    Raises:
        SfsimError: the server was not reachable within ``deadline_s``, refused the join, or could
            not prove that it holds the secret itself.
    """
    who = identity(secret, rank)
    key, end = _kdf(who, b"sfsim", b"admission"), time.monotonic() + deadline_s
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=HANDSHAKE_S)
            break
        except OSError as err:
            if time.monotonic() > end:
                raise SfsimError(f"cannot reach the server at {host}:{port} within {deadline_s:g} s "
                                 f"({err.strerror or err})") from None
            time.sleep(0.2)
    try:
        hello = _exact(conn, len(HELLO) + NONCE)
        if hello[:len(HELLO)] != HELLO:
            raise WireError("not an sfsim server")
        ours, theirs, rank4 = secrets.token_bytes(NONCE), hello[len(HELLO):], rank.to_bytes(4, "big")
        conn.sendall(rank4 + ours + _mac(key, b"join", theirs, ours, rank4))
        ans = _exact(conn, 5 + MAC)
        flags, mac = ans[:5], ans[5:]
        if not hmac.compare_digest(mac, _mac(key, b"accept", theirs, ours, rank4, flags)):
            raise WireError("the server did not prove it holds the run's secret")
    except (OSError, WireError) as err:
        conn.close()
        why = "it closed the connection: wrong secret, or the rank is taken" if isinstance(err, ConnectionError) else err
        raise SfsimError(f"the server at {host}:{port} refused rank {rank} ({why})") from None
    encrypt, store_port = struct.unpack(">BI", flags)
    keys = _keys(who, theirs + ours, rank, server=False) if encrypt else None
    return Channel(conn, keys), store_port


def _exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        buf += chunk
    return buf


__all__ = ["Channel", "admit", "join", "listen", "load_secret", "need_secret", "new_secret_file", "encrypt_default",
           "role_credential", "role_key", "identity"]

"""The backhaul's channels between server processes: the star around server 0 that sums the round vectors
(:class:`ServerLinks`), the vectors' tail and its checks (:func:`round_tail_error`), and the instant server 0 invites the
waiting servers to a round (:func:`invitation_at`). What the rounds mean and who joins which: :mod:`trainer.transport.backhaul`.
"""

from __future__ import annotations

import json
import select
import time

import torch

from sfsim.errors import SfsimError
from trainer.transport import wire
from trainer.transport.secure import Channel
from trainer.transport.wire import WireError

_LEN = 8  # bytes of a JSON part's length prefix
TAIL = 6  # a round vector's tail: weight, servers training, not adopting, stepping, opening it, at (ServerSync._round)
MAX_JOINS = 1 << 24  # a server's count of the joins it announces to another (whole numbers exact in float32)
AT_SLACK_S = 1.0  # a round's ``at`` may be ahead of the reader's clock by this much (the clocks' sync error)
MAX_JSON = 1 << 30  # a server's end-of-run part (metrics and trace events) at most


class ServerLinks:
    """The backhaul between server processes: a star of admitted channels around server 0.

    A round is *opened* by a server that joins it from an optimizer step (its vector's last count, see
    :meth:`ServerSync._round`); a server waiting for a visitor joins only opened rounds, when server 0 tells it
    (an *invitation*: the round's index, 8 bytes, checked against the round it expects). Server 0 sends every
    other server one invitation per round, before the sum: at once when it opens the round itself, else when it
    reads an opening vector or, when no server opens it, once every server has joined (servers that have drained
    meet in their drain and closing rounds). So the rounds that happen and their order follow the servers' steps,
    never who polls first, and two waiting servers trade nothing. With ``movers`` (:class:`ServerSync`'s rounds with
    devices that move) an invitation has a second part, 8 bytes per mover: the joins of each announced to its server
    in the vectors read so far (:attr:`need`).

    Args:
        index: this server's index.
        n_servers: servers in the run.
        channels: server 0: server index -> its channel; server ``j``: ``{0: channel to server 0}``.
        timeout_s: a server waits this long for the others' part of a round (a server that has died ends the
            round at once: its connection closes).
    """

    def __init__(self, index: int, n_servers: int, channels: dict[int, Channel], timeout_s: float = 600.0):
        self.index, self.n, self.channels, self.timeout_s = index, n_servers, channels, timeout_s
        for ch in channels.values():
            ch.sock.settimeout(timeout_s)
        self.calls = 0  # rounds this server has joined (the index of its next one)
        self.early: dict[int, torch.Tensor] = {}  # server 0: the others' vectors of its next round, read while waiting
        self.invited = False  # server j: the invitation to its next round has been read (while waiting)
        self.movers = 0  # this round's vectors carry, before their TAIL, each server's joins announced per mover
        self.need: list[int] = []  # per mover: joins this (waiting) server must have read before it answers the open round
        self.at: float | None = None  # the invitation instant of the open round this (waiting) server holds (:meth:`opened`)
        self.waits = False  # this server answers its next round as a waiting one (server 0: it reads while it waits)
        self.now = time.perf_counter  # this server's clock (:class:`ServerSync` gives its meter's, the run's)

    def all_reduce(self, flat: torch.Tensor, check=None, opens: bool = False, movers: int = 0) -> None:
        """Replace the float32 vector ``flat`` by its sum over every server (bit-identical everywhere), but for its last
        value, the vectors' instant: the sum's is the round's invitation instant (:func:`invitation_at`).

        ``check(vector, servers)``: what is wrong with one server's vector (``servers`` 1, on server 0) or with the
        sum server 0 sends back (``servers`` n), or None; a wrong one ends the run with one line naming the sender.
        ``opens``: this server opens the round (server 0 invites the others at once); ``movers``: the vectors carry the
        servers' join counts of that many devices (:meth:`ServerSync.announce`), which the invitations pass on."""
        nbytes = flat.numel() * 4
        self.movers = movers
        k, self.calls = self.calls, self.calls + 1
        if self.index != 0:
            self._send(0, flat)
            if not self.invited:
                self._invitation(k)
            self.invited, self.at = False, None
            flat.copy_(self._checked(0, self._recv(0, nbytes), check, self.n))
            return
        parts, self.early, waits, self.waits, self.at = self.early, {}, self.waits, False, None
        invited = opens or any(_opens(v) for v in parts.values())
        if invited:
            self._invite(k, flat, parts, waits)
        while len(parts) < self.n - 1:
            for j in self._readable([j for j in range(1, self.n) if j not in parts], self.timeout_s):
                parts[j] = self._checked(j, self._recv(j, nbytes), check, 1)
                if not invited and _opens(parts[j]):
                    invited = True
                    self._invite(k, flat, parts, waits)
        if not invited:  # nobody opened it: every server joined (drained servers' rounds)
            self._invite(k, flat, parts, waits)
        total = flat.clone()
        for j in range(1, self.n):
            total += parts[j]
        total[-1] = invitation_at(flat, parts.values(), waits)  # the sum's ``at``: the round's invitation instant
        flat.copy_(total)
        for j in range(1, self.n):
            self._send(j, flat)

    def opened(self, nbytes: int, check=None, wait_s: float = 0.0, movers: int = 0) -> bool:
        """A waiting server: whether its next round is open (it should join it now), looking up to ``wait_s``.
        Server 0 reads the vectors that have come (``nbytes`` each) and holds them for that round; another
        server reads server 0's invitation. With :attr:`movers`, :attr:`need` says, per mover, how many joins the
        servers read so far announced to this one (its invitation's second part, or server 0's sum over the vectors
        it holds)."""
        self.movers = movers
        if self.index != 0:
            if not self.invited and self._readable([0], wait_s):
                self._invitation(self.calls)
            return self.invited
        for j in self._readable([j for j in range(1, self.n) if j not in self.early], wait_s):
            self.early[j] = self._checked(j, self._recv(j, nbytes), check, 1)
        self.need = self._announced(0, self.early.values())
        opening = [float(v[-1]) for v in self.early.values() if _opens(v)]
        self.at = min(opening) if opening else None  # it reads while it waits: invited when the first arrives
        return bool(opening)

    def _announced(self, j: int, vectors) -> list[int]:
        """Per mover, the joins that the servers of ``vectors`` announced to server ``j`` (their counts sit before the
        TAIL, server by server: :meth:`ServerSync._round`)."""
        m, vectors = self.movers, list(vectors)
        at = -TAIL - self.n * m + j * m
        return [int(sum(round(float(v[at + i])) for v in vectors)) for i in range(m)]

    def _invite(self, k: int, own: torch.Tensor, parts: dict[int, torch.Tensor], waits: bool) -> None:
        """Invite every other server to round ``k``, at the round's invitation instant (:func:`invitation_at` over
        ``own`` and the vectors read so far, ``parts``; ``waits``: server 0 answers it as a waiting server); with
        :attr:`movers`, each also gets the joins announced to it in them, per mover, which it must have read before it
        answers as a waiting server."""
        at = round(invitation_at(own, parts.values(), waits) * 1e6)
        for j in range(1, self.n):
            self._call(j, lambda ch: ch.send(k.to_bytes(_LEN, "big") + at.to_bytes(_LEN, "big")))
            if self.movers:
                raw = b"".join(c.to_bytes(_LEN, "big") for c in self._announced(j, [own, *parts.values()]))
                self._call(j, lambda ch, raw=raw: ch.send(raw))

    def _invitation(self, k: int) -> None:
        """Server j: read server 0's invitation, which must be to round ``k`` (the one this server joins next), and
        with :attr:`movers` the joins announced to this server, per mover (each 0..:data:`MAX_JOINS` x servers)."""
        raw = bytes(self._call(0, lambda ch: ch.recv(2 * _LEN)))
        got, at = int.from_bytes(raw[:_LEN], "big"), int.from_bytes(raw[_LEN:], "big") / 1e6
        if got != k:
            raise SfsimError(f"backhaul: server 0 sent an invitation to sync round {got + 1} where round {k + 1} was "
                             "due; the servers can no longer agree on one model")
        if at > self.now() + AT_SLACK_S:
            raise SfsimError(f"backhaul: server 0 sent an invitation to sync round {k + 1} at {at:.3f} s, ahead of this "
                             f"server's clock ({self.now():.3f} s) by more than {AT_SLACK_S:g} s; the servers can no "
                             "longer agree on one model")
        if self.movers:
            raw = bytes(self._call(0, lambda ch: ch.recv(_LEN * self.movers)))
            need = [int.from_bytes(raw[i:i + _LEN], "big") for i in range(0, len(raw), _LEN)]
            bad = [c for c in need if c > MAX_JOINS * self.n]
            if bad:
                raise SfsimError(f"backhaul: server 0 sent an invitation to sync round {k + 1} that announces {bad[0]} "
                                 f"joins of a device (at most {MAX_JOINS * self.n}); the servers can no longer agree on "
                                 "one model")
            self.need = need
        self.invited, self.at = True, at

    def _readable(self, peers: list[int], wait_s: float) -> list[int]:
        """The peers among ``peers`` with something to read, waiting up to ``wait_s`` for the first."""
        if not peers:
            return []
        socks = {self.channels[j].sock: j for j in peers}
        try:
            ready, _, _ = select.select(list(socks), [], [], wait_s)
        except (OSError, ValueError) as err:
            raise SfsimError(f"backhaul: the links with the other servers failed ({err})") from None
        if not ready and wait_s >= self.timeout_s:
            raise SfsimError(f"backhaul: the link with server {peers[0]} failed (timed out); the servers can no "
                             "longer agree on one model")
        return sorted(socks[s] for s in ready)

    @staticmethod
    def _checked(j: int, got: torch.Tensor, check, servers: int) -> torch.Tensor:
        why = None if check is None else check(got, servers)
        if why is not None:
            raise SfsimError(f"backhaul: server {j} sent {why} in a sync round")
        return got

    def gather_json(self, obj: dict) -> list[dict] | None:
        """Server 0: every server's JSON-able ``obj`` in server order; the others send theirs and get ``None``.
        Plain JSON only (nothing is unpickled)."""
        blob = json.dumps(obj).encode()
        if self.index != 0:
            self._call(0, lambda ch: (ch.send(len(blob).to_bytes(_LEN, "big")), ch.send(blob)))  # two frames
            return None
        parts = [obj]
        for j in range(1, self.n):
            size = int.from_bytes(self._call(j, lambda ch: ch.recv(_LEN)), "big")
            if size > MAX_JSON:
                raise SfsimError(f"backhaul: server {j} sent an end-of-run part of {size} bytes (at most {MAX_JSON})")
            raw = self._call(j, lambda ch, size=size: ch.recv(size))
            try:
                part = json.loads(bytes(raw).decode())
            except (ValueError, RecursionError) as err:
                raise SfsimError(f"backhaul: server {j}'s end-of-run part is not plain JSON ({err})") from None
            if not isinstance(part, dict):
                raise SfsimError(f"backhaul: server {j}'s end-of-run part is not a JSON object")
            parts.append(part)
        return parts

    def _send(self, j: int, flat: torch.Tensor) -> None:
        self._call(j, lambda ch: ch.send(*wire.tensor_views({"state": flat.contiguous()})))

    def _recv(self, j: int, nbytes: int) -> torch.Tensor:
        got = wire.from_bytes(self._call(j, lambda ch: ch.recv(nbytes)), [("state", torch.float32, (nbytes // 4,))])
        if not bool(torch.isfinite(got["state"]).all()):
            raise SfsimError(f"backhaul: server {j} sent non-finite values (NaN or inf) in a sync round")
        return got["state"]

    def _call(self, j: int, fn):
        """``fn(channel to j)``, with a broken, forged or silent link as one line naming the server."""
        try:
            return fn(self.channels[j])
        except (OSError, WireError) as err:
            what = "timed out" if isinstance(err, TimeoutError) else str(err) or type(err).__name__
            raise SfsimError(f"backhaul: the link with server {j} failed ({what}); the servers can no longer "
                             "agree on one model") from None


def round_tail_error(flat: torch.Tensor, servers: int, now: float | None = None) -> str | None:
    """What is wrong with a round vector's tail (:meth:`ServerSync._round`) summed over ``servers`` servers (1: one
    server's own), or None: the weight must be >= 0, each of the four counts a whole number in 0..servers and the
    ``at`` an instant >= 0, not ahead of the reader's clock ``now`` (when given) by more than :data:`AT_SLACK_S`."""
    if flat.numel() < TAIL:
        return f"a vector of {flat.numel()} values (a round carries at least its {TAIL} counts)"
    weight, *counts, at = (float(v) for v in flat[-TAIL:])
    if not weight >= 0:
        return f"a weight of {weight:g} (the servers' training samples: >= 0)"
    bad = [c for c in counts if not (0 <= c <= servers and c == round(c))]
    if bad:
        return f"a count of {bad[0]:g} servers (0..{servers})"
    if not at >= 0 or (now is not None and at > now + AT_SLACK_S):
        ahead = "" if now is None else f", not after this server's clock ({now:.3f} s) + {AT_SLACK_S:g} s"
        return f"an instant of {at:g} s (its vector's arrival: >= 0{ahead})"
    return None


def _opens(flat: torch.Tensor) -> bool:
    """Whether one server's round vector opens the round (its last count, :meth:`ServerSync._round`)."""
    return flat.numel() >= TAIL and float(flat[-2]) > 0.5


def invitation_at(own: torch.Tensor, parts, waits: bool) -> float:
    """The instant server 0 invites the waiting servers to a round, from the vectors' ``at`` (each its arrival at
    server 0: :meth:`ServerSync._round`): as the simulator's (``sfsim.network.backhaul.Rounds._invite``), when the first
    vector that opens the round arrives, but not before server 0's own (``own``) unless it waits (it reads the others'
    vectors when its own has arrived); a round nobody opens, when the last arrives (no waiting server joins it). Not
    the instant server 0 happens to read them: a server that trains reads nothing meanwhile."""
    vectors = [own, *parts]
    opening = [float(v[-1]) for v in vectors if _opens(v)]
    if not opening:
        return max(float(v[-1]) for v in vectors)
    return min(opening) if waits else max(min(opening), float(own[-1]))


__all__ = ["ServerLinks", "invitation_at", "round_tail_error"]

"""Hostile peers: each bad message is sent by a real process that joined as a gloo rank, into a real server.

A run of ``fixtures/runtime_hostile.yaml`` has one honest device and eight slots; a hostile process
takes each slot (it holds the run's secret, so it is admitted), then sends one kind of bad message.
The server must drop exactly that peer, say why in ``metrics.json``, and finish training the honest
device. Messages are encrypted in these runs (``SFSIM_ENCRYPT=on``, the multi-host default), so
replayed and tampered frames are tried too. Also: a join with a forged secret is refused, a rank that
never joins ends the run with a one-line error naming it, and killing the launcher leaves no role.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sfsim.errors import SfsimError
from trainer.transport import secure, wire
from trainer.transport.wire import HEADER_LEN, Kind, Packet

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(model: str, out, **over):
    from trainer.run.runner import RunConfig

    kw = dict(devices=str(FIXTURES / "runtime_hostile.yaml"), model=model, task="sst2", method="splitfrozen",
              partition="iid", split=1, epochs=1, train_samples=40, eval_samples=8, max_len=48, lr=0.01,
              data_dir=str(FIXTURES / "data"), out=str(out), progress=False, launch="local", peer_timeout=20.0)
    kw.update(over)
    return RunConfig(**kw)


# -- a hostile peer: joins with the run's secret, then misbehaves in one way ----------------------------------
def _bytes(p: Packet) -> bytes:
    return wire.encode_header(p).numpy().tobytes()


def _send(ch, p: Packet, extra: bytes = b"") -> None:
    ch.send(_bytes(p))
    if p.tensors:
        ch.send(*wire.tensor_views(p.tensors), extra)


def _next(ch) -> Packet:
    """The next non-heartbeat message from the server (payloads read and thrown away)."""
    while True:
        p, specs = wire.decode_header(torch.frombuffer(ch.recv(HEADER_LEN * 8), dtype=torch.int64), wire.DOWN)
        if specs:
            ch.recv(wire.payload_bytes(specs))
        if p.kind != Kind.HEARTBEAT:
            return p


def _act(dev: int, mb: int, labels=(0, 1, 0, 1), hidden=None) -> Packet:
    h = torch.randn(4, 8, 32) if hidden is None else hidden
    return Packet(Kind.ACT, dev, mb, 0, 0, {"hidden": h, "attention_mask": torch.ones(4, 8, dtype=torch.uint8),
                                            "labels": torch.tensor(labels, dtype=torch.int64)})


def _report(dev: int, name: str, **over) -> Packet:
    rep = {"device": name, "flops": 0, "uplink_bytes": 0, "phase_s": {}, "peak_rss_bytes": 0, "cpu_s": 0.0,
           "clock_offset_s": 0.0, "stretched_s": 0.0, "header_bytes": 0, "events": [],
           "handovers": [], "emulation": {}}
    rep.update(over)
    blob = json.dumps(rep).encode() if "raw" not in over else over["raw"]
    return Packet(Kind.REPORT, dev, -1, 0, 0, {"blob": torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()})


class _Tap:
    """A socket that keeps a copy of everything sent through it (to replay a frame)."""

    def __init__(self, sock, forward: bool = True):
        self.sock, self.sent, self.forward = sock, [], forward

    def sendall(self, data) -> None:
        self.sent.append(bytes(data))
        if self.forward:
            self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def _hello_start(ch, dev: int, samples: int = 4) -> None:
    _send(ch, Packet(Kind.HELLO, dev, -1, 0, samples))
    while _next(ch).kind != Kind.START:
        pass


def _misbehave(how: str, ch, dev: int, name: str) -> None:
    """Send the bad message ``how`` (after a proper hello and start where the message needs them)."""
    if how in ("hello_huge", "hello_negative"):
        _send(ch, Packet(Kind.HELLO, dev, -1, 0, 80_000_000 if how == "hello_huge" else -5))
    elif how in ("adapter", "shard"):
        _hello_start(ch, dev)
        t = {"state": torch.zeros(10)} if how == "adapter" else \
            {k: torch.zeros(4, 8, dtype=torch.int64) for k in ("input_ids", "attention_mask")} | \
            {"labels": torch.zeros(4, dtype=torch.int64)}
        _send(ch, Packet(Kind.ADAPTER if how == "adapter" else Kind.SHARD, dev, -1, 0, 0, t))
    elif how == "big_payload":
        _hello_start(ch, dev)
        _send(ch, _act(dev, 0), extra=b"\0" * 64)  # 64 bytes more than the header announces
    elif how == "label":
        _hello_start(ch, dev)
        _send(ch, _act(dev, 0, labels=(0, 1, 7, 0)))
    elif how == "nan":
        _hello_start(ch, dev)
        h = torch.randn(4, 8, 32)
        h[1, 2, 3] = math.nan
        _send(ch, _act(dev, 0, hidden=h))
    elif how == "credits":  # the buffer gives 2 credits; 40 micro-batches at once
        _hello_start(ch, dev)
        for j in range(40):
            _send(ch, _act(dev, j))
    elif how in ("report_keys", "report_deep", "idle"):
        _hello_start(ch, dev, samples=0)  # nothing to train: the bad message is its end-of-run report
        while (p := _next(ch)).kind != Kind.END:
            if p.kind == Kind.SAVE:  # a checkpoint: a device answers with its report so far
                _send(ch, _report(dev, name))
        over = {"report_keys": {"flops": "many", "extra": 1}, "report_deep": {"raw": b"[" * 100_000 + b"]" * 100_000},
                "idle": {}}[how]
        _send(ch, _report(dev, name, **over))
    elif how == "replay":
        real = ch.sock
        ch.sock = _Tap(real)
        _send(ch, Packet(Kind.HELLO, dev, -1, 0, 4))
        real.sendall(b"".join(ch.sock.sent))  # the same hello again, byte for byte
    elif how == "tamper":
        _send(ch, Packet(Kind.HELLO, dev, -1, 0, 4))
        real = ch.sock
        ch.sock = _Tap(real, forward=False)
        _send(ch, Packet(Kind.HEARTBEAT, dev))  # framed and encrypted, not sent
        length, body = ch.sock.sent
        real.sendall(length + body[:20] + bytes([body[20] ^ 1]) + body[21:])  # one bit of the ciphertext flipped


def hostile(how: str, master: str, world: int, rank: int, log: str) -> None:
    """Entry of a hostile process: take rank ``rank`` with the run's secret and send the bad message ``how``."""
    from trainer.run.measure import Meter
    from trainer.transport.distributed import connect, sync_clock

    with open(log, "w", buffering=1) as out:
        try:
            if how == "forged":  # first try a wrong secret (refused), then join properly and behave
                try:
                    secure.join(*_host_port(master), rank, b"not-the-secret-but-long-enough", 120.0)
                    out.write("admitted with a forged secret\n")
                except SfsimError as err:
                    out.write(f"refused: {err}\n")
                how = "idle"
            if how == "impostor":  # an admitted member claims the honest device's rank 1 first, with its own key
                _claim_another_rank(master, rank, 1, out)
                how = "idle"
            ch = connect(rank, world, master, [f"d{i}" for i in range(world - 1)], secure.need_secret(), False, 10.0)[0]
            sync_clock(Meter())
            names = [f"h-{i}" for i in range(8)]
            _misbehave(how, ch, rank - 1, names[rank - 2])
            out.write(f"sent {how}\n")
            while True:  # read until the server ends or drops us
                _next(ch)
        except Exception as err:  # noqa: BLE001 (the end of the connection ends this process)
            out.write(f"ended: {type(err).__name__}: {err}\n")
        finally:
            os._exit(0)


def _claim_another_rank(master: str, mine: int, theirs: int, out) -> None:
    """Join as rank ``theirs`` holding only rank ``mine``'s credential (what the launcher gives a device): a
    hostile build proves the claim with the key it has; the server must refuse it."""
    real = secure.identity
    secure.identity = lambda secret, _rank: real(secret, mine)
    try:
        secure.join(*_host_port(master), theirs, secure.need_secret(), 120.0)
        out.write(f"took rank {theirs}\n")
    except SfsimError as err:
        out.write(f"refused: {err}\n")
    finally:
        secure.identity = real


def _host_port(master: str) -> tuple[str, int]:
    host, _, port = master.rpartition(":")
    return host, int(port)


def _run(tiny_gpt2, out: Path, roles: list[str], monkeypatch) -> dict:
    from trainer.run.launch import launch_local

    monkeypatch.setenv(secure.ENCRYPT_ENV, "on")
    targets = {rank: functools.partial(hostile, how) for rank, how in enumerate(roles, start=2)}
    return launch_local(_cfg(tiny_gpt2, out), targets=targets)


def _reasons(m: dict) -> dict[str, str]:
    return {name: why for name, why in m["dropped_peers"].items()}


def test_hostile_messages_during_training_drop_only_their_sender(tiny_gpt2, tmp_path, monkeypatch):
    roles = ["big_payload", "label", "nan", "credits", "adapter", "shard", "hello_huge", "hello_negative"]
    m = _run(tiny_gpt2, tmp_path / "a", roles, monkeypatch)
    why = _reasons(m)
    assert set(why) == {f"h-{i}" for i in range(8)}, why
    # (4, 8, 32) float32 + (4, 8) uint8 + (4,) int64 = 4160 bytes, + 24 of counter and tag
    expect = {"h-0": "frame of 4248 bytes where 4184 were announced",
              "h-1": "labels holds 7, outside 0..1", "h-2": "non-finite values (NaN or inf) in hidden",
              "h-3": "activations sent without a credit", "h-4": "does not accept ADAPTER messages",
              "h-5": "does not accept SHARD messages", "h-6": "a hello of 80000000 samples; this device holds 0..4",
              "h-7": "a hello of -5 samples"}
    for name, text in expect.items():
        assert text in why[name], (name, why[name])
    assert m["encrypted"] is True
    # the honest device's 2 micro-batches all train, plus the one the credit-abuser sent within its credits
    assert len(m["train_loss_history"]) == 2 + 1 and all(math.isfinite(x) for x in m["train_loss_history"])
    assert m["lost_devices"]["h-0"]["untrained_samples"] == 4 and "bad message" in m["lost_devices"]["h-0"]["reason"]
    json.loads((tmp_path / "a" / "metrics.json").read_text(), parse_constant=_no_constant)  # no bare NaN


def _no_constant(name: str):
    raise AssertionError(f"metrics.json holds a bare {name}")


def test_hostile_reports_and_frames_drop_only_their_sender(tiny_gpt2, tmp_path, monkeypatch):
    roles = ["report_keys", "report_deep", "replay", "tamper", "forged", "impostor", "idle", "idle"]
    m = _run(tiny_gpt2, tmp_path / "b", roles, monkeypatch)
    why = _reasons(m)
    assert set(why) == {"h-0", "h-1", "h-2", "h-3"}, why
    assert "bad report: a report must be a JSON object with the keys" in why["h-0"]
    assert "bad report: a report must be plain JSON (RecursionError)" in why["h-1"]
    assert "replayed message (counter 0, expected 1)" in why["h-2"]
    assert "forged or tampered message (authentication failed)" in why["h-3"]
    assert m["missing_reports"] == ["h-0", "h-1", "h-2", "h-3"]
    assert len(m["train_loss_history"]) == 2  # the honest device's micro-batches
    forged = (tmp_path / "b" / "logs" / "h-4.log").read_text()
    assert "refused: the server at 127.0.0.1" in forged and "refused rank 6" in forged, forged
    server = (tmp_path / "b" / "logs" / "server.log").read_text()
    assert "wrong secret (claimed rank 6)" in server, server
    # a member that claims another's rank is refused with a line; the real holder joins and trains in full
    impostor = (tmp_path / "b" / "logs" / "h-5.log").read_text()
    assert "refused: the server at 127.0.0.1" in impostor and "refused rank 1" in impostor, impostor
    assert "wrong secret (claimed rank 1)" in server and "honest" not in m["lost_devices"]
    assert m["samples_by_device"]["honest"] == 8


def test_a_role_credential_admits_its_own_rank_only(tmp_path):
    from trainer.transport.rendezvous import credential_file

    run_secret = tmp_path / "run.secret"
    run_secret.write_text("0123456789abcdef0123456789abcdef")
    cred = credential_file(tmp_path, run_secret, 3)
    assert cred.stat().st_mode & 0o777 == 0o600
    text = cred.read_bytes()
    assert secure.identity(text, 3) == secure.identity(b"0123456789abcdef0123456789abcdef", 3)
    with pytest.raises(SfsimError, match="is the credential of 3, not of rank 2"):
        secure.identity(text, 2)
    lsock = secure.listen("127.0.0.1", 0)
    with pytest.raises(SfsimError, match="a server admits with the run's secret, not a role credential"):
        secure.admit(lsock, text, {1: "a"}, 1.0, 0, False, print)
    lsock.close()


def hostile_at_b(how: str, master: str, world: int, rank: int, log: str) -> None:
    """A hostile device of ``runtime_hostile_two_servers.yaml``: admitted by srv-a, then by srv-b (its server)."""
    from trainer.run.measure import Meter
    from trainer.transport.distributed import connect, sync_clock

    names = ["honest-a", "honest-b", "h-0", "h-1"]
    with open(log, "w", buffering=1) as out:
        try:
            ch = connect(rank, world, master, names, secure.need_secret(), False, 10.0, servers=["srv-a", "srv-b"],
                         visits={"honest-a": [0], "honest-b": [1], "h-0": [1], "h-1": [1]})[1]
            sync_clock(Meter())
            _misbehave(how, ch, rank - 2, names[rank - 2])
            out.write(f"sent {how}\n")
            while True:
                _next(ch)
        except Exception as err:  # noqa: BLE001 (the end of the connection ends this process)
            out.write(f"ended: {type(err).__name__}: {err}\n")
        finally:
            os._exit(0)


def test_hostile_devices_of_a_second_server_drop_only_themselves(tiny_gpt2, tmp_path, monkeypatch):
    """Two servers: every device is admitted by srv-a and by the server it talks to, over encrypted channels;
    srv-b drops the two hostile devices, both servers train their honest device and end as one model."""
    from trainer.run.launch import launch_local

    monkeypatch.setenv(secure.ENCRYPT_ENV, "on")
    out = tmp_path / "two"
    targets = {4: functools.partial(hostile_at_b, "nan"), 5: functools.partial(hostile_at_b, "credits")}
    m = launch_local(_cfg(tiny_gpt2, out, devices=str(FIXTURES / "runtime_hostile_two_servers.yaml")),
                     targets=targets)
    why = _reasons(m)
    assert set(why) == {"h-0", "h-1"}, why
    assert "non-finite values (NaN or inf) in hidden" in why["h-0"]
    assert "activations sent without a credit" in why["h-1"]
    assert m["encrypted"] is True and "h-0" in m["lost_devices"] and "honest-b" not in m["lost_devices"]
    assert sorted(m["missing_reports"]) == ["h-0", "h-1"]
    assert m["servers"]["srv-a"]["sync_rounds"] > 0 and m["backhaul_bytes_by_server"]["srv-b"] > 0
    srv_b = (out / "logs" / "server-srv-b.log").read_text()
    assert "bad message from rank 4 (h-0)" in srv_b, srv_b
    from safetensors.torch import load_file

    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "servers" / "srv-b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _quit(master: str, world: int, rank: int, log: str) -> None:
    os._exit(0)  # dies before joining


def test_a_rank_that_never_joins_is_named(tiny_gpt2, tmp_path):
    from trainer.run.launch import launch_local

    cfg = _cfg(tiny_gpt2, tmp_path / "c", devices=str(FIXTURES / "runtime_tiny.yaml"), train_samples=24,
               peer_timeout=1.0)
    t = time.monotonic()
    with pytest.raises(SfsimError, match=r"^rendezvous: rank 3 \(small-1\) did not join within 10 s"):
        launch_local(cfg, targets={3: _quit})
    assert time.monotonic() - t < 60


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_killing_the_launcher_leaves_no_role(tiny_gpt2, tmp_path):
    out = tmp_path / "orphan"
    cmd = [sys.executable, "-m", "sfsim", "run", "--quiet", "--devices", str(FIXTURES / "runtime_tiny.yaml"),
           "--model", tiny_gpt2, "--task", "sst2", "--method", "splitfrozen", "--partition", "iid", "--split", "1",
           "--data-dir", str(FIXTURES / "data"), "--train-samples", "400", "--epochs", "3", "--max-len", "48",
           "--launch", "local", "--emulate", "compute", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids_file = out / "logs" / "pids.json"
    end = time.monotonic() + 120
    while not (pids_file.exists() and (out / "logs" / "server.alive").exists()):
        assert launcher.poll() is None and time.monotonic() < end, "the run did not start"
        time.sleep(0.1)
    pids = json.loads(pids_file.read_text())
    assert all(_alive(p) for p in pids.values())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    end = time.monotonic() + 5
    while any(_alive(p) for p in pids.values()) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids.values()), {n: p for n, p in pids.items() if _alive(p)}


@pytest.mark.slow
def test_a_hung_server_is_stopped(tiny_gpt2, tmp_path):
    """SIGSTOP the server mid-run: the launcher stops it after its heartbeat is 10 s old and says so."""
    import threading

    from trainer.run.launch import launch_local

    out, box = tmp_path / "hung", {}
    cfg = _cfg(tiny_gpt2, out, devices=str(FIXTURES / "runtime_tiny.yaml"), train_samples=40, epochs=3,
               emulate="compute", peer_timeout=2.0)

    def body():
        try:
            launch_local(cfg)
        except SfsimError as err:
            box["error"] = str(err)

    t = threading.Thread(target=body)
    t.start()
    end = time.monotonic() + 120
    while not ((out / "logs" / "server.alive").exists() and (out / "logs" / "pids.json").exists()):
        assert time.monotonic() < end
        time.sleep(0.1)
    pids = json.loads((out / "logs" / "pids.json").read_text())
    os.kill(pids["server"], signal.SIGSTOP)
    t.join(60)
    assert not t.is_alive() and box["error"].startswith("the server did not respond for 10 s (hung)"), box
    assert not any(_alive(p) for p in pids.values())


# -- the secure channel and admission, without processes -------------------------------------------------------
def _pair(encrypt: bool = True):
    import socket

    a, b = socket.socketpair()
    k1, k2 = os.urandom(32), os.urandom(32)
    return secure.Channel(a, (k1, k2) if encrypt else None), secure.Channel(b, (k2, k1) if encrypt else None)


def test_channel_round_trip_and_refusals():
    tx, rx = _pair()
    assert tx.send(b"hello") == 4 + 8 + 5 + 16  # length, counter, content, tag
    assert rx.recv(5) == b"hello"
    tx.send(b"abc")
    with pytest.raises(wire.WireError, match="frame of 27 bytes where 28 were announced"):
        rx.recv(4)
    tx, rx = _pair()
    real = tx.sock
    tx.send(b"first")
    tx.sock = _Tap(real, forward=False)
    tx.send(b"again")
    length, body = tx.sock.sent
    real.sendall(length + body[:-1] + bytes([body[-1] ^ 1]))  # one bit of the tag flipped
    assert rx.recv(5) == b"first"
    with pytest.raises(wire.WireError, match="forged or tampered"):
        rx.recv(5)
    tx, rx = _pair()
    real = tx.sock
    tx.sock = _Tap(real)
    tx.send(b"once")
    real.sendall(b"".join(tx.sock.sent))
    assert rx.recv(4) == b"once"
    with pytest.raises(wire.WireError, match=r"replayed message \(counter 0, expected 1\)"):
        rx.recv(4)
    tx, rx = _pair(encrypt=False)
    assert tx.send(b"ab") == 6 and rx.recv(2) == b"ab"


def test_secret_file_must_be_private(tmp_path, monkeypatch):
    f = tmp_path / "s"
    f.write_text("0123456789abcdef0123")
    f.chmod(0o644)
    monkeypatch.setenv(secure.SECRET_FILE_ENV, str(f))
    with pytest.raises(SfsimError, match="readable by group or others .* chmod 600"):
        secure.load_secret()
    f.chmod(0o600)
    assert secure.load_secret() == b"0123456789abcdef0123"
    assert (secure.new_secret_file(tmp_path).stat().st_mode & 0o777) == 0o600
    monkeypatch.delenv(secure.SECRET_FILE_ENV)
    monkeypatch.delenv(secure.SECRET_ENV, raising=False)
    with pytest.raises(SfsimError, match="needs its secret on every role"):
        secure.need_secret()


def test_admission_refuses_a_wrong_secret_and_a_taken_rank():
    import threading

    lsock = secure.listen("127.0.0.1", 0)
    port, lines, box = lsock.getsockname()[1], [], {}
    t = threading.Thread(target=lambda: box.update(ch=secure.admit(lsock, b"s" * 32, {1: "a", 2: "b"}, 20.0, 4321,
                                                                   True, lines.append)))
    t.start()
    with pytest.raises(SfsimError, match="refused rank 1"):
        secure.join("127.0.0.1", port, 1, b"x" * 32, 5.0)
    ch1, store = secure.join("127.0.0.1", port, 1, b"s" * 32, 5.0)
    with pytest.raises(SfsimError, match="refused rank 1"):
        secure.join("127.0.0.1", port, 1, b"s" * 32, 5.0)
    ch2, _ = secure.join("127.0.0.1", port, 2, b"s" * 32, 5.0)
    t.join(10)
    assert store == 4321 and ch1.encrypted and sorted(box["ch"]) == [1, 2]
    assert [line.split(": ", 1)[1] for line in lines] == ["wrong secret (claimed rank 1)", "rank 1 is taken"]
    ch1.send(b"up")
    assert box["ch"][1].recv(2) == b"up"
    with pytest.raises(SfsimError, match=r"^rendezvous: rank 1 \(a\) did not join within 0.5 s"):
        secure.admit(lsock, b"s" * 32, {1: "a"}, 0.5, 1, False, lines.append)

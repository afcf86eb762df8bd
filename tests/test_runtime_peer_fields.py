"""What a peer sends in the resume, handover and backhaul paths is checked before use (type, range, finite,
shape), and a malformed field costs at most its sender (on the backhaul, where the servers must stay one model,
the run ends with one line naming the server)."""

from __future__ import annotations

import threading

import pytest
import torch

from sfsim.errors import SfsimError


def _linked():
    """Server 0's and server 1's ``ServerLinks`` over one loopback connection, and server 1's raw channel."""
    import socket

    from trainer.transport.backhaul import ServerLinks
    from trainer.transport.secure import Channel

    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    ch0, ch1 = Channel(a), Channel(b)
    return ServerLinks(0, 2, {1: ch0}, 5.0), ServerLinks(1, 2, {0: ch1}, 5.0), ch1


def test_a_round_tail_must_be_a_weight_and_counts_of_servers():
    from trainer.transport.backhaul import TAIL, round_tail_error

    assert TAIL == 6  # weight, servers training, not adopting, stepping, opening the round, at
    assert round_tail_error(torch.tensor([0.5, 0.5, 3.0, 1.0, 0.0, 1.0, 1.0, 2.5]), 1) is None
    assert round_tail_error(torch.tensor([9.0, 2.0, 1.0, 0.0, 2.0, 0.0]), 2) is None  # a sum over two servers
    assert round_tail_error(torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]), 1) == "a weight of -1 (the servers' " \
                                                                                 "training samples: >= 0)"
    assert round_tail_error(torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0]), 1) == "a count of 2 servers (0..1)"
    assert round_tail_error(torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0, 0.0]), 2) == "a count of 0.5 servers (0..2)"
    assert round_tail_error(torch.tensor([1.0, 1.0, 0.0, 0.0, 3.0, 0.0]), 2) == "a count of 3 servers (0..2)"  # opening
    assert round_tail_error(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]), 1) == "a vector of 5 values (a round carries at " \
                                                                            "least its 6 counts)"


def test_a_rounds_instant_must_be_a_time_not_ahead_of_the_readers_clock():
    """The tail's ``at`` (a vector's arrival at server 0; in the sum, the round's invitation instant): >= 0 and, given
    the reader's clock, not ahead of it by more than AT_SLACK_S (1 s); an invitation's instant too (server 0)."""
    from trainer.transport.backhaul import round_tail_error

    assert round_tail_error(torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 10.5]), 1, now=10.0) is None  # within the slack
    assert round_tail_error(torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, -0.5]), 1) == "an instant of -0.5 s (its vector's " \
                                                                                  "arrival: >= 0)"
    assert round_tail_error(torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 12.0]), 1, now=10.0) == (
        "an instant of 12 s (its vector's arrival: >= 0, not after this server's clock (10.000 s) + 1 s)")
    s0, s1, _ = _linked()
    s1.now = lambda: 5.0
    s0.channels[1].send((0).to_bytes(8, "big") + (7_000_000).to_bytes(8, "big"))  # round 1, at 7 s
    with pytest.raises(SfsimError, match=r"^backhaul: server 0 sent an invitation to sync round 1 at 7\.000 s, ahead "
                                         r"of this server's clock \(5\.000 s\) by more than 1 s"):
        for _ in range(200):
            s1.opened(16, wait_s=0.01)


def test_a_server_whose_round_tail_is_malformed_ends_the_round_in_one_line_naming_it():
    """Server 1 sends a negative weight: server 0 refuses it before adding it; a sum from server 0 with a count
    beyond the servers is refused by server 1. Well-formed rounds sum as before."""
    from trainer.transport.backhaul import round_tail_error

    s0, s1, ch1 = _linked()
    x0, x1 = torch.tensor([2.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0]), torch.tensor([4.0, 3.0, 1.0, 1.0, 0.0, 0.0, 1.5])
    th = threading.Thread(target=s1.all_reduce, args=(x1, round_tail_error))
    th.start()
    s0.all_reduce(x0, check=round_tail_error)
    th.join()  # the sum's at: the invitation instant (nobody opened it: the last arrival, 2 s)
    assert torch.equal(x0, torch.tensor([6.0, 4.0, 2.0, 1.0, 0.0, 1.0, 2.0])) and torch.equal(x0, x1)
    ch1.send(torch.tensor([1.0, -3.0, 1.0, 0.0, 0.0, 0.0, 0.0]).numpy().tobytes())
    with pytest.raises(SfsimError, match=r"backhaul: server 1 sent a weight of -3 .* in a sync round"):
        s0.all_reduce(torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]), check=round_tail_error)
    s0b, s1b, _ = _linked()
    err = {}

    def server_1() -> None:
        try:
            s1b.all_reduce(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]), check=round_tail_error)
        except SfsimError as e:
            err["e"] = str(e)

    th = threading.Thread(target=server_1)
    th.start()
    s0b.all_reduce(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]))  # server 0 says 6 servers still train (of 2)
    th.join()
    assert err["e"].startswith("backhaul: server 0 sent a count of 6 servers (0..2) in a sync round")


def _part(dev: str, srv: str, **change) -> dict:
    """A server's end-of-run part as ``trainer.run.launch`` gathers it, with ``change`` in its metrics."""
    m = {"method": "splitfrozen", "notes": {}, "device_flops": {dev: 1}, "uplink_bytes_by_device": {dev: 2},
         "downlink_bytes_by_device": {dev: 3}, "samples_by_device": {dev: 4}, "uplink_bytes": 2, "missing_reports": [],
         "handovers": [{"device": dev, "at_s": 1.5}], "peak_rss_bytes": 10, "server_flops": {srv: 5},
         "train_loss_history": [0.5], "eval_accuracy": 0.5, "phase_s": {"F": 0.25}}
    return {"metrics": {**m, **change}, "events": [[srv, "F", 0.0, 0.1, 0, dev]],
            "sync": {"sync_rounds": 2, "backhaul_bytes": 8, "steps": 1, "every": None, "mode": "sync", "joint": False}}


@pytest.mark.parametrize(("bad", "why"), [
    ({"uplink_bytes": -5}, "malformed uplink_bytes"),
    ({"handovers": [{"device": "e", "at_s": "soon"}]}, "malformed handovers"),
    ({"phase_s": {"F": float("nan")}}, "malformed phase_s"),
    ({"uplink_bytes_by_device": [2]}, "malformed uplink_bytes_by_device"),
    ({"missing_reports": None}, "malformed missing_reports"),
])
def test_a_servers_malformed_end_of_run_part_is_one_line_naming_it(bad, why):
    from trainer.run.fleet import Fleet
    from trainer.run.merge import merge_servers

    fl = Fleet(["mec-a", "mec-b"], ["d", "e"], {"d": 0, "e": 1})
    m = merge_servers([_part("d", "mec-a"), _part("e", "mec-b")], fl)
    assert m["uplink_bytes"] == 4 and m["uplink_bytes_by_device"] == {"d": 2, "e": 2}
    assert [h["device"] for h in m["handovers"]] == ["d", "e"]
    with pytest.raises(SfsimError, match=f"^backhaul: server mec-b's end-of-run part: {why}$"):
        merge_servers([_part("d", "mec-a"), _part("e", "mec-b", **bad)], fl)
    part = _part("e", "mec-b")
    part["events"] = [["mec-b", "F", "then", 0.1, 0, "e"]]
    with pytest.raises(SfsimError, match="server mec-b's end-of-run part: malformed events"):
        merge_servers([_part("d", "mec-a"), part], fl)
    with pytest.raises(SfsimError, match=r"part: not \{metrics"):
        merge_servers([_part("d", "mec-a"), {"metrics": []}], fl)


def test_a_reported_handover_must_name_the_runs_servers():
    from trainer.transport.distributed import parse_report, report_blob

    def report(to: str) -> dict:
        return {"device": "d", "flops": 1, "uplink_bytes": 2, "phase_s": {}, "peak_rss_bytes": 3, "cpu_s": 0.5,
                "clock_offset_s": -0.1, "stretched_s": 0.0, "header_bytes": 4, "events": [], "emulation": {},
                "handovers": [{"device": "d", "at_s": 0.5, "from": "mec-a", "to": to, "epoch": 0, "sent_before": 1}]}

    assert parse_report(report_blob(report("mec-b")), "d", ["mec-a", "mec-b"])["handovers"][0]["to"] == "mec-b"
    assert parse_report(report_blob(report("x" * 500)), "d")["handovers"][0]["to"] == "x" * 500  # no names given
    with pytest.raises(ValueError, match="names a server the run does not have"):
        parse_report(report_blob(report("x" * 500)), "d", ["mec-a", "mec-b"])


def test_a_checkpoint_report_must_name_the_runs_servers_as_the_end_of_run_report():
    """At a checkpoint, a device's report whose handover names a server no leg of the run has drops its sender."""
    from types import SimpleNamespace

    from trainer.run.resume import _one_report
    from trainer.transport.distributed import report_blob

    def report(to: str) -> dict:
        return {"device": "d", "flops": 1, "uplink_bytes": 2, "phase_s": {}, "peak_rss_bytes": 3, "cpu_s": 0.5,
                "clock_offset_s": -0.1, "stretched_s": 0.0, "header_bytes": 4, "events": [], "emulation": {},
                "handovers": [{"device": "d", "at_s": 0.5, "from": "mec-a", "to": to, "epoch": 0, "sent_before": 1}]}

    class Tr:
        def __init__(self, to: str):
            self.blob, self.dropped, self.drops = report_blob(report(to)), {}, []

        def recv_up(self, name, kinds):
            return SimpleNamespace(tensors={"blob": self.blob})

        def drop(self, name, why):
            self.drops.append((name, why))

    good, reports = Tr("mec-b"), {}
    assert _one_report(good, "d", reports, ["mec-a", "mec-b"]) is None and reports["d"]["handovers"][0]["to"] == "mec-b"
    bad, reports = Tr("mec-x"), {}
    why = _one_report(bad, "d", reports, ["mec-a", "mec-b"])
    assert why == ("bad report: report handover {'device': 'd', 'at_s': 0.5, 'from': 'mec-a', 'to': 'mec-x', 'epoch': 0, "
                   "'sent_b names a server the run does not have")
    assert reports == {} and bad.drops == [("d", why)] and bad.dropped == {"d": why}


def _idle_for(sync, state, seconds: float) -> None:
    """``sync.idle(state)`` again and again for ``seconds`` (a server waiting for a visitor), then its round in flight."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        sync.idle(state)
    if sync._idle is not None:
        sync._idle.join()


def test_a_waiting_server_answers_no_round_while_the_other_has_drained():
    """Server 1 waits for a visitor (``idle`` called again and again for 0.3 s) while server 0 has drained (its
    ``finish``): nobody opens a round, so they trade none (they used to trade a round every few milliseconds, then
    one, a count that depended on timing); then server 1 drains too: the drain round and the closing one, 2 in all,
    and both hold the same average."""
    from trainer.transport.backhaul import ServerSync

    s0, s1, _ = _linked()
    a, b = ServerSync(s0, 0, 2, 2, "sync", 1.0, None, "a"), ServerSync(s1, 1, 2, 2, "sync", 1.0, None, "b")
    x0, x1 = [torch.ones(3)], [torch.full((3,), 3.0)]
    th = threading.Thread(target=a.finish, args=(x0,))
    th.start()
    _idle_for(b, x1, 0.3)
    assert b.rounds == 0 and a.rounds == 0
    b.finish(x1)
    th.join(timeout=10)
    assert not th.is_alive()
    assert a.rounds == b.rounds == 2 and torch.equal(x0[0], x1[0]) and torch.equal(x0[0], torch.full((3,), 2.0))


@pytest.mark.parametrize("waiter", [0, 1])
def test_a_waiting_server_joins_exactly_the_rounds_the_other_opens(waiter):
    """The server that waits (server 0, which reads the other's vectors, or server 1, which server 0 invites) joins
    each round the other opens from a step (every 2 steps: rounds after steps 2 and 4), and no other; then it
    drains with the other: 2 + drain + closing = 4 rounds on each, the same whoever waits."""
    import time

    from trainer.transport.backhaul import ServerSync

    s0, s1, _ = _linked()
    syncs = [ServerSync(s0, 0, 2, 2, "sync", 1.0, None, "a"), ServerSync(s1, 1, 2, 2, "sync", 1.0, None, "b")]
    trainer, waiting = syncs[1 - waiter], syncs[waiter]
    xt, xw = [torch.ones(3)], [torch.zeros(3)]

    def train() -> None:
        for _ in range(4):
            time.sleep(0.05)
            trainer.after_step(xt)
        trainer.finish(xt)

    th = threading.Thread(target=train)
    th.start()
    _idle_for(waiting, xw, 0.5)
    assert waiting.rounds == trainer.rounds == 2  # the trainer's two rounds, answered with weight 0
    waiting.finish(xw)
    th.join(timeout=10)
    assert not th.is_alive() and trainer.rounds == waiting.rounds == 4 and torch.equal(xt[0], xw[0])


def test_two_waiting_servers_trade_no_rounds_and_end_when_both_drain():
    """Both servers wait for a visitor for 0.3 s (each could hang for ever on a round the other never joins): no
    round at all; then both drain: one drain round (none trains) and, since nobody took an average, the closing."""
    from trainer.transport.backhaul import ServerSync

    s0, s1, _ = _linked()
    a, b = ServerSync(s0, 0, 2, 2, "sync", 1.0, None, "a"), ServerSync(s1, 1, 2, 2, "sync", 1.0, None, "b")
    x0, x1 = [torch.ones(3)], [torch.full((3,), 3.0)]
    th = threading.Thread(target=_idle_for, args=(a, x0, 0.3))
    th.start()
    _idle_for(b, x1, 0.3)
    th.join(timeout=10)
    assert a.rounds == b.rounds == 0
    th = threading.Thread(target=a.finish, args=(x0,))
    th.start()
    b.finish(x1)
    th.join(timeout=10)
    assert not th.is_alive() and a.rounds == b.rounds == 2 and torch.equal(x0[0], x1[0])


def test_an_invitation_to_another_round_than_the_one_due_is_one_line_naming_server_0():
    """Server 1 waits for its first round (round 1); server 0's invitation names round 3: refused in one line."""
    s0, s1, _ = _linked()
    s0.channels[1].send((2).to_bytes(8, "big") + (0).to_bytes(8, "big"))
    with pytest.raises(SfsimError, match=r"^backhaul: server 0 sent an invitation to sync round 3 where round 1 was "
                                         r"due"):
        for _ in range(200):
            s1.opened(16, wait_s=0.01)


def test_a_waiting_server_answers_an_open_round_only_after_the_joins_announced_before_it():
    """Server 0 has read a device's ``moved`` towards server 1 (it announces that join) and opens a round after its
    2nd step; server 1, waiting, is invited at once but must not answer before it has read that join, whichever comes
    first: 0.3 s of waiting answer nothing. Once the join is read it trains its visitor and joins that same round
    from its own step: one round on each, then the drain and closing rounds, as with the join read first."""
    from trainer.transport.backhaul import ServerSync

    s0, s1, _ = _linked()
    a, b = ServerSync(s0, 0, 2, 2, "sync", 1.0, None, "a"), ServerSync(s1, 1, 2, 2, "sync", 1.0, None, "b")
    for sync in (a, b):
        sync.track(["mover", "other"])
    xa, xb = [torch.ones(3)], [torch.full((3,), 3.0)]
    a.announce("mover", [1])

    def train() -> None:
        a.after_step(xa)
        a.after_step(xa)
        a.finish(xa)

    th = threading.Thread(target=train)
    th.start()
    _idle_for(b, xb, 0.3)
    assert b.rounds == 0 and s1.invited and s1.need == [1, 0]
    b.joined("other")  # another device's join does not stand for mover's
    _idle_for(b, xb, 0.1)
    assert b.rounds == 0
    b.joined("mover")
    b.after_step(xb)
    b.after_step(xb)
    b.finish(xb)
    th.join(timeout=10)
    assert not th.is_alive() and a.rounds == b.rounds == 3 and torch.equal(xa[0], xb[0])


def test_malformed_join_counts_are_one_line_naming_the_server():
    """An invitation announcing more joins than any run has (server 0) and a round vector whose join count is not a
    whole number in range (server 1) are refused before use, in one line."""
    from trainer.transport.backhaul import MAX_JOINS, ServerSync

    s0, s1, _ = _linked()
    s0.channels[1].send((0).to_bytes(8, "big") + (0).to_bytes(8, "big"))  # round 1, at 0 s
    s0.channels[1].send((3).to_bytes(8, "big") + (2 * MAX_JOINS + 1).to_bytes(8, "big"))
    with pytest.raises(SfsimError, match=rf"^backhaul: server 0 sent an invitation to sync round 1 that announces "
                                         rf"{2 * MAX_JOINS + 1} joins of a device \(at most {2 * MAX_JOINS}\)"):
        for _ in range(200):
            s1.opened(16, wait_s=0.01, movers=2)
    s0, s1, _ = _linked()
    s0.channels[1].send((0).to_bytes(8, "big") + (0).to_bytes(8, "big"))
    s0.channels[1].send((3).to_bytes(8, "big"))  # one count where two movers' were due: a frame of the wrong size
    with pytest.raises(SfsimError, match=r"^backhaul: the link with server 0 failed \(.*\); the servers can no longer"):
        for _ in range(200):
            s1.opened(16, wait_s=0.01, movers=2)
    s0, s1, ch1 = _linked()
    a = ServerSync(s0, 0, 2, 2, "sync", 1.0, None, "a")
    a.track(["mover"])
    ch1.send(torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]).numpy().tobytes())
    with pytest.raises(SfsimError, match=r"^backhaul: server 1 sent a count of 0.5 joins \(0\.\.\d+\) in a sync round"):
        a.after_step([torch.ones(1)])
        a.after_step([torch.ones(1)])


def test_a_waiting_server_stops_awaiting_the_joins_of_a_device_it_has_lost():
    """Server 0 read mover's ``moved`` towards server 1 and announces its join, but mover dies before it sends it:
    server 1, waiting (for another visitor too), is invited and holds the round for the join; once it has lost mover
    (its connection closed: everything it sent was read first) it awaits none of mover's joins and answers the round,
    so the run goes on instead of waiting for the backhaul's timeout."""
    from trainer.transport.backhaul import ServerSync

    s0, s1, _ = _linked()
    a, b = ServerSync(s0, 0, 2, 2, "sync", 1.0, None, "a"), ServerSync(s1, 1, 2, 2, "sync", 1.0, None, "b")
    lost = {}
    a.track(["mover", "other"])
    b.track(["mover", "other"], {}, lost)
    xa, xb = [torch.ones(3)], [torch.full((3,), 3.0)]
    a.announce("mover", [1])

    def train() -> None:
        a.after_step(xa)
        a.after_step(xa)
        a.finish(xa)

    th = threading.Thread(target=train)
    th.start()
    _idle_for(b, xb, 0.3)
    assert b.rounds == 0 and s1.need == [1, 0]
    lost["mover"] = {"reason": "connection: closed", "untrained_samples": 12}  # what Method.lose records
    _idle_for(b, xb, 0.3)
    assert b.rounds == 1  # mec-a's round, answered with zeros by the waiting server
    b.finish(xb)
    th.join(timeout=10)
    assert not th.is_alive() and a.rounds == b.rounds == 3 and torch.equal(xa[0], xb[0])

"""CenLoRA's data is at the server before training (the simulator's model: no device work, no device links; so says
trainer.transport.dynamics): the runtime's devices still hand their shards over, once, but the emulated links do not
shape them, so its training starts when the simulator's does (``sfsim validate``'s ``epochs2-cenlora`` was -66% for
it: the shards went up at the scenario's 2 Mbps inside the measured span)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sfsim.outputs.trace import read_chrome_trace

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.usefixtures("one_torch_thread")
def test_the_shards_go_up_unshaped_and_are_counted(tiny_gpt2, tmp_path):
    """runtime_tiny.yaml on a 0.02 Mbps uplink: big's shard (16 rows of up to 48 tokens, ~12 kB) would take ~5 s
    shaped. The server's first forward starts less than 2.5 s after the first shard leaves (a margin of 2.5 s for
    the machine's load); the shards' bytes are still counted on the devices' uplinks."""
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run

    data = yaml.safe_load((FIXTURES / "runtime_tiny.yaml").read_text())
    for d in data["devices"]:
        d["uplink"] = {"bandwidth": "0.02 Mbps", "latency": "5 ms"}
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(data))
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=path, method="cenlora", emulate="all", server_order="fifo"))
    events = read_chrome_trace(tmp_path / "run" / "trace.json")
    sends = [e for e in events if e.op == "send" and e.lane.startswith("link:")]
    first_f = min(e.start for e in events if e.op == "F" and e.lane == "srv")
    assert {e.device for e in sends} == {"big", "small-0", "small-1"}
    assert first_f - min(e.start for e in sends) < 2.5
    assert m["uplink_bytes_by_device"]["big"] > 12_000 * 0.5 and min(m["uplink_bytes_by_device"].values()) > 0


class _Recorder:
    """A transport that only records what a device sends up."""

    arrival_order = False

    def __init__(self):
        self.up = []

    def send_up(self, msg, *_):
        self.up.append((msg.device, msg.kind, msg.mb, msg.aux, sorted(msg.tensors)))


def test_a_distributed_device_sends_its_shard_with_its_hello(tiny_gpt2, tmp_path):
    """No round trip before the first forward: a distributed device (``trainer.run.launch._device`` calls ``hello``)
    sends its shard right after its hello; the server's ``start`` then finds it already there, and the device sends
    nothing more. A device never said hello to (in process) still sends it on ``start``, once."""
    from tests.test_multiserver import _cfg
    from trainer.run.runner import build
    from trainer.transport.runtime import Message

    b = build(_cfg(tiny_gpt2, tmp_path / "o", devices=str(FIXTURES / "runtime_tiny.yaml"), method="cenlora"))
    method, (big, small, _) = b.method, b.setup.devices
    rec = b.setup.transport = _Recorder()
    method.hello(big, -1)
    assert rec.up == [("big", "hello", -1, 16, []),
                      ("big", "shard", -1, 0, ["attention_mask", "input_ids", "labels"])]
    method.handle(big, Message("big", -1, kind="start"))
    assert len(rec.up) == 2
    method.handle(small, Message("small-0", -1, kind="start"))
    method.handle(small, Message("small-0", -1, kind="start"))
    assert rec.up[2:] == [("small-0", "shard", -1, 0, ["attention_mask", "input_ids", "labels"])]

"""``--server-ports``: servers after the first admit their devices on fixed ports, validated in one line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sfsim.errors import SfsimError
from trainer.transport.rendezvous import parse_ports, server_ports

FIXTURES = Path(__file__).parent / "fixtures"
SERVERS = ["mec-a", "mec-b", "mec-c"]


def test_one_port_per_server_after_the_first():
    assert server_ports("29600, 29601", SERVERS, "10.0.0.2:29500") == {1: 29600, 2: 29601}
    assert server_ports(None, SERVERS, "10.0.0.2:29500") == {} and parse_ports("") == []


@pytest.mark.parametrize("text, message", [
    ("29600", r"the scenario has 3 servers, so give 2 port\(s\), one for each server after mec-a \(mec-b, mec-c\)"),
    ("29600,29601,29602", "so give 2 port"),
    ("29600,0", r"'0' is not a port in 1\.\.65535"),
    ("29600,70000", r"'70000' is not a port"),
    ("29600,abc", r"'abc' is not a port"),
    ("29600,29600", "port 29600 is given twice"),
    ("29500,29601", "29500 for server mec-b is --master's port"),
])
def test_bad_server_ports_are_one_line(text, message):
    with pytest.raises(SfsimError, match=message):
        server_ports(text, SERVERS, "10.0.0.2:29500")


def test_under_torchrun_the_store_and_admission_ports_are_taken(monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(SfsimError, match=r"29501 for server mec-c is server 0's admission port \(MASTER_PORT \+ 1\)"):
        server_ports("29600,29501", SERVERS, None)


def test_the_run_config_refuses_a_malformed_list(tiny_gpt2, tmp_path):
    from trainer.run.runner import RunConfig

    with pytest.raises(SfsimError, match="--server-ports 29600,x"):
        RunConfig(devices=str(FIXTURES / "runtime_two_servers.yaml"), model=tiny_gpt2, task="sst2",
                  method="splitfrozen", partition="iid", out=str(tmp_path), server_ports="29600,x")


@pytest.mark.usefixtures("one_torch_thread")
def test_the_second_server_admits_its_devices_on_the_port_given(tiny_gpt2, tmp_path):
    from trainer.run.launch import run
    from trainer.run.runner import RunConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    m = run(RunConfig(devices=str(FIXTURES / "runtime_two_servers.yaml"), model=tiny_gpt2, task="sst2",
                      method="splitfrozen", partition="iid", epochs=1, train_samples=16, eval_samples=8, max_len=48,
                      data_dir=str(FIXTURES / "data"), out=str(out), progress=False, launch="local",
                      server_order="round-robin", count_flops=False, server_ports=str(port)))
    assert f"server rank 1 admits its devices on 127.0.0.1:{port}" in (out / "logs" / "server-mec-b.log").read_text()
    assert m["lost_devices"] == {} and set(m["samples_by_device"]) == {"a-0", "b-0", "a-1", "b-1"}

"""Plan files: round trip and checks against a scenario."""

import copy

import pytest

from sfsim import Plan, load_plan, scenario_from_dict
from sfsim.errors import ConfigError
from tests.test_scenario import BASE


def _plan(**kw):
    args = dict(splits={"pi-0": 1, "pi-1": 2, "laptop": 3}, lora_start=3,
                assignment={"pi-0": "srv", "pi-1": "srv", "laptop": "srv"}, makespan_s=12.5, bottleneck="srv")
    args.update(kw)
    return Plan(**args)


def test_round_trip(tmp_path):
    sc = scenario_from_dict(copy.deepcopy(BASE))
    path = tmp_path / "plan.yaml"
    _plan().save(path)
    back = load_plan(path, scenario=sc)
    assert back == _plan()
    assert path.read_text().startswith("# sfsim plan")


@pytest.mark.parametrize("kw, message", [
    ({"lora_start": 2}, "p.yaml: lora_start: 2 is below the largest cut 3; LoRA must start at or above every cut"),
    ({"splits": {"pi-0": 1, "pi-1": 12, "laptop": 1}}, "p.yaml: splits.pi-1: cut 12 is beyond the model's depth"),
    ({"splits": {"pi-0": 1, "laptop": 1}}, "p.yaml: splits: no cut for device 'pi-1'; re-run sfsim plan"),
    ({"assignment": {"pi-0": "cloud"}}, "p.yaml: assignment.pi-0: no server named 'cloud'; servers are: srv"),
])
def test_check_rejects(kw, message):
    sc = scenario_from_dict(copy.deepcopy(BASE))
    with pytest.raises(ConfigError) as exc:
        _plan(**kw).check(sc, file="p.yaml")
    assert str(exc.value).startswith(message)


def test_unknown_key_in_plan_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("splits: {a: 1}\nlora_start: 1\nassignment: {}\ncut: 3\n")
    with pytest.raises(ConfigError, match="p.yaml: cut: unknown key"):
        load_plan(path)

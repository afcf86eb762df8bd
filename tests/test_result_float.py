"""A run in which every device leaves before it trains (FedLoRA, drop churn at once): the result's figures are floats
on both engines, so ``auto`` and ``simpy`` write the same JSON. (Written when SimPy's clock stayed at its int 0 here;
since a FedLoRA round starts with the adapter's download (fed21), the devices' downloads move it to 0.096 s.)"""

import sfsim
from sfsim.scenario.config import scenario_from_dict

FLEET = {
    "model": {"name": "gpt2", "seq_len": 64, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 2, "buffer": 8, "lora": {"rank": 4, "alpha": 8}, "seed": 26},
    "servers": [{"name": "s0", "flops": "20 TFLOPS", "memory": "24 GiB"}],
    "devices": [{"name": "t0", "count": 3, "flops": "200 GFLOPS", "memory": "4 GiB", "samples": 40,
                 "uplink": {"bandwidth": "300 Mbps", "latency": "1 ms"},
                 "downlink": {"bandwidth": "50 Mbps", "latency": "1 ms"},
                 "availability": {"mean_on": "1 s", "mean_off": "0.3 s", "churn": "drop"}}],
}


def test_a_run_that_trains_nothing_writes_the_same_json_on_both_engines():
    sc = scenario_from_dict(FLEET, source="fresh.yaml")
    slow, fast = (sfsim.simulate(sc, "fedlora", engine=e) for e in ("simpy", "auto"))
    assert (slow.micro_batches, slow.samples_not_trained) == (0, {"t0-0": 40, "t0-1": 40, "t0-2": 40})
    assert type(slow.makespan_s) is float and slow.makespan_s == 0.09635616
    assert slow.to_json().replace('"simpy"', '"fast"') == fast.to_json()

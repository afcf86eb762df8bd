"""The baselines' fast path on the dynamic network against the SimPy engine: random fleets, every figure equal.

Each seed builds the same random job twice (each run draws its own lazy channels and fills its own
motions), replays one on the SimPy engine and one on the fast path, and compares every figure and
what the motions hold (the result's network report: samples trained, radio seconds, FLOPs).
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sfsim.fast import uncovered
from sfsim.network.availability import OnOff, Windows
from sfsim.network.legs import Leg, Motion
from sfsim.network.linkrate import (
    Constant,
    Fading,
    FadingRate,
    GilbertElliott,
    GilbertElliottRate,
    Product,
    Steps,
)
from sfsim.schedules.common import rounds
from sfsim.schedules.fedlora import width
from sfsim.schedules.network import FedNetwork
from tests.test_fast_lora import fast_figures, random_cfg, random_job, simpy_figures


def _rate(rng: random.Random, nominal: float):
    """A link's rate: constant (None), a trace (repeating or not), Gilbert-Elliott, or one of those with fading."""
    kind = rng.choice(("none", "steps", "steps", "ge", "fading"))
    if kind == "none":
        return None
    if kind == "steps" or (kind == "fading" and rng.random() < 0.5):
        times = [0.0] + sorted(float(t) for t in rng.sample(range(1, 60), rng.randint(1, 6)))
        base = Steps(times, [nominal * rng.choice((0.1, 0.5, 1.0, 2.0)) * rng.uniform(0.5, 1.5) for _ in times],
                     rng.choice((None, 64.0, 90.0, 71.09373711634781)))
    elif kind == "ge" or rng.random() < 0.5:
        spec = GilbertElliott(good=nominal * 2, bad=nominal / 5, mean_good=rng.uniform(1, 20), mean_bad=rng.uniform(0.5, 5))
        base = GilbertElliottRate(spec, random.Random(rng.random()))
    else:
        base = Constant(nominal)
    if kind == "fading":
        base = Product(base, FadingRate(Fading(sigma_db=rng.uniform(1, 6), coherence=rng.uniform(0.5, 5)),
                                        random.Random(rng.random())))
    return base


def _availability(rng: random.Random):
    """None, online windows (which may end: work left is never trained) or a seeded on/off process."""
    kind = rng.choice(("none", "windows", "onoff"))
    if kind == "none":
        return None
    if kind == "onoff":
        return OnOff(rng.uniform(2, 30), rng.uniform(0.5, 10), random.Random(rng.random()))
    t, ivs = rng.choice((0.0, 0.0, rng.uniform(0, 5))), []
    for _ in range(rng.randint(1, 5)):
        a, b = t, t + rng.uniform(1, 40)
        ivs.append((a, b))
        t = b + rng.uniform(0.5, 10)
    if rng.random() < 0.5:
        ivs.append((t, t + 1e9))  # online for good after a while: every micro-batch trains
    return Windows(ivs)


def dynamic_network(rng: random.Random, job, availability: bool, handover: bool = False) -> FedNetwork:
    """Every device one leg on its server with random varying links; with ``availability``, pause or drop churn;
    with ``handover``, some devices hand over once or twice (to any server, maybe with new links)."""
    motions = {}
    n_srv = len(job.servers)
    for i, d in enumerate(job.devices):
        up_bw, down_bw = rng.choice((1e6, 1e7)), rng.choice((1e6, 5e7))
        legs = [Leg(0.0, d.server, up_bw, d.up_s, d.up_l, _rate(rng, up_bw), down_bw, d.down_l, _rate(rng, down_bw))]
        at = 0.0
        for _ in range(rng.choice((0, 1, 1, 2)) if handover else 0):
            at += rng.choice((rng.uniform(0.1, 30), float(rng.randint(1, 10))))
            prev, srv = legs[-1], rng.randrange(n_srv)
            up = _rate(rng, up_bw) if rng.random() < 0.5 else prev.rate
            down = _rate(rng, down_bw) if rng.random() < 0.5 else prev.down
            legs.append(Leg(at, srv, up_bw, d.up_s, rng.uniform(0, 0.3), up, down_bw, rng.uniform(0, 0.3), down))
        avail = _availability(rng) if availability else None
        motions[i] = Motion(legs, avail, rng.choice(("pause", "drop")))
        motions[i].done = 0
    moving = {i: m for i, m in motions.items() if len(m.legs) > 1 or m.legs[0].rate or m.legs[0].down or m.avail}
    return FedNetwork(motions, moving)


def motions(job) -> dict:
    """What the motions hold after a run (what :func:`sfsim.schedules.network.report` reads)."""
    return {i: (m.done, m.steps, m.sent, m.send_s, m.recv_s, m.syncs_sent, m.downloads, m.uploads, m.switched_at,
                m.gone) for i, m in job.network.motions.items()}


def check_dynamic(schedule: str, seeds, availability: bool, handover: bool = False, **kw) -> int:
    """Fast against SimPy on one random job per seed on a random dynamic network; returns how many ran fast."""
    for seed in seeds:
        jobs = []
        for _ in range(2):
            rng = random.Random(seed)
            job = random_job(rng, ties=seed % 2 == 0)
            job.network = dynamic_network(rng, job, availability, handover)
            jobs.append((job, random_cfg(rng, **kw)))
        (a, cfg), (b, _) = jobs
        assert uncovered(None, schedule, cfg, b) is None, f"seed {seed}"
        want, got = simpy_figures(a, cfg, schedule), fast_figures(b, cfg, schedule)
        assert (want, motions(a)) == (got, motions(b)), f"{schedule} seed {seed} cfg={cfg}"
    return len(seeds)


ORDERS = [(order, policy) for order in ("interleaved", "sequential")
          for policy in ("fifo", "pool", "proportional", "paced-proportional", "round-robin", "paced-round-robin")]


@pytest.mark.parametrize(("order", "policy"), ORDERS)
@pytest.mark.parametrize("seeds", [range(200), pytest.param(range(200, 1200), marks=pytest.mark.slow)])
def test_splitlora_varying_links(order, policy, seeds):
    """SplitLoRA on time-varying links (traces, Gilbert-Elliott, fading): both orders, every policy (12 x 200 fleets)."""
    assert check_dynamic("splitlora", seeds, False, client_order=order, policy=policy) == len(seeds)



@pytest.mark.parametrize(("order", "policy"), ORDERS)
@pytest.mark.parametrize("seeds", [range(200), pytest.param(range(200, 1200), marks=pytest.mark.slow)])
def test_splitlora_availability(order, policy, seeds):
    """SplitLoRA with availability (windows that may end, on/off processes; pause or drop) on varying links."""
    assert check_dynamic("splitlora", seeds, True, client_order=order, policy=policy) == len(seeds)


@pytest.mark.parametrize(("availability", "handover"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("seeds", [range(300), pytest.param(range(300, 3300), marks=pytest.mark.slow)])
def test_fedlora_availability_and_handover(availability, handover, seeds):
    """FedLoRA with availability (pause, drop), handovers, or both, on varying links: FedAvg groups per server."""
    assert check_dynamic("fedlora", seeds, availability, handover) == len(seeds)


def test_fedlora_fleets_span_epochs():
    """The FedLoRA fleets above run over several epochs, and in many a device has fewer rounds in an epoch than
    another of the fleet (it waits for its server's epoch to end): the compiled loop forms rounds per epoch."""
    multi = uneven = 0
    for seed in range(300):
        rng = random.Random(seed)
        job = random_job(rng, ties=seed % 2 == 0)
        job.network = dynamic_network(rng, job, True, True)
        per = int(random_cfg(rng).local_steps)
        if any(0 < d.per_epoch < d.n for d in job.devices):
            multi += 1
            uneven += any(rounds(min(d.per_epoch, d.n), per) < width(job.devices, per) for d in job.devices if d.n)
    assert multi >= 200 and uneven >= 100  # 251 and 130 when written

def moving_job(seed: int, availability: bool, **kw):
    """A random job on 2-4 servers whose devices hand over (1-3 legs each, to any server) on varying links,
    with availability (pause, drop) when asked; and its knobs."""
    rng = random.Random(seed)
    job = random_job(rng, ties=seed % 2 == 0, most=10)
    while len(job.servers) < 2 + seed % 3:
        job.servers.append(replace(job.servers[-1], name=f"s{len(job.servers)}"))
    job.network = dynamic_network(rng, job, availability, handover=True)
    return job, random_cfg(rng, **kw)


def check_moves(seeds, availability: bool, **kw) -> tuple[int, int]:
    """SplitLoRA with handovers, fast (the joint loop) against SimPy per seed; returns how many fleets handed over and
    were equal, and how many the fast path refused (none since it replays the release at a server's next look)."""
    from sfsim.schedules.splitlora.moves import hands_over

    ran = refused = 0
    for seed in seeds:
        (a, cfg), (b, _) = moving_job(seed, availability, **kw), moving_job(seed, availability, **kw)
        if not hands_over(a.network.motions):
            continue  # every handover stays on its server: the SimPy engine's
        assert uncovered(None, "splitlora", cfg, b) is None, f"seed {seed}"
        try:
            want = simpy_figures(a, cfg, "splitlora")
        except RuntimeError:  # a server's loop never finishes: the fast path says so too
            with pytest.raises(RuntimeError, match="did not finish"):
                fast_figures(b, cfg, "splitlora")
            continue
        got = fast_figures(b, cfg, "splitlora")  # issue 21's release points and open epochs replayed: no refusal
        assert (want, motions(a)) == (got, motions(b)), f"seed {seed} cfg={cfg}"
        ran += 1
    return ran, refused


@pytest.mark.parametrize("availability", [False, True])
@pytest.mark.parametrize(("order", "policy"), ORDERS)
@pytest.mark.parametrize("seeds", [range(100), pytest.param(range(100, 1100), marks=pytest.mark.slow)])
def test_splitlora_handovers(availability, order, policy, seeds):
    """SplitLoRA with handovers between 2-4 servers (1-3 legs per device), with and without availability:
    the fast path's joint loop equals the SimPy engine's (which takes every client order and policy alike)."""
    equal, refused = check_moves(seeds, availability, client_order=order, policy=policy)
    assert refused == 0 and equal >= 0.6 * len(seeds)  # seeds 100-299, fifo: 183 equal (112 before the release replay)


def test_lazy_rates_drawn_further(monkeypatch):
    """Lazy channels first drawn to 0.5 s: every replay passes the horizon, is replayed further, and still equals SimPy."""
    from sfsim.fast import rates, splitlora

    monkeypatch.setattr(rates, "HORIZON", 0.5)
    monkeypatch.setattr(splitlora, "GUESS", 0.0)
    assert check_dynamic("splitlora", range(40), False) == 40
    assert check_dynamic("fedlora", range(40), True, True) == 40
    assert sum(check_moves(range(40), True)) >= 24


FIGURES_NET = ("uplink_send_s", "downlink_recv_s", "handovers", "samples_not_trained", "micro_batches")


def dynamic_scenario(seed: int, availability: bool) -> dict:
    """A random scenario whose device kinds have Gilbert-Elliott uplinks, faded downlinks and (maybe) availability."""
    from tests.test_fast_lora import random_scenario

    rng = random.Random(seed)
    data = random_scenario(rng)
    for k, kind in enumerate(data["devices"]):
        if k % 2 == 0:
            kind["uplink"] = {"gilbert_elliott": {"good": "80 Mbps", "bad": "4 Mbps", "mean_good": "5 s",
                                                  "mean_bad": "1 s"}, "latency": "10 ms"}
        else:
            kind["downlink"] = {**kind["downlink"], "fading": {"sigma_db": 4.0, "coherence": "2 s"}}
        if availability and rng.random() < 0.7:
            kind["availability"] = {"mean_on": f"{rng.randint(5, 60)} s", "mean_off": f"{rng.randint(1, 20)} s",
                                    "churn": rng.choice(("pause", "drop"))}
    return data


@pytest.mark.parametrize(("schedule", "availability"), [("splitlora", False), ("splitlora", True), ("fedlora", True)])
def test_dynamic_through_simulate(schedule, availability):
    """simulate() on varying links (and availability, pause or drop): the fast path runs, every SimResult figure
    (the network report included) equal."""
    import sfsim
    from tests.test_fast_lora import FIGURES

    for seed in range(8):
        sc = sfsim.scenario_from_dict(dynamic_scenario(seed, availability))
        fast, ref = sfsim.simulate(sc, schedule, engine="fast"), sfsim.simulate(sc, schedule, engine="simpy")
        assert (fast.engine, fast.dynamic_network) == ("fast", "simulated")
        for key in (*FIGURES, *FIGURES_NET):
            assert getattr(ref, key) == getattr(fast, key), f"seed {seed}: {key}"


@pytest.mark.parametrize("schedule", ["fedlora", "splitlora"])
def test_mobile_profile(schedule):
    """The shipped profile with handovers, a 5G trace, Gilbert-Elliott links and churn: the baselines on the fast path."""
    import sfsim
    from tests.test_fast_lora import FIGURES

    sc = sfsim.load_scenario("profiles/mobile.yaml")
    fast, ref = sfsim.simulate(sc, schedule, engine="fast"), sfsim.simulate(sc, schedule, engine="simpy")
    assert (fast.engine, ref.engine) == ("fast", "simpy")
    for key in (*FIGURES, *FIGURES_NET):
        assert getattr(ref, key) == getattr(fast, key), key

"""What this machine can honestly stand for in a validation: its server speed and the device speeds it can emulate.

- :func:`server_profile`: the latency table of this machine's server role for the run's model and
  shapes, measured in seconds by :func:`trainer.validate.profile.profile_model` and cached per machine
  (``$SFSIM_CACHE/profiles`` or ``~/.cache/sfsim/profiles``); a cached table is re-measured when it is
  stale: older than ``max_age_s``, or made on another CPU, core count, torch or transformers version.
- :func:`too_fast`: the devices whose scenario speed is faster than this machine computes their
  blocks (emulation only slows a device down, by sleeping), with the speed it can achieve.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sfsim.cost.model import CostModel
from sfsim.errors import SfsimError
from sfsim.model.arch import BUILTIN
from sfsim.scenario.config import scenario_from_dict
from sfsim.scenario.overrides import apply
from sfsim.scenario.schema import read_yaml
from sfsim.units import format_amount
from trainer.model.loading import load_model
from trainer.validate.profile import ProfileSpec, machine_info, profile_model, write_profile

MAX_AGE_S = 6 * 3600.0  # a profile older than this is re-measured (machine load and clocks drift over a day)
TOLERANCE = 0.05  # a device whose real time exceeds its scenario time by more than this runs at native speed


def cache_dir() -> Path:
    """Folder of cached machine profiles (``$SFSIM_CACHE/profiles`` or ``~/.cache/sfsim/profiles``)."""
    base = os.environ.get("SFSIM_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "sfsim") / "profiles"


def fingerprint() -> dict:
    """What a cached profile must share with this machine to be reused: CPU, cores and library versions."""

    info = machine_info()
    return {k: info[k] for k in ("cpu", "cores", "torch", "transformers")}


@dataclass(frozen=True)
class ServerProfile:
    """A server latency table of this machine: its path, whether it was measured now, its age in seconds."""

    path: Path
    measured: bool
    age_s: float
    wall_s: float | None = None


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model)[:40]


def profile_key(model: str, task: str, micro_batch: int, seq_lens: list[int], threads: int) -> str:
    """File name of the cached profile for one model, task, grid and thread count on this machine."""
    fp = fingerprint()
    digest = hashlib.sha256(repr((str(Path(model).resolve()) if Path(model).is_dir() else model, task, micro_batch,
                                  seq_lens, threads, sorted(fp.items()))).encode()).hexdigest()[:12]
    return f"{_slug(model)}-{task}-mb{micro_batch}-t{threads}-{digest}.yaml"


def is_stale(path: Path, max_age_s: float = MAX_AGE_S) -> str | None:
    """Why the cached profile at ``path`` cannot be reused (None when it can)."""
    import yaml

    if not path.is_file():
        return "none cached"
    age = time.time() - path.stat().st_mtime
    if age > max_age_s:
        return f"the cached one is {age / 3600:.1f} h old (> {max_age_s / 3600:.0f} h)"
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return f"the cached one is unreadable ({type(err).__name__})"
    if not isinstance(data, dict) or not data.get("grid"):
        return "the cached one is not a latency profile"
    machine = data.get("machine") or {}
    fp = fingerprint()
    if any(machine.get(k) != v for k, v in fp.items()):
        return "the cached one was measured on another machine or library version"
    if "save" not in data:
        return "the cached one has no epoch-end save time (sfsim.cost.epochend)"
    if "first_step" not in data:
        return "the cached one has no server warm-up (first_step, sfsim.cost.model.server_warmup)"
    if "bookkeeping" not in data:
        return "the cached one has no server loop bookkeeping (bookkeeping, sfsim.cost.latency.Bookkeeping)"
    return None


def seq_grid(max_len: int) -> list[int]:
    """Sequence lengths measured: quarter, half and full ``max_len`` (the run's trimmed lengths lie between)."""
    return sorted({max(4, max_len // 4), max(4, max_len // 2), max(4, max_len)})


def server_profile(model: str, sim_model: str, *, task: str, num_labels: int, micro_batch: int, max_len: int,
                   threads: int, max_age_s: float = MAX_AGE_S, say=print) -> ServerProfile:
    """This machine's server latency table for the run: the cached one, or a fresh one (seconds).

    Args:
        model: what the trainer loads (``--model``).
        sim_model: the simulator's name for it (a built-in name or a config.json path).
        task: ``classification`` or ``causal-lm``; num_labels: classes of the head.
        micro_batch, max_len, threads: the run's micro-batch, longest sequence and torch threads.
        max_age_s: re-measure a cached profile older than this.
        say: where the one-line notes go.
    """
    import torch


    seqs = seq_grid(max_len)
    path = cache_dir() / profile_key(model, task, micro_batch, seqs, threads)
    why = is_stale(path, max_age_s)
    if why is None:
        age = time.time() - path.stat().st_mtime
        say(f"server profile: this machine's, cached {age / 60:.0f} min ago: {path}")
        return ServerProfile(path, False, age)
    say(f"server profile: measuring this machine's server role ({why}; takes seconds to a minute) ...")
    spec = ProfileSpec(sorted({max(1, micro_batch // 2), micro_batch}), seqs, task=task, num_labels=num_labels,
                       warmup=1, repeats=3, role="server", name="this-machine")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        prof = profile_model(load_model(model), spec, model=sim_model, source="sfsim validate (automatic)")
    finally:
        torch.set_num_threads(before)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_profile(prof, path)
    say(f"server profile: measured in {prof['machine']['wall_s']} s, cached at {path}")
    return ServerProfile(path, True, 0.0, prof["machine"]["wall_s"])


@dataclass(frozen=True)
class NativeDevice:
    """A device the scenario rates faster than this machine can run it: scenario and achievable FLOP/s."""

    name: str
    scenario_flops: float
    achievable_flops: float


def too_fast(sc, profile_path: str | Path, cut: int) -> list[NativeDevice]:
    """The devices of ``sc`` whose forward of ``cut`` blocks this machine (``profile_path``) cannot run in
    their scenario time; each with the FLOP rate it can achieve here (``flops * t_scenario / t_real``)."""

    cm = CostModel(sc)
    out = []
    work = cm.device_prefix(max(1, cut))
    for d in sc.devices:
        if d.flops is None:
            continue
        t_target = cm.seconds(work, d)[0]
        t_real = cm.seconds(work, replace(d, latency_profile=str(Path(profile_path).resolve()), flops=None))[0]
        if t_real > t_target * (1 + TOLERANCE):
            out.append(NativeDevice(d.name, d.flops, d.flops * t_target / t_real))
    return out


def refusal(native: list[NativeDevice], file: str) -> SfsimError:
    """The one-line error for devices this machine cannot emulate."""

    d = native[0]
    more = f" (and {len(native) - 1} more)" if len(native) > 1 else ""
    return SfsimError(f"{file}: devices[{d.name}]{more}: {format_amount(d.scenario_flops, 'FLOPS')} is faster than "
                      f"this machine runs it (at most {format_amount(d.achievable_flops, 'FLOPS')}): emulation "
                      "can only slow a device down; lower its flops to at most that, or pass --allow-native to "
                      "run it at native speed (flagged in the report)")


def sim_model(model: str) -> str:
    """The simulator's name for the run's model: a built-in name, or a local folder's config.json."""
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file():
        return str((path / "config.json").resolve())
    return model


def run_scenario(vc):
    """The scenario with the run's model, longest sequence and micro-batch (what the checks below look at)."""
    data = read_yaml(vc.devices)
    sets = [("model.name", sim_model(vc.model)),
            ("model.seq_len", min(vc.max_len, data.get("model", {}).get("seq_len", vc.max_len)))]
    if vc.micro_batch:
        sets.append(("training.micro_batch", vc.micro_batch))
    return scenario_from_dict(apply(data, sets, file=vc.devices), source=vc.devices)


def check_devices(vc) -> None:
    """One-line errors, before any profiling or process starts, for what the run would refuse late: a cut
    outside the model, or (compute emulation) a device with no ``flops`` rate to slow it down to."""

    sc = run_scenario(vc)
    n = sc.arch.n_layers
    if vc.split is not None and not 0 <= vc.split < n:
        raise SfsimError(f"--split {vc.split} is outside 0..{n - 1} ({sc.arch.name} has {n} blocks); "
                         "pick a cut in that range")
    for option, path in (("--server-profile", vc.server_profile), ("--device-profile", vc.device_profile)):
        if path is not None:
            why = profile_mismatch(read_yaml(path), sc.arch, "causal-lm" if vc.task == "gsm8k" else "classification")
            if why:
                raise SfsimError(f"{option} {path}: {why}, this run's is {sc.arch.name} ({_shape(sc.arch)}): measure "
                                 f"it with sfsim profile --model {vc.model}" + (" or leave --server-profile out "
                                 "(validate then profiles this machine)" if option == "--server-profile" else ""))
    if vc.emulate in ("compute", "all"):
        for d in sc.devices:
            if d.flops is None:
                raise SfsimError(f"{vc.devices}: devices[{d.name}] has a latency profile and no 'flops': --emulate "
                                 f"{vc.emulate} slows each device down to its flops rate; give it one, or validate "
                                 "with --emulate links and --device-profile (devices at this machine's speed)")


def check_emulation(vc) -> tuple:
    """Devices this machine cannot emulate (compute emulation only; ``vc``: a ``ValidateConfig``): refused unless
    ``vc.allow_native``."""

    if vc.emulate not in ("compute", "all"):
        return ()
    sc = run_scenario(vc)
    native = tuple(too_fast(sc, vc.server_profile, vc.split or sc.training.split or 1))
    if native and not vc.allow_native:
        raise refusal(list(native), vc.devices)
    return native


def _shape(a) -> str:
    return f"{a.family}, {a.n_layers} blocks of width {a.hidden}"


def profile_mismatch(prof: dict, arch, task: str) -> str | None:
    """Why a latency profile (a dict as read) cannot stand for a run of ``arch`` on ``task`` (None: it can, or
    its model is not known well enough to tell): it was measured on another model's blocks or another head."""
    spec, name = prof.get("arch"), str(prof.get("model"))
    if isinstance(spec, dict):
        fam, n, d = spec.get("family"), spec.get("n_layers"), spec.get("hidden")
    elif name in BUILTIN:
        fam, n, d = BUILTIN[name].family, BUILTIN[name].n_layers, BUILTIN[name].hidden
    else:
        return None
    if (fam, n, d) != (arch.family, arch.n_layers, arch.hidden):
        return f"it was measured on {name} ({fam}, {n} blocks of width {d})"
    if prof.get("task") not in (None, task):
        return f"it was measured with a {prof['task']} head ({name})"
    return None

"""The planner: heterogeneity-aware cuts, LoRA start and device-to-server assignment (``sfsim plan``).

How it works (each step its own module):

1. :mod:`~sfsim.planner.model` tabulates, for every device type, cut and server, the pipeline's
   stage times from the cost model, and which entries memory and the minimum-layer rules allow.
2. :mod:`~sfsim.planner.search` finds the cuts and assignment that minimise the analytic makespan
   (exact threshold search with a small integer program per step) and a proven lower bound (its
   linear relaxation); :mod:`~sfsim.planner.fluid` scores any plan with a fluid queue model
   (server work, server credits, each device's pipeline).
3. :mod:`~sfsim.planner.refine` improves the best candidates on the fluid score (any cut or server
   for one group or device), then the best few are replayed with :func:`sfsim.simulate`; with
   several servers the best replay's server end times calibrate each server's queueing and the
   search runs again; on small fleets every plan near the best so far (each type's cuts within a
   few blocks, any server; the whole space when it is a few hundred plans) is replayed, because
   with few micro-batches and a small buffer the fluid model cannot rank plans to 1 %; a local
   search on simulated time spends what is left of the replay budget. The fastest plan is the one
   with the smallest *simulated* makespan, never slower than the best single global cut the
   planner replayed; ``makespan_s`` is what ``sfsim simulate --plan`` reports for the chosen plan.
4. Replays run on the exact fast path (:mod:`sfsim.fast`) where it covers the run, so the replay
   budget is larger there; fleets with few enough plans (:mod:`~sfsim.planner.exhaustive`, up to
   ``EXHAUSTIVE_PLANS``) have every plan replayed, and the fastest of all is taken.
5. Where the fast path replays servers one by one (:mod:`~sfsim.planner.servers`: static network,
   no backhaul sync, a policy that needs no device names or seed), a plan's makespan is the largest
   of its servers' replays (the same figure), and a search on them follows: starts that cap every
   device's period (on a server whose credits are busy the longest-period devices finish last,
   which the fluid model does not see), then moves on the slowest server (a group's cut one block
   up or down, the longest-period groups down together, a share of a group to a lightly loaded
   server), each judged by replaying the one or two servers it touches. Its linear programs are
   solved by HiGHS (:mod:`~sfsim.planner.program`).

Objectives: ``time`` (the default) takes the fastest plan, then lets time ties go to the devices'
batteries: among plans within ``tie_tolerance`` (0.5 %) of the fastest makespan it takes the one
with the fewest device FLOPs (a bandwidth-bound fleet gains nothing from heavy device prefixes).
``energy`` minimises the devices' total energy (joules from their ``power`` figures; the servers
are on mains power and are not counted) subject to a simulated makespan within ``deadline``; it
needs the deadline and power figures on every device. Both use :mod:`~sfsim.planner.deadline`.

LoRA start: the planner puts LoRA on the fewest blocks allowed
(``lora_start = L - min_lora_layers``, or the scenario's ``training.lora_start`` when it fixes
one). A higher LoRA start never slows a plan: every cut stays allowed, each block it turns frozen
loses its B and W on the server, the optimizer steps over fewer parameters and the server keeps
fewer activations. More LoRA layers may train better: ask for them with ``min_lora_layers``.
"""

from sfsim.planner import search
from sfsim.planner.flow import OBJECTIVES, SCHEDULES, SPLITLORA_CUT, PlanResult, expand, plan

__all__ = ["OBJECTIVES", "SCHEDULES", "SPLITLORA_CUT", "PlanResult", "expand", "plan", "search"]

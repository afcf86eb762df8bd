"""The compiled event loop of one SplitFrozen server with one worker and the devices that send to it.

It replays exactly what :class:`sfsim.engine.pool.ServerPool` and the device processes of
:mod:`sfsim.schedules.splitfrozen` do on the SimPy engine, event for event: one heap of
``(time, priority, id, code)`` entries in the order SimPy would queue them (process starts first
at time 0, then by creation order), so ties at equal times resolve the same way and the figures
agree to the last bits. Servers without backhaul sync share nothing, so each is replayed alone.

State is a few arrays per device and heaps of at most one entry per device or credit: memory grows
with devices, never with micro-batches. Everything here is in the subset of Python that numba
compiles (:mod:`sfsim.fast.jit`); the module holds no SimPy and no I/O.

Policy codes: 0 fifo, 1 round-robin, 2 proportional, 3 paced (the order is given as segments).
"""

from __future__ import annotations

import heapq

import numpy as np

from sfsim.fast.jit import njit

FIFO, ROUND_ROBIN, PROPORTIONAL, PACED = 0, 1, 2, 3

# event kinds (code & 7); the device index is code >> 3
_WORKER, _ALARM, _START, _RETRY, _GRANT, _AFTER_F, _RELEASE, _RESUMED = 0, 1, 2, 3, 4, 5, 6, 7
_URGENT, _NORMAL = 0, 1  # SimPy's priorities: process starts before ordinary events at one instant

# out[] slots
OUT_MAKESPAN, OUT_BUSY, OUT_WAIT, OUT_END, OUT_TV_SUM, OUT_TV_COUNT, OUT_UNCLAIMED, OUT_TOTAL = range(8)


@njit
def _size(k, last, per_epoch):
    """Size of micro-batch ``k`` relative to a full one (DeviceTimes.size)."""
    if last < 1.0 and (k + 1) % per_epoch == 0:
        return last
    return 1.0


@njit
def replay_server(f, warm, up_s, up_l, srv_f, srv_b, srv_w, n, sent, per_epoch, last,
                  step_s, buffer, accumulate, decompose, sequential, per_device, policy, flight,
                  order, seg_start, seg_len, seg_rep):
    """Replay one server and its devices; returns the figures in an array (see the ``OUT_*`` slots).

    Args:
        f, warm, up_s, up_l, srv_f, srv_b, srv_w: per-device seconds (DeviceTimes' fields).
        n, sent, per_epoch, last: per-device micro-batch counts and partial-batch size.
        step_s: optimizer step seconds; buffer, accumulate: training knobs.
        decompose, sequential, per_device: decomposed backward, the sequential ablation, device credits.
        policy: policy code (module docstring); flight: ServerPool._min_flight().
        order, seg_start, seg_len, seg_rep: paced order as segments: ``order[seg_start[s]:+seg_len[s]]``
            repeated ``seg_rep[s]`` times, segment after segment (empty arrays for other policies).
    """
    m = n.shape[0]
    out = np.zeros(8)
    inf = np.inf
    # -- event queue -----------------------------------------------------------------------------
    events = [(0.0, 0, 0, 0)]
    events.pop()
    eid = 0
    # -- credits: one shared account, or one per device --------------------------------------------
    credits = np.zeros(m, np.int64)
    credits[0] = buffer
    if per_device:
        for j in range(m):
            credits[j] = 1 if sequential else buffer
    claim_returns = not (sequential and per_device)
    waiters = [(0.0, 0, 0)]  # shared account: (ready, seq, device)
    waiters.pop()
    wseq = 0
    dev_wait = np.zeros(m, np.bool_)      # per-device account: is the device queued for its credit
    dev_ready = np.zeros(m)
    # -- devices -----------------------------------------------------------------------------------
    nn = np.zeros(m, np.int64)            # micro-batch the device is working on
    f_start = np.zeros(m)
    link_free = np.zeros(m)
    ready = np.zeros(m)
    # -- server ------------------------------------------------------------------------------------
    pending = [(0.0, 0, 0, 0)]            # (arrival, seq, device, micro-batch)
    pending.pop()
    pseq = 0
    totals = np.zeros(m, np.int64)
    total = 0
    for j in range(m):
        totals[j] = n[j]
        total += n[j]
    unclaimed = total
    idle = False
    alarm_at = inf
    alarm_id = 0
    # policy state
    cap = m * (buffer + 2) + 2
    qd = np.zeros(cap, np.int64)          # fifo ring: device; round-robin ring: device turns
    qk = np.zeros(cap, np.int64)          # fifo ring: micro-batch
    qhead = 0
    qlen = 0
    p_ready = np.zeros(m, np.int64)
    p_next = np.full(m, -1, np.int64)
    p_size = 0
    started = np.zeros(m, np.int64)
    prop = [(0.0, 0)]
    prop.pop()
    held = 0                              # paced: arrived, not started
    seg = 0
    seg_pos = 0
    seg_done = 0
    turn = -1
    if policy == PACED:
        for j in range(m):
            p_next[j] = 0
        while seg < seg_start.shape[0] and (seg_len[seg] == 0 or seg_rep[seg] == 0):
            seg += 1
        if seg < seg_start.shape[0]:
            turn = order[seg_start[seg]]
    # stream mixing (sfsim.outputs.mixing.StreamMixing)
    windows = max(1, min(10, total))
    share = np.zeros(m)
    for j in range(m):
        share[j] = totals[j] / total if total else 0.0
    counts = np.zeros(m, np.int64)
    touched = np.zeros(m, np.int64)
    ntouched = 0
    seen = 0
    tv_sum = 0.0
    tv_count = 0
    bound = -(-1 * total // windows)
    # worker
    wcap = min(accumulate, total) + 2     # queued W's: never more than a window's
    queued_d = np.zeros(wcap, np.int64)
    queued_k = np.zeros(wcap, np.int64)
    wq_head = 0
    wq_len = 0
    done = 0
    busy = 0.0
    last_end = 0.0
    w_final = False
    w_check = False                       # resumed from a sleep: account a held-back wait
    w_held = 0
    w_start = 0.0
    wait_s = 0.0
    makespan = 0.0
    defer = decompose and not sequential
    # -- process starts: the worker, then every device that sends --------------------------------
    heapq.heappush(events, (0.0, _URGENT, eid, _WORKER))
    eid += 1
    for j in range(m):
        if sent[j] > 0:
            heapq.heappush(events, (0.0, _URGENT, eid, j * 8 + _START))
            eid += 1
    while len(events) > 0:
        now, _prio, _e, code = heapq.heappop(events)
        makespan = now  # SimPy's clock at the end: the time of the last event
        kind = code & 7
        j = code >> 3
        if kind == _ALARM:
            if j != alarm_id:
                continue  # superseded by an earlier alarm
            alarm_at = inf
            if idle:
                idle = False
                heapq.heappush(events, (now, _NORMAL, eid, _WORKER))
                eid += 1
            continue
        if kind == _RELEASE:  # sequential: the micro-batch's W ended; return the credit, resume the device
            if not claim_returns:
                acct = j if per_device else 0
                if per_device and dev_wait[j] and dev_ready[j] <= now:
                    dev_wait[j] = False
                    heapq.heappush(events, (now, _NORMAL, eid, j * 8 + _GRANT))
                    eid += 1
                elif per_device and dev_wait[j]:
                    credits[acct] += 1
                    dev_wait[j] = False
                    heapq.heappush(events, (dev_ready[j], _NORMAL, eid, j * 8 + _RETRY))
                    eid += 1
                else:
                    credits[acct] += 1
            heapq.heappush(events, (now, _NORMAL, eid, j * 8 + _RESUMED))
            eid += 1
            continue
        if kind != _WORKER:
            # ---------------- a device process resumes --------------------------------------------
            acct = j if per_device else 0
            go = False  # True: holds a credit, send now
            if sequential:
                if kind == _START or kind == _RESUMED:
                    if kind == _RESUMED:
                        nn[j] += 1
                        if nn[j] >= sent[j]:
                            continue
                    k = nn[j]
                    fx = f[j] * _size(k, last[j], per_epoch[j]) + (warm[j] if k == 0 else 0.0)
                    f_start[j] = now
                    heapq.heappush(events, (now + fx, _NORMAL, eid, j * 8 + _AFTER_F))
                    eid += 1
                    continue
                if kind == _GRANT:
                    go = True
                elif credits[acct] > 0:
                    credits[acct] -= 1
                    go = True
                else:
                    if per_device:
                        dev_wait[j] = True
                        dev_ready[j] = now
                    else:
                        wseq += 1
                        heapq.heappush(waiters, (now, wseq, j))
                    continue
                k = nn[j]
                x = _size(k, last[j], per_epoch[j])
                arrival = now + up_s[j] * x + up_l[j]
                pseq += 1
                heapq.heappush(pending, (arrival, pseq, j, k))
                if idle and arrival < alarm_at:
                    alarm_at = arrival
                    alarm_id += 1
                    heapq.heappush(events, (arrival, _NORMAL, eid, alarm_id * 8 + _ALARM))
                    eid += 1
                continue
            if kind == _START:
                k = nn[j]
                fx = f[j] * _size(k, last[j], per_epoch[j]) + (warm[j] if k == 0 else 0.0)
                fe = f_start[j] + fx
                ready[j] = fe if fe > link_free[j] else link_free[j]
            elif kind == _GRANT:
                go = True
            while True:
                if not go:
                    r = ready[j]
                    if r > now:
                        if credits[acct] > 0:
                            heapq.heappush(events, (r, _NORMAL, eid, j * 8 + _RETRY))
                            eid += 1
                        elif per_device:
                            dev_wait[j] = True
                            dev_ready[j] = r
                        else:
                            wseq += 1
                            heapq.heappush(waiters, (r, wseq, j))
                        break
                    if credits[acct] > 0:
                        credits[acct] -= 1
                    else:
                        if per_device:
                            dev_wait[j] = True
                            dev_ready[j] = now
                        else:
                            wseq += 1
                            heapq.heappush(waiters, (now, wseq, j))
                        break
                # send micro-batch nn[j] now
                go = False
                k = nn[j]
                x = _size(k, last[j], per_epoch[j])
                link_free[j] = now + up_s[j] * x
                arrival = link_free[j] + up_l[j]
                pseq += 1
                heapq.heappush(pending, (arrival, pseq, j, k))
                if idle and arrival < alarm_at:
                    alarm_at = arrival
                    alarm_id += 1
                    heapq.heappush(events, (arrival, _NORMAL, eid, alarm_id * 8 + _ALARM))
                    eid += 1
                f_start[j] = now
                nn[j] += 1
                if nn[j] >= sent[j]:
                    break
                k = nn[j]
                fx = f[j] * _size(k, last[j], per_epoch[j]) + (warm[j] if k == 0 else 0.0)
                fe = f_start[j] + fx
                ready[j] = fe if fe > link_free[j] else link_free[j]
            continue
        # ---------------- the worker resumes ----------------------------------------------------------
        if w_final:
            out[OUT_BUSY] = busy
            out[OUT_END] = last_end
            continue
        if w_check:
            w_check = False
            if w_held > 0:
                dur = now - w_start
                wait_s += dur
                if dur > 0:
                    last_end = now
        # move arrivals into the policy
        while len(pending) > 0 and pending[0][0] <= now:
            _a, _s, i, k = heapq.heappop(pending)
            if policy == FIFO:
                pos = (qhead + qlen) % cap
                qd[pos] = i
                qk[pos] = k
                qlen += 1
            elif policy == PACED:
                p_ready[i] += 1
                held += 1
            else:
                p_size += 1
                p_ready[i] += 1
                if p_ready[i] == 1:
                    p_next[i] = k
                    if policy == ROUND_ROBIN:
                        qd[(qhead + qlen) % cap] = i
                        qlen += 1
                    else:
                        heapq.heappush(prop, (-(max(totals[i], 1) - started[i]) / max(totals[i], 1), i))
        if policy == FIFO:
            avail = qlen > 0
        elif policy == PACED:
            avail = turn >= 0 and p_ready[turn] > 0
        else:
            avail = p_size > 0
        if avail:
            # take the next micro-batch
            if policy == FIFO:
                i = qd[qhead]
                k = qk[qhead]
                qhead = (qhead + 1) % cap
                qlen -= 1
            elif policy == PACED:
                i = turn
                k = p_next[i]
                p_next[i] = k + 1
                p_ready[i] -= 1
                held -= 1
                seg_pos += 1
                if seg_pos == seg_len[seg]:
                    seg_pos = 0
                    seg_done += 1
                    if seg_done == seg_rep[seg]:
                        seg_done = 0
                        seg += 1
                        while seg < seg_start.shape[0] and (seg_len[seg] == 0 or seg_rep[seg] == 0):
                            seg += 1
                turn = order[seg_start[seg] + seg_pos] if seg < seg_start.shape[0] else -1
            else:
                if policy == ROUND_ROBIN:
                    i = qd[qhead]
                    qhead = (qhead + 1) % cap
                    qlen -= 1
                else:
                    i = heapq.heappop(prop)[1]
                    started[i] += 1
                k = p_next[i]
                p_next[i] = k + 1
                p_ready[i] -= 1
                p_size -= 1
                if p_ready[i] > 0:
                    if policy == ROUND_ROBIN:
                        qd[(qhead + qlen) % cap] = i
                        qlen += 1
                    else:
                        heapq.heappush(prop, (-(max(totals[i], 1) - started[i]) / max(totals[i], 1), i))
            # claim: mixing, credit back, the next replay
            unclaimed -= 1
            if counts[i] == 0:
                touched[ntouched] = i
                ntouched += 1
            counts[i] += 1
            seen += 1
            if seen >= bound:
                size = 0
                for q in range(ntouched):
                    size += counts[touched[q]]
                s1 = 0.0
                for q in range(ntouched):
                    s1 += share[touched[q]]
                dist = 1.0 - s1
                s2 = 0.0
                for q in range(ntouched):
                    s2 += abs(counts[touched[q]] / size - share[touched[q]])
                dist += s2
                tv_sum += 0.5 * dist
                tv_count += 1
                for q in range(ntouched):
                    counts[touched[q]] = 0
                ntouched = 0
                bound = -(-(tv_count + 1) * total // windows)
            if k < sent[i] and claim_returns:
                acct = i if per_device else 0
                if per_device:
                    if dev_wait[i] and dev_ready[i] <= now:
                        dev_wait[i] = False
                        heapq.heappush(events, (now, _NORMAL, eid, i * 8 + _GRANT))
                        eid += 1
                    else:
                        credits[acct] += 1
                        if dev_wait[i]:
                            dev_wait[i] = False
                            heapq.heappush(events, (dev_ready[i], _NORMAL, eid, i * 8 + _RETRY))
                            eid += 1
                else:
                    if len(waiters) > 0 and waiters[0][0] <= now:
                        w = heapq.heappop(waiters)[2]
                        heapq.heappush(events, (now, _NORMAL, eid, w * 8 + _GRANT))
                        eid += 1
                    else:
                        credits[0] += 1
                        if len(waiters) > 0:
                            wr, _ws, w = heapq.heappop(waiters)
                            heapq.heappush(events, (wr, _NORMAL, eid, w * 8 + _RETRY))
                            eid += 1
            if k + 1 < n[i] and k + 1 >= sent[i]:
                pseq += 1
                heapq.heappush(pending, (now, pseq, i, k + 1))
            # run it
            x = _size(k, last[i], per_epoch[i])
            if defer:
                t = now + srv_f[i] * x + srv_b[i] * x
                qpos = (wq_head + wq_len) % wcap
                queued_d[qpos] = i
                queued_k[qpos] = k
                wq_len += 1
            else:
                t = now + srv_f[i] * x
                t += srv_b[i] * x + srv_w[i] * x
                if sequential and k < sent[i]:
                    heapq.heappush(events, (t, _NORMAL, eid, i * 8 + _RELEASE))
                    eid += 1
            done += 1
            if done == accumulate:
                while wq_len > 0:
                    qi = queued_d[wq_head]
                    t += srv_w[qi] * _size(queued_k[wq_head], last[qi], per_epoch[qi])
                    wq_head = (wq_head + 1) % wcap
                    wq_len -= 1
                t = t + step_s
                done = 0
            busy += t - now
            if t > now:
                last_end = t
            heapq.heappush(events, (t, _NORMAL, eid, _WORKER))
            eid += 1
        elif wq_len > 0:
            # idle: deferred W's, one after another while nothing can have arrived
            bound_t = now + flight
            if len(pending) > 0 and pending[0][0] < bound_t:
                bound_t = pending[0][0]
            t = now
            while wq_len > 0 and (t == now or t < bound_t):
                qi = queued_d[wq_head]
                t += srv_w[qi] * _size(queued_k[wq_head], last[qi], per_epoch[qi])
                wq_head = (wq_head + 1) % wcap
                wq_len -= 1
            busy += t - now
            if t > now:
                last_end = t
            heapq.heappush(events, (t, _NORMAL, eid, _WORKER))
            eid += 1
        elif unclaimed == 0:
            if done:
                busy += step_s
                if step_s > 0:
                    last_end = now + step_s
                w_final = True
                heapq.heappush(events, (now + step_s, _NORMAL, eid, _WORKER))
                eid += 1
            else:
                out[OUT_BUSY] = busy
                out[OUT_END] = last_end
        elif len(pending) > 0 and pending[0][0] <= now + flight:
            w_held = held
            w_start = now
            w_check = True
            heapq.heappush(events, (pending[0][0], _NORMAL, eid, _WORKER))
            eid += 1
        else:
            w_held = held
            w_start = now
            w_check = True
            idle = True
            if len(pending) > 0 and pending[0][0] < alarm_at:
                alarm_at = pending[0][0]
                alarm_id += 1
                heapq.heappush(events, (alarm_at, _NORMAL, eid, alarm_id * 8 + _ALARM))
                eid += 1
    out[OUT_MAKESPAN] = makespan
    out[OUT_WAIT] = wait_s
    out[OUT_TV_SUM] = tv_sum
    out[OUT_TV_COUNT] = tv_count
    out[OUT_UNCLAIMED] = unclaimed
    out[OUT_TOTAL] = total
    return out

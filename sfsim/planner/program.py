"""The planner's small linear and integer programs, solved by HiGHS (``highspy``).

``scipy.optimize.milp`` calls the same solver, but importing ``scipy.optimize`` takes about 0.4 s
(it pulls in ``scipy.linalg``, ``scipy.sparse`` and ``scipy.special``), a quarter of a whole
``sfsim plan`` of a 1,000-device fleet; ``highspy`` imports in about 0.04 s.
"""

from __future__ import annotations

import functools
import os
import sys

import highspy
import numpy as np

_OPTIMAL = (highspy.HighsModelStatus.kOptimal,)
_STOPPED = (highspy.HighsModelStatus.kSolutionLimit, highspy.HighsModelStatus.kIterationLimit,
            highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt)


def solve(cost: np.ndarray, rows: np.ndarray, lower: np.ndarray, upper: np.ndarray, ub: np.ndarray,
          integral: np.ndarray | None = None, gap: float = 1e-4, nodes: int | None = None) -> np.ndarray | None:
    """``argmin cost @ x`` subject to ``lower <= rows @ x <= upper`` and ``0 <= x <= ub``.

    Args:
        cost: (n,) objective.
        rows: (m, n) constraint matrix (dense; the planner's programs are small).
        lower, upper: (m,) row bounds (``-inf`` / ``inf`` where there is none).
        ub: (n,) upper bounds of the variables (``inf`` where there is none).
        integral: (n,) bools, True where the variable is an integer (None: a linear program).
        gap: relative optimality gap the integer program stops at.
        nodes: most branch-and-bound nodes it explores (None: no limit); it then returns the best
            solution found, if any.

    Returns:
        The solution (n,), or None when the program is infeasible or stopped without one.

    Example:
        >>> solve(np.array([1.0, 1.0]), np.array([[1.0, 2.0]]), np.array([2.0]), np.array([np.inf]),
        ...       np.array([np.inf, np.inf]))  # array([0., 1.])
    """
    m, n = rows.shape
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_ = np.asarray(cost, dtype=np.float64)
    lp.col_lower_, lp.col_upper_ = np.zeros(n), np.asarray(ub, dtype=np.float64)
    lp.row_lower_, lp.row_upper_ = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    cols, at = rows.T.nonzero()  # column-wise: the nonzeros of column c, in row order
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.searchsorted(cols, np.arange(n + 1)).astype(np.int32)
    lp.a_matrix_.index_ = at.astype(np.int32)
    lp.a_matrix_.value_ = rows.T[cols, at].astype(np.float64)
    if integral is not None and np.any(integral):
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in integral]
    _swallow_banner()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", float(gap))
    if nodes is not None:
        h.setOptionValue("mip_max_nodes", int(nodes))
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status not in _OPTIMAL and not (status in _STOPPED and h.getInfo().primal_solution_status == 2):
        return None
    return np.array(h.getSolution().col_value)


@functools.cache
def _swallow_banner() -> None:
    """Make a process's first HiGHS instance with file descriptor 1 pointed at the null device: that one prints
    HiGHS's banner (from C++, before any option can silence it), which is no part of ``sfsim plan``'s output."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)

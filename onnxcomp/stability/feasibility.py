"""Per-side feasibility MILPs and a layer-by-layer driver that settles the open ReLU neurons of a box.

A *side* of neuron ``(k, i)`` is one of its two states: ``active`` asks "is there an input of the box
with ``y >= eps``?", ``inactive`` asks "... with ``y <= -eps``?".  A side is

* **proven** (unreachable) by a certificate: a sound bound (``bounds``: CROWN/interval; ``alpha``:
  optimised slopes; ``lp``: an LP relaxation bound checked through its duals, see
  ``milp.highs.safe_lp_bound``; all exact, epsilon 0), a bound within the margin (``bounds-epsilon``:
  ``0 < upper < eps``), or a solver's proof that the MILP with ``y >= eps`` is infeasible
  (``milp-infeasible``: "no input reaches ``y >= eps``", the project's MILP certificate, epsilon =
  ``eps``).  Proving the ``active`` side proves the neuron stably inactive, and vice versa;
* **witnessed** by an input of the box whose float64 forward pass puts ``y`` beyond the witness floor
  (``1e-4 * eps``) on that side; every solver solution is only a candidate until that check;
* otherwise **undecided**: time limits, solver failures and unconfirmed solutions prove nothing.

The epsilon policy is the pipeline's: ``eps_i = 1e-5 * max(1, S_i)`` with ``S_i`` the magnitude of the
terms neuron ``i``'s pre-activation sums (``state.epsilons``).

Each MILP is built over the first ``k`` layers only, with the sound bounds proven so far as big-M
constants; a neuron whose side was proven by a MILP enters later problems with its bound clipped to
``eps`` (``upper = eps`` for "never reaches ``y >= eps``"), which keeps every later problem a relaxation
of the real network (no chain of epsilons); neurons whose bounds are so clipped get the triangle LP
relaxation instead of a binary (sound, and nearly exact).  Units of work (``SideUnit``: one layer's
prefix and some of its sides) are plain picklable data solved by the top-level ``solve_sides``, so the
driver can hand them to any ``map`` (a process pool, Ray); by default it runs them serially.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..bounds import Bounds, _relaxation, alpha_crown_bounds, crown_bounds
from ..ir import Network
from .falsify import preactivation_gradients
from .state import EPS_REL, WITNESS_FLOAT64, epsilons  # noqa: F401  (the pipeline's epsilon policy)

ACTIVE, INACTIVE = "active", "inactive"
SOLVERS = ("highs", "scip")


# ---- one unit of work: some sides of one layer ------------------------------------------------------
@dataclass
class SideTask:
    """One side to settle: neuron ``neuron`` of the unit's layer, ``side`` in {active, inactive}."""

    neuron: int
    side: str
    eps: float
    floor: float


@dataclass
class SideUnit:
    """Everything a worker needs to settle some sides of layer ``layer`` (plain arrays, picklable).

    ``weights``/``biases``/``relu``: layers ``0..layer``; ``lower``/``upper``: sound pre-activation bounds
    of the same layers (big-M constants); ``binary``: masks of the unstable neurons of earlier layers that
    get a binary (None: all); ``time_limit``: seconds per side; ``budget``: seconds for the whole unit
    (sides not started within it stay undecided); ``objective``: ``max`` (push ``y`` up while looking
    for a point, so a found point is far from the margin) or ``none`` (pure feasibility);
    ``options``: solver options (HiGHS option names, or SCIP parameters); ``method``: ``milp`` (the solver
    named), ``bab`` (branch and bound on ReLU states with optimised bounds, ``bab_side``) or ``tighten``
    (the same branch and bound bounding a side already witnessed: ``bab_side(optimize=True)``);
    ``bounds_exact``: False when some bound in ``lower``/``upper`` holds only under the epsilon policy (a
    MILP result), so that a BaB proof is reported with the margin too; ``refine``: the branch and bound
    refines each piece's intermediate bounds (``bab_side``)."""

    weights: list
    biases: list
    relu: list
    lo: np.ndarray
    hi: np.ndarray
    lower: list
    upper: list
    layer: int
    tasks: list
    time_limit: float
    solver: str = "highs"
    budget: float | None = None
    objective: str = "max"
    binary: list | None = None
    options: dict = field(default_factory=dict)
    method: str = "milp"
    bounds_exact: bool = True
    refine: bool = False


@dataclass
class SideResult:
    """The outcome of one side.  ``verdict``: proven / witness / undecided.  ``bound``: what the solve
    showed about ``y`` on that side (upper bound for ``active``, lower for ``inactive``) under the epsilon
    policy, or None; ``witness``: the confirmed input; ``candidates``: every solver point (unconfirmed
    ones included, for a local search to start from)."""

    layer: int
    neuron: int
    side: str
    verdict: str
    certificate: str = ""
    epsilon: float = 0.0
    witness: np.ndarray | None = None
    candidates: list = field(default_factory=list)
    status: str = ""
    seconds: float = 0.0
    nodes: int = 0
    bound: float | None = None
    solver: str = ""
    binaries: int = 0


def _prefix_forward(unit: SideUnit, x: np.ndarray) -> np.ndarray:
    """Pre-activations of the unit's layer for inputs ``x`` (N, n0), float64, inputs clipped into the box."""
    h = np.clip(np.atleast_2d(np.asarray(x, dtype=np.float64)), unit.lo, unit.hi)
    for k in range(unit.layer + 1):
        y = h @ np.asarray(unit.weights[k]).T + unit.biases[k]
        if k == unit.layer:
            return y
        h = np.maximum(y, 0.0) if unit.relu[k] else y
    raise AssertionError("unreachable")


def _confirms(unit: SideUnit, task: SideTask, x: np.ndarray) -> bool:
    y = float(_prefix_forward(unit, x)[0, task.neuron])
    return y > task.floor if task.side == ACTIVE else y < -task.floor


def _problem(unit: SideUnit):
    from ..milp.formulation import build_prefix

    targets = sorted({t.neuron for t in unit.tasks})
    milp = build_prefix(unit.weights, unit.biases, unit.relu, unit.lo, unit.hi, unit.lower, unit.upper,
                        unit.layer, targets, unit.binary)
    if unit.solver == "highs":
        from ..milp.highs import HighsProblem

        return milp, HighsProblem(milp, unit.options)
    if unit.solver == "scip":
        from ..milp.scip import ScipProblem

        return milp, ScipProblem(milp, unit.options)
    raise ValueError(f"unknown solver {unit.solver!r}: expected one of {', '.join(SOLVERS)}")


def solve_sides(unit: SideUnit) -> list[SideResult]:
    """Settle the unit's sides one after another on one model (top-level: usable by a process pool).

    Per side the target column gets ``y >= eps`` (or ``y <= -eps``); the solver's infeasibility proof
    proves the side, a solution confirmed by a float64 forward pass witnesses it (the solve stops at the
    first such solution), anything else leaves it undecided.  A solver that raises leaves the side
    undecided (status ``error: ...``)."""
    start = time.perf_counter()
    if unit.method in ("bab", "tighten"):
        results = []
        for task in unit.tasks:
            spent = time.perf_counter() - start
            if unit.budget is not None and spent >= unit.budget:
                results.append(SideResult(unit.layer, task.neuron, task.side, "undecided", status="not started (budget)",
                                          solver="bab"))
                continue
            limit = unit.time_limit if unit.budget is None else min(unit.time_limit, unit.budget - spent)
            results.append(bab_side(unit, task, limit, optimize=unit.method == "tighten", refine=unit.refine))
        return results
    try:
        milp, prob = _problem(unit)
    except Exception as exc:  # noqa: BLE001 - a failed build proves nothing
        return [SideResult(unit.layer, t.neuron, t.side, "undecided", status=f"error: {type(exc).__name__}: {exc}",
                           solver=unit.solver) for t in unit.tasks]
    results = []
    for task in unit.tasks:
        spent = time.perf_counter() - start
        if unit.budget is not None and spent >= unit.budget:
            results.append(SideResult(unit.layer, task.neuron, task.side, "undecided", status="not started (budget)",
                                      solver=unit.solver, binaries=milp.n_binary))
            continue
        limit = unit.time_limit if unit.budget is None else min(unit.time_limit, unit.budget - spent)
        results.append(_solve_one(unit, milp, prob, task, limit))
    return results


def _solve_one(unit: SideUnit, milp, prob, task: SideTask, limit: float) -> SideResult:
    col = milp.targets[task.neuron]
    l, u = float(unit.lower[unit.layer][task.neuron]), float(unit.upper[unit.layer][task.neuron])
    active = task.side == ACTIVE
    found: list = []

    def on_solution(x):
        if _confirms(unit, task, x):
            found.append(np.clip(x, unit.lo, unit.hi))
            return True
        return False

    result = SideResult(unit.layer, task.neuron, task.side, "undecided", solver=unit.solver, binaries=milp.n_binary)
    if (active and u < task.eps) or (not active and l > -task.eps):
        result.verdict, result.certificate, result.epsilon = "proven", "bounds-epsilon", task.eps
        result.status, result.bound = "bounds", (u if active else l)
        return result
    try:
        if active:
            prob.set_bounds(col, max(l, task.eps), u)
        else:
            prob.set_bounds(col, l, min(u, -task.eps))
        prob.set_objective({col: 1.0} if unit.objective == "max" else {}, maximize=active)
        out = prob.solve(limit, on_solution)
    except Exception as exc:  # noqa: BLE001 - a solver failure proves nothing
        result.status = f"error: {type(exc).__name__}: {exc}"
        return result
    finally:
        try:
            prob.set_bounds(col, l, u)
        except Exception:  # noqa: BLE001
            pass
    result.status, result.seconds, result.nodes = out.status, out.seconds, out.nodes
    result.candidates = out.candidates
    if found:
        result.verdict, result.witness = "witness", found[0]
        return result
    for x in out.candidates:  # a solution the callback did not see as such (e.g. found in presolve)
        if _confirms(unit, task, x):
            result.verdict, result.witness = "witness", np.clip(x, unit.lo, unit.hi)
            return result
    if out.status == "infeasible":
        result.verdict, result.certificate, result.epsilon = "proven", "milp-infeasible", task.eps
        result.bound = task.eps if active else -task.eps
        return result
    if out.candidates:
        result.status += " (unconfirmed solution)"
    if out.dual_bound is not None and unit.objective == "max":
        # the solver's bound on the constrained optimum; y never exceeds max(bound, eps) (up to eps)
        result.bound = max(out.dual_bound, task.eps) + task.eps if active else min(out.dual_bound, -task.eps) - task.eps
    return result


def solve_side(weights, biases, relu, lo, hi, lower, upper, layer: int, neuron: int, side: str, eps: float,
               time_limit: float, solver: str = "highs", objective: str = "max", binary=None,
               options: dict | None = None, method: str = "milp", bounds_exact: bool = True) -> SideResult:
    """One side as one independent unit of work (see ``SideUnit`` for the arguments)."""
    task = SideTask(int(neuron), side, float(eps), WITNESS_FLOAT64 * float(eps))
    unit = SideUnit(list(weights), list(biases), list(relu), np.asarray(lo, float), np.asarray(hi, float),
                    list(lower), list(upper), int(layer), [task], float(time_limit), solver, None, objective,
                    binary, dict(options or {}), method, bounds_exact)
    return solve_sides(unit)[0]


# ---- branch and bound on ReLU states ------------------------------------------------------------------
BAB_MEMORY = 400e6
"""Bytes the open pieces of one side may hold; beyond it the side is left undecided."""


def bab_side(unit: SideUnit, task: SideTask, time_limit: float, *, batch: int = 512, iterations: int = 1,
             root_iterations: int = 30, lr: float = 0.1, optimize: bool = False, refine: bool = False) -> SideResult:
    """Settle one side by branch and bound on the states of the unstable ReLUs before the unit's layer.

    The side asks whether ``d y >= eps`` is reachable (``d = +1`` for ``active``, ``-1`` for ``inactive``).
    A piece of the ReLU state space is a set of sign constraints; its bound on ``d y`` is
    ``bounds.split_row_bounds`` (CROWN with optimised slopes and Lagrange multipliers for the constraints,
    outward-rounded).  Best first: the pieces with the largest bounds are split on the free unstable
    neuron with the largest intercept term ``max(c_j, 0) * t_j`` in its bound (BaBSR's score), both
    children bounded together in one batch; pieces whose bound is below ``eps`` are closed.  Every piece's
    maximising vertex goes through a float64 forward pass: one beyond the witness floor ends the search
    with a witness.  All pieces closed: proven (``bab``; exact, epsilon 0, when every closed bound was
    ``<= 0`` and the unit's bounds are exact, else with the margin).  Time or memory out: undecided, with
    the largest open bound (a sound bound on ``d y``) reported as ``bound``.

    ``refine``: each piece carries its own bounds of the layers before the unit's layer, recomputed after
    every split from the split constraints (``bounds.piece_bounds``: beta-CROWN's intermediate bounds of a
    subproblem).  A split in an early layer then makes neurons of later layers stable on the piece (no
    longer split or relaxed there), and a piece whose bounds cross is empty and closed.  Costs a
    back-substitution per later layer and piece, so it is off by default: on 8 open layer-2 sides of
    MNIST 4x256 over eps = 0.05 (5 s each) it closed the same 4 sides with 13-85 % fewer pieces but took
    24 s against 21 s (bench/levers.py, strategy ``refine``).

    ``optimize=True`` tightens a bound instead (for neurons already witnessed on that side): no witness
    stops the search, pieces are closed when their bound is below the largest ``d y`` seen at a forward
    pass (they cannot hold the maximum), and ``bound`` is the largest bound of any piece, open or closed,
    when time is up or all are closed (verdict ``undecided``)."""
    t0 = time.perf_counter()
    from ..bounds import piece_bounds, split_row_bounds

    k = unit.layer
    d = 1.0 if task.side == ACTIVE else -1.0
    weights = [np.asarray(w, dtype=np.float64) for w in unit.weights[:k]]
    biases = [np.asarray(b, dtype=np.float64) for b in unit.biases[:k]]
    lower = [np.asarray(x, dtype=np.float64) for x in unit.lower[:k]]
    upper = [np.asarray(x, dtype=np.float64) for x in unit.upper[:k]]
    relu = list(unit.relu[:k])
    row_w = d * np.asarray(unit.weights[k], dtype=np.float64)[task.neuron]
    row_b = d * float(unit.biases[k][task.neuron])
    result = SideResult(k, task.neuron, task.side, "undecided", solver="bab")
    widths = [w.shape[0] for w in weights]
    unstable = [(lower[j] < 0) & (upper[j] > 0) & bool(relu[j]) for j in range(k)]
    refine = bool(refine) and k >= 2  # with one layer before the side its bounds are the box's, exact

    incumbent = [-np.inf]

    def witness(xs: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray | None:
        if priority is not None and xs.shape[0] > 64:  # the pieces most likely to hold one
            xs = xs[np.argpartition(-priority, 63)[:64]]
        y = d * _prefix_forward(unit, xs)[:, task.neuron]
        incumbent[0] = max(incumbent[0], float(y.max(initial=-np.inf)))
        if optimize:
            return None
        hit = np.flatnonzero(y > task.floor)
        return np.clip(xs[hit[0]], unit.lo, unit.hi) if hit.size else None

    def threshold() -> float:
        return incumbent[0] if optimize else task.eps

    def choose(coef: list, splits: list, pl: list | None) -> tuple[np.ndarray, np.ndarray]:
        """Per piece: (layer, neuron) to split next, layer -1 when no free unstable neuron is left."""
        n_b = splits[0].shape[0]
        best_s = np.full(n_b, -np.inf)
        best_j = np.full(n_b, -1)
        best_i = np.zeros(n_b, dtype=np.int64)
        for j in range(k):
            # the whole box's bounds, or each piece's own (refine)
            l, u = (lower[j][None, :], upper[j][None, :]) if pl is None else (pl[0][j], pl[1][j])
            uns = (l < 0) & (u > 0) & bool(relu[j])
            tu = np.where(uns, _relaxation(l, u)[2], 0.0)  # BaBSR's intercept -u l / (u - l)
            spread = np.where(uns, np.minimum(u, -l), 0.0)  # a tie-break
            free = uns & (splits[j] == 0)
            score = np.where(free, np.maximum(coef[j], 0.0) * tu + 1e-6 * np.abs(coef[j]) * spread, -np.inf)
            i = np.argmax(score, axis=1)
            s = score[np.arange(n_b), i]
            better = s > best_s
            best_s[better], best_j[better], best_i[better] = s[better], j, i[better]
        return best_j, best_i

    splits = [np.zeros((1, n), np.int8) for n in widths]
    alpha = [np.broadcast_to(_relaxation(lower[j], upper[j])[0], (1, widths[j])).copy() for j in range(k)]
    beta = [np.zeros((1, n)) for n in widths]
    pl = ([x[None, :].copy() for x in lower], [x[None, :].copy() for x in upper]) if refine else None
    bound, coef, xs = split_row_bounds(weights, biases, relu, unit.lo, unit.hi, *(pl or (lower, upper)), row_w, row_b,
                                       splits, alpha, beta, iterations=root_iterations if k else 0, lr=lr)
    closed_max = -np.inf
    domains = 1

    def finish(verdict: str, **kw):
        result.verdict = verdict
        result.seconds = time.perf_counter() - t0
        result.nodes = domains
        for key, v in kw.items():
            setattr(result, key, v)
        return result

    x = witness(xs)
    if x is not None:
        return finish("witness", witness=x, status="witness")
    # the open pieces, as rows of preallocated arrays
    keep = bound >= threshold()
    closed_max = max(closed_max, float(bound[~keep].max(initial=-np.inf)))
    branch_j, branch_i = choose(coef, splits, pl)
    pool = _Pool(widths, [np.flatnonzero(u) for u in unstable], (lower, upper) if refine else None)
    pool.add(splits, alpha, beta, bound, branch_j, branch_i, keep, pl)
    alpha0 = [a[0].copy() for a in alpha]
    per_piece = pool.bytes_per_piece
    least = -np.inf if optimize else task.eps  # a reported bound never claims more than the search showed
    while pool.n:
        open_max = float(pool.bound[:pool.n].max())
        if time.perf_counter() - t0 >= time_limit:
            return finish("undecided", status="time limit", bound=d * max(open_max, closed_max, least))
        if pool.n * per_piece > BAB_MEMORY:
            return finish("undecided", status="memory limit", bound=d * max(open_max, closed_max, least))
        leaves = np.flatnonzero(pool.j[:pool.n] < 0)
        if leaves.size:
            # pieces with every unstable neuron fixed: the network is affine on them, so the exact maximum
            # is an LP; its duals are the best multipliers, and its optimum a point of the piece
            s_, a_, b_, _, _, p_ = pool.take(leaves.size, alpha0, idx=leaves)
            for r in range(leaves.size):
                sl_ = [x[r:r + 1] for x in s_]
                bl_ = [x[r:r + 1].copy() for x in b_]
                l_, u_ = ([x[r] for x in p_[0]], [x[r] for x in p_[1]]) if refine else (lower, upper)
                x_opt = _leaf_lp(weights, biases, relu, unit.lo, unit.hi, l_, u_, row_w, row_b, sl_, bl_)
                if x_opt is not None:
                    x = witness(x_opt[None, :])
                    if x is not None:
                        return finish("witness", witness=x, status="witness (piece LP)")
                leaf, _, _ = split_row_bounds(weights, biases, relu, unit.lo, unit.hi, l_, u_, row_w, row_b,
                                              sl_, [x[r:r + 1].copy() for x in a_], bl_, iterations=0)
                domains += 1
                if leaf[0] >= threshold():
                    return finish("undecided", status="piece LP not closed", bound=d * max(open_max, closed_max, least))
                closed_max = max(closed_max, float(leaf[0]))
            continue
        n_take = min(batch // 2, pool.n)
        s_, a_, b_, jj, ii, p_ = pool.take(n_take, alpha0)
        child_s = [np.concatenate([x, x]) for x in s_]
        child_a = [np.concatenate([x, x]) for x in a_]
        child_b = [np.concatenate([x, x]) for x in b_]
        rows = np.arange(2 * n_take)
        jj, ii = np.concatenate([jj, jj]), np.concatenate([ii, ii])
        sign = np.concatenate([np.ones(n_take, np.int8), -np.ones(n_take, np.int8)])
        for j in range(k):
            sel = jj == j
            child_s[j][rows[sel], ii[sel]] = sign[sel]
        child_p, empty = None, np.zeros(2 * n_take, bool)
        if refine:
            child_p = ([np.concatenate([x, x]) for x in p_[0]], [np.concatenate([x, x]) for x in p_[1]])
            empty = piece_bounds(weights, biases, relu, unit.lo, unit.hi, *child_p, child_s, jj + 1)
        bound, coef, xs = split_row_bounds(weights, biases, relu, unit.lo, unit.hi, *(child_p or (lower, upper)),
                                           row_w, row_b, child_s, child_a, child_b, iterations=iterations, lr=lr)
        bound = np.where(empty, -np.inf, bound)  # no input lies in an empty piece
        domains += 2 * n_take
        x = witness(xs[bound >= threshold()], bound[bound >= threshold()]) if np.any(bound >= threshold()) else None
        if x is not None:
            return finish("witness", witness=x, status="witness")
        keep = bound >= threshold()
        closed_max = max(closed_max, float(bound[~keep].max(initial=-np.inf)))
        branch_j, branch_i = choose(coef, child_s, child_p)
        pool.add(child_s, child_a, child_b, bound, branch_j, branch_i, keep, child_p)
    if optimize:
        return finish("undecided", status="all pieces closed", bound=d * closed_max)
    exact = unit.bounds_exact and closed_max <= 0
    return finish("proven", certificate="bab" if exact else "bab-epsilon", epsilon=0.0 if exact else task.eps,
                  status="all pieces closed", bound=d * (closed_max if exact else task.eps))


def _leaf_lp(weights, biases, relu, lo, hi, lower, upper, row_w, row_b, splits, beta) -> np.ndarray | None:
    """The piece's LP (every unstable ReLU of it fixed by ``splits``: the prefix is affine on it) solved by
    HiGHS: maximise the row subject to the split signs over the box.  Writes the optimal multipliers of
    the sign constraints into ``beta`` (a Farkas ray, scaled up, when the piece is empty) and returns the
    optimal input, or None.  Nothing here is trusted: the caller bounds the piece with these multipliers
    (``split_row_bounds``, outward-rounded) and checks the point with a forward pass."""
    import highspy

    from ..milp.highs import new_highs

    n0 = lo.size
    a_mat, a_const = np.eye(n0), np.zeros(n0)
    rows, rhs, where = [], [], []
    for j, (w, b) in enumerate(zip(weights, biases)):
        y_mat, y_const = w @ a_mat, w @ a_const + b
        if relu[j]:
            s = splits[j][0]
            on = (lower[j] >= 0) | (s > 0)
            for i in np.flatnonzero(s != 0):  # s y >= 0  <=>  -s (Y x) <= s c
                rows.append(-s[i] * y_mat[i])
                rhs.append(s[i] * y_const[i])
                where.append((j, i))
            a_mat, a_const = y_mat * on[:, None], y_const * on
        else:
            a_mat, a_const = y_mat, y_const
    obj = row_w @ a_mat
    h = new_highs()
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n0, len(rows)
    lp.col_cost_ = obj
    lp.col_lower_, lp.col_upper_ = lo.copy(), hi.copy()
    lp.sense_ = highspy.ObjSense.kMaximize
    if rows:
        g = np.array(rows)
        lp.row_lower_ = np.full(len(rows), -inf)
        lp.row_upper_ = np.array(rhs)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.arange(0, g.size + 1, n0, dtype=np.int32)
        lp.a_matrix_.index_ = np.tile(np.arange(n0, dtype=np.int32), len(rows))
        lp.a_matrix_.value_ = g.reshape(-1)
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n0, len(rows)
    h.passModel(lp)
    h.setOptionValue("time_limit", 10.0)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kOptimal:
        sol = h.getSolution()
        mu = np.maximum(-np.asarray(sol.row_dual, dtype=np.float64), 0.0) if rows else np.zeros(0)
        if rows and np.sum(mu) == 0:
            mu = np.maximum(np.asarray(sol.row_dual, dtype=np.float64), 0.0)  # the other sign convention
        for (j, i), m in zip(where, mu):
            beta[j][0, i] = m
        return np.clip(np.asarray(sol.col_value, dtype=np.float64), lo, hi)
    if status == highspy.HighsModelStatus.kInfeasible and rows:
        _, has_ray, ray = h.getDualRay()
        ray = np.abs(np.asarray(ray, dtype=np.float64)) if has_ray else np.ones(len(rows))
        scale = 1e3 * (1.0 + float(np.abs(obj).sum()) * float(np.maximum(np.abs(lo), np.abs(hi)).max(initial=1.0)))
        for (j, i), m in zip(where, ray):
            beta[j][0, i] = scale * m / max(float(ray.max()), 1e-300)
    return None


class _Pool:
    """The open pieces of a branch and bound: split signs, slopes, multipliers (float32), bound and the
    neuron to split next, and with ``bounds`` (the whole-box ``(lower, upper)``) each piece's own
    pre-activation bounds (float64: they are sound bounds, not starting points), stored for the unstable
    columns only (``cols[j]``) as rows of arrays that grow by doubling; taken rows are refilled from the
    tail.  Stored slopes and multipliers are only starting points for the next optimisation, so rounding
    them to float32 costs no soundness."""

    def __init__(self, widths: list, cols: list, bounds: tuple | None = None):
        self.widths, self.cols, self.bounds = widths, cols, bounds
        self.n = 0
        self.cap = 0
        self.s = [np.zeros((0, c.size), np.int8) for c in cols]
        self.a = [np.zeros((0, c.size), np.float32) for c in cols]
        self.b = [np.zeros((0, c.size), np.float32) for c in cols]
        self.l = [np.zeros((0, c.size)) for c in cols] if bounds is not None else []
        self.u = [np.zeros((0, c.size)) for c in cols] if bounds is not None else []
        self.bound = np.zeros(0)
        self.j = np.zeros(0, np.int64)
        self.i = np.zeros(0, np.int64)

    @property
    def bytes_per_piece(self) -> int:
        return sum(c.size for c in self.cols) * (9 + (16 if self.bounds is not None else 0)) + 24

    def _grow(self, need: int) -> None:
        if need <= self.cap:
            return
        cap = max(need, 2 * self.cap, 256)

        def grow(x):
            out = np.zeros((cap,) + x.shape[1:], x.dtype)
            out[:self.n] = x[:self.n]
            return out

        self.s, self.a, self.b = ([grow(x) for x in self.s], [grow(x) for x in self.a], [grow(x) for x in self.b])
        self.l, self.u = [grow(x) for x in self.l], [grow(x) for x in self.u]
        self.bound, self.j, self.i = grow(self.bound), grow(self.j), grow(self.i)
        self.cap = cap

    def add(self, s, a, b, bound, bj, bi, keep, pb=None) -> None:
        """Store the pieces ``keep`` selects (``pb``: their ``(lower, upper)`` when the pool keeps bounds)."""
        rows = np.flatnonzero(keep)
        m = rows.size
        if not m:
            return
        self._grow(self.n + m)
        sl = slice(self.n, self.n + m)
        for j, c in enumerate(self.cols):
            self.s[j][sl] = s[j][np.ix_(rows, c)]
            self.a[j][sl] = a[j][np.ix_(rows, c)]
            self.b[j][sl] = b[j][np.ix_(rows, c)]
            if self.bounds is not None:
                self.l[j][sl] = pb[0][j][np.ix_(rows, c)]
                self.u[j][sl] = pb[1][j][np.ix_(rows, c)]
        self.bound[sl] = bound[rows]
        self.j[sl] = bj[rows]
        self.i[sl] = bi[rows]
        self.n += m

    def take(self, m: int, alpha0: list, idx: np.ndarray | None = None):
        """Remove the ``m`` pieces with the largest bounds (or the rows ``idx``); return them at full width
        (``alpha0``: the slopes of the columns that are not stored; their bounds are the whole box's):
        ``(splits, alpha, beta, layer, neuron, (lower, upper) or None)``."""
        n = self.n
        if idx is None:
            idx = np.argpartition(-self.bound[:n], m - 1)[:m] if m < n else np.arange(n)
        s, a, b, pl, pu = [], [], [], [], []
        for j, c in enumerate(self.cols):
            w = self.widths[j]
            s_j = np.zeros((m, w), np.int8)
            s_j[:, c] = self.s[j][idx]
            a_j = np.repeat(alpha0[j][None, :], m, axis=0)
            a_j[:, c] = self.a[j][idx]
            b_j = np.zeros((m, w))
            b_j[:, c] = self.b[j][idx]
            s.append(s_j)
            a.append(a_j)
            b.append(b_j)
            if self.bounds is not None:
                for out, whole, kept in ((pl, self.bounds[0][j], self.l[j]), (pu, self.bounds[1][j], self.u[j])):
                    x = np.repeat(np.asarray(whole, dtype=np.float64)[None, :], m, axis=0)
                    x[:, c] = kept[idx]
                    out.append(x)
        out = (s, a, b, self.j[idx].copy(), self.i[idx].copy(), (pl, pu) if self.bounds is not None else None)
        holes = np.sort(idx[idx < n - m])
        tail = np.setdiff1d(np.arange(n - m, n), idx, assume_unique=True)
        if holes.size:
            for x in self.s + self.a + self.b + self.l + self.u:
                x[holes] = x[tail]
            for x in (self.bound, self.j, self.i):
                x[holes] = x[tail]
        self.n = n - m
        return out


# ---- witnesses --------------------------------------------------------------------------------------
def find_witnesses(net: Network, lo: np.ndarray, hi: np.ndarray, targets: list, floor: list, *,
                   deadline: float | None = None, starts: dict | None = None, steps: int = 30,
                   samples: int = 2048, rng=None, coef: list | None = None, max_rounds: int = 4) -> tuple[list, list, dict]:
    """Inputs of the box witnessing as many of ``targets`` ((layer, neuron, side) triples) as it can.

    Uniform samples, the vertex maximising each target's CROWN linear bound (``coef``: the ``coef`` of
    ``crown_bounds(..., with_coef=True)``), given ``starts`` ((layer, neuron, side) -> input) and then
    projected sign-gradient steps on every open target at once (one batch per layer), until done,
    ``known = (inactive, active, epsilon)``: neurons an earlier analysis certified (per layer masks and
    the margin each holds up to); they are settled from the start (certificate ``known``) and their
    exact certificates clip the bounds (``upper = 0`` / ``lower = 0``) for the layers after them.

    ``deadline`` (absolute ``time.monotonic()``) or ``max_rounds`` rounds (the first from the vertices or
    given starts, the others from random points).  Returns per-layer ``seen_active``/``seen_inactive`` masks
    (every layer, from every point evaluated) and one witness input per target it settled."""
    rng = np.random.default_rng(0) if rng is None else rng
    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    n_layers = len(net.layers)
    seen_a = [np.zeros(l.n_out, bool) for l in net.layers]
    seen_i = [np.zeros(l.n_out, bool) for l in net.layers]
    where: dict = {}

    def observe(x: np.ndarray) -> None:
        _, pres = net.forward(x, preactivations=True)
        for k in range(n_layers):
            act = pres[k] > floor[k]
            ina = pres[k] < -floor[k]
            for mask, seen, side in ((act, seen_a, ACTIVE), (ina, seen_i, INACTIVE)):
                new = mask.any(axis=0) & ~seen[k]
                if new.any():
                    rows = np.argmax(mask[:, new], axis=0)
                    for i, r in zip(np.flatnonzero(new), rows):
                        where[(k, int(i), side)] = x[r].copy()
                    seen[k] |= new

    def open_targets():
        return [t for t in targets if not (seen_a if t[2] == ACTIVE else seen_i)[t[0]][t[1]]]

    def expired() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    if samples > 0:
        observe(rng.uniform(lo, hi, size=(samples, lo.size)))
    observe(((lo + hi) / 2)[None, :])
    if coef is not None and open_targets():
        pts = []
        for k, i, side in open_targets():
            n = net.layers[k].n_out
            a = coef[k][0, i] if side == ACTIVE else coef[k][0, n + i]  # the row bounding y (or -y) from above
            pts.append(np.where(a > 0, hi, lo))
        observe(np.array(pts))
    if starts:
        pts = [np.clip(x, lo, hi) for t, x in starts.items() if t in set(open_targets())]
        if pts:
            observe(np.array(pts))
    width = hi - lo
    for round_ in range(max_rounds):
        todo = open_targets()
        if not todo or expired() or steps <= 0:
            break
        by_layer: dict = {}
        for t in todo:
            by_layer.setdefault(t[0], []).append(t)
        for k, group in sorted(by_layer.items()):
            if expired():
                break
            neurons = np.array([t[1] for t in group])
            direction = np.array([1.0 if t[2] == ACTIVE else -1.0 for t in group])
            x = np.array([_start_point(net, t, lo, hi, coef, starts, rng, round_) for t in group])
            step = 0.25
            for s in range(steps):
                if expired():
                    break
                g = preactivation_gradients(net, x, k, neurons)[1] * direction[:, None]
                x = np.clip(x + step * width * np.sign(g), lo, hi)
                step *= 0.85
                if s % 5 == 4 or s == steps - 1:
                    observe(x)
    return seen_a, seen_i, where


def _start_point(net: Network, t: tuple, lo, hi, coef, starts, rng, round_: int) -> np.ndarray:
    if round_ == 0 and starts and t in starts:
        return np.clip(starts[t], lo, hi)
    if round_ == 0 and coef is not None:
        k, i, side = t
        a = coef[k][0, i] if side == ACTIVE else coef[k][0, net.layers[k].n_out + i]
        return np.where(a > 0, hi, lo).astype(np.float64)
    return rng.uniform(lo, hi)


# ---- the driver -------------------------------------------------------------------------------------
@dataclass
class Settlement:
    """What ``settle`` established, per layer of the network (the output layer's entries stay empty).

    ``stably_inactive``/``stably_active``: certified states; ``certificate``: per neuron the kind of its
    certificate ("" if none); ``epsilon``: the margin it holds up to (0 = exact); ``seen_active``/
    ``seen_inactive``: witnessed states, with one input per witnessed side in ``witnesses``
    ((layer, neuron, side) -> input); ``undecided``: neither proven nor witnessed unstable.
    ``lower``/``upper``: the tightened bounds; they are sound for the network except that sides proven
    by a MILP contribute ``eps`` bounds (``upper = eps``), which hold under the epsilon policy.
    ``stages``: one dict per stage (name, layer, seconds, open sides before/after, ...)."""

    stably_inactive: list
    stably_active: list
    certificate: list
    epsilon: list
    seen_active: list
    seen_inactive: list
    lower: list
    upper: list
    hidden: list = field(default_factory=list)  # the hidden ReLU layers (the others are never undecided)
    witnesses: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)
    sides: list = field(default_factory=list)
    conflicts: list = field(default_factory=list)

    @property
    def undecided(self) -> list:
        """Per layer: neither proven nor witnessed unstable (hidden ReLU layers only)."""
        return [~(self.stably_inactive[k] | self.stably_active[k]) & ~(self.seen_active[k] & self.seen_inactive[k])
                if k in self.hidden else np.zeros(a.shape, bool) for k, a in enumerate(self.stably_inactive)]

    def counts(self) -> dict:
        hidden = range(len(self.stably_inactive) - 1)
        return {
            "stably_inactive": int(sum(self.stably_inactive[k].sum() for k in hidden)),
            "stably_active": int(sum((self.stably_active[k] & ~self.stably_inactive[k]).sum() for k in hidden)),
            "unstable": int(sum((self.seen_active[k] & self.seen_inactive[k]).sum() for k in hidden)),
            "undecided": int(sum(u.sum() for u in self.undecided)),
        }


TIGHTEN_SHARE = 0.25
"""``settle``'s intermediate tightening takes this share of the time left, split over the layers to come."""
TIGHTEN_LIMITS = (0.05, 0.3)
"""Seconds per witnessed side in intermediate tightening (the per-side limit is clamped to this range)."""
LOW_DIM = 8
"""Inputs of at most this many dimensions count as low-dimensional (the pipeline's ``SPLIT_MAX_DIMS``)."""
SCHEDULES = {
    # per layer: each method with its per-side time limit clamped to [min, max] seconds, and whether it
    # is a probe (dropped for the rest of the layer when its first wave settles no side); then the
    # second round: one method, at least this many seconds per side, over the time left
    "high-dim": ((("bab", 1.0, 10.0, True), ("milp", 0.5, 3.0, True)), ("bab", 30.0)),
    "low-dim": ((("milp", 1.0, 10.0), ("bab", 1.0, 10.0)), ("milp", 30.0)),
}
"""``auto`` picks by input size, and in the second round each layer gets the method that proved the most
of its sides in the first.  Measured (bench/levers.py, and per side with ``solve_side``): on 784-input
networks with hundreds of unstable neurons (mnist_4x256) the ReLU branch and bound proves most sides in
well under a second and SCIP proves none of those it leaves within 5 s (214-308 binaries); on a deep
network with few unstable neurons (ERAN 9x200, 80-94 binaries before layers 7-8) it is the other way round:
the branch and bound proves none of the deep sides in 20 s, SCIP and HiGHS prove each in 0.02-0.7 s.  A
probe's first wave (``chunk * parallel`` sides) tells which case a layer is.  On 2-input TLL networks the
branch and bound proves none of the deep sides in 2 s while SCIP proves them in 0.1-1.4 s."""


def settle(net: Network, lo: np.ndarray, hi: np.ndarray, *, time_limit: float = 300.0, deadline: float | None = None,
           solver: str = "scip", schedule="auto", seen_active: list | None = None,
           seen_inactive: list | None = None, known: tuple | None = None, alpha_iterations: int = 20, alpha_share: float = 0.1, lp: bool = False,
           witness_seconds: float | None = None, objective: str = "max", relax_proven: bool = True, chunk: int = 8,
           parallel: int = 1, map_fn=None, solver_options: dict | None = None, second_round: bool = True,
           final: tuple | None = None, seed: int = 0, on_progress=None, tighten: float = TIGHTEN_SHARE,
           tighten_limits: tuple = TIGHTEN_LIMITS, refine: bool = False) -> Settlement:
    """Settle every open side of every hidden ReLU layer of ``net`` over the box, first layer first.

    Stages (each recorded in ``stages`` with its time and the open sides before/after):

    1. ``crown``: CROWN bounds; ``alpha``: optimised slopes (``alpha_iterations``, 0 = none; at most
       ``alpha_share`` of the time); sides they settle are proven (exact);
    2. ``witness``: samples, CROWN vertices and batched gradient steps (``witness_seconds``, default 5 %
       of the time), plus ``seen_active``/``seen_inactive`` given by the caller;
    3. per layer, first to last: ``lp`` (optional: the LP relaxation per open side, rigorous through its
       duals), then each ``(method, min, max[, probe])`` of ``schedule`` (``"auto"``: ``SCHEDULES`` by
       input size): ``bab`` (``bab_side``) or ``milp`` (a feasibility MILP per side with ``solver``,
       highs or scip) on the sides still open (a probe stops when its first wave settles none), with a per-side
       limit ``clamp(share / open, min, max)``, ``share`` being the layer's part of the time left
       (proportional to its open sides against those of later layers); sides go in units of ``chunk``,
       ``parallel`` units at a time through ``map_fn`` (default: the builtin serial ``map``; a process
       pool's ``map`` runs them at once), witnesses found by one wave closing sides of the next; then
       ``tighten`` (intermediate tightening, when ``tighten > 0``, the layer is not the first and a later
       layer has open sides): the sides already witnessed of the layer's unstable neurons are bounded by
       the branch and bound in its optimising mode (``bab_side(optimize=True)``, exact bounds), widest
       triangle relaxation first, with ``tighten`` of the time left split over the layers still to come
       and a per-side limit clamped to ``tighten_limits``; then the bounds of later layers are recomputed
       (alpha-CROWN) with what was proven and tightened;
    4. with ``second_round``, ``final = (method, min_seconds)`` (default: the schedule's) goes over the
       layers again with the time left (per-side limit at least ``min_seconds``), and again with that
       floor doubled, while sides are open, time is left, and some side of the last round ran out of
       time; under ``"auto"`` a layer whose first round proved sides gets the method that proved the
       most of them instead.

    ``deadline`` (absolute ``time.monotonic()``) overrides ``time_limit``.  ``on_progress``, if given, is
    called with ``[(layer id, decided, open), ...]`` per hidden layer after every stage and every wave of sides
    (``pipeline.Progress.layers``).  Nothing is proven by a time limit or a failure: such sides stay
    undecided."""
    t_start = time.monotonic()
    deadline = t_start + float(time_limit) if deadline is None else float(deadline)
    map_fn = map if map_fn is None else map_fn
    adaptive = False  # second round: per layer the method that proved the most of its sides
    if isinstance(schedule, str):
        if schedule != "auto":
            raise ValueError(f"schedule {schedule!r}: expected 'auto' or a tuple of (method, min, max[, probe])")
        schedule, auto_final = SCHEDULES["low-dim" if net.input_size <= LOW_DIM else "high-dim"]
        adaptive = final is None
        final = auto_final if final is None else final
    elif final is None:
        final = (schedule[-1][0], schedule[-1][2]) if schedule else None
    schedule = [tuple(m) + (False,) * (4 - len(m)) for m in schedule]
    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    n_layers = len(net.layers)
    hidden = [k for k in range(n_layers - 1) if net.layers[k].is_relu]
    base = crown_bounds(net, lo[None, :], hi[None, :], with_coef=True)
    eps = epsilons(net, lo, hi, bounds=base)
    floor = [WITNESS_FLOAT64 * e for e in eps]
    stages: list = []
    zeros = [np.zeros(l.n_out, bool) for l in net.layers]
    st = Settlement(
        stably_inactive=[z.copy() for z in zeros], stably_active=[z.copy() for z in zeros],
        certificate=[np.full(l.n_out, "", dtype=object) for l in net.layers],
        epsilon=[np.zeros(l.n_out) for l in net.layers],
        seen_active=[z.copy() for z in zeros] if seen_active is None else [np.asarray(a, bool).copy() for a in seen_active],
        seen_inactive=[z.copy() for z in zeros] if seen_inactive is None else [np.asarray(a, bool).copy() for a in seen_inactive],
        lower=[], upper=[], hidden=hidden, stages=stages)
    exact_bounds = [True]  # False once a MILP result (epsilon policy) tightened a bound

    def open_sides(k: int) -> list:
        if k not in hidden:
            return []
        done = st.stably_inactive[k] | st.stably_active[k]
        out = [(k, int(i), ACTIVE) for i in np.flatnonzero(~done & ~st.seen_active[k])]
        out += [(k, int(i), INACTIVE) for i in np.flatnonzero(~done & ~st.seen_inactive[k])]
        return out

    def n_open(ks=None) -> int:
        return sum(len(open_sides(k)) for k in (hidden if ks is None else ks))

    def prove_from_bounds(kind: str, layers=None) -> None:
        for k in hidden if layers is None else layers:
            new_in = (st.upper[k] <= 0) & ~st.stably_inactive[k] & ~st.stably_active[k] & ~st.seen_active[k]
            new_act = (st.lower[k] >= 0) & ~st.stably_active[k] & ~st.stably_inactive[k] & ~st.seen_inactive[k]
            st.stably_inactive[k] |= new_in
            st.stably_active[k] |= new_act
            st.certificate[k][new_in | new_act] = kind
            if not exact_bounds[0]:  # bounds that rest on MILP results carry their margin
                st.epsilon[k][new_in | new_act] = eps[k][new_in | new_act]

    def report_progress() -> None:
        if on_progress is not None:
            on_progress([(int(net.layers[k].layer_id), int(u.size - u.sum()), int(u.sum()))
                         for k, u in enumerate(st.undecided) if k in hidden])

    def stage(name: str, t: float, before: int, after: int, **extra) -> None:
        now = time.monotonic()
        stages.append({"stage": name, "seconds": now - t, "open_before": before, "open_after": after,
                       "at": now - t_start, **extra, "undecided_neurons": st.counts()["undecided"]})
        report_progress()

    # 1. bounds (CROWN's, computed above with the margins)
    t = t_start
    st.lower = [b[0].copy() for b in base.lower]
    st.upper = [b[0].copy() for b in base.upper]
    before = n_open()
    if known is not None:
        for k in hidden:
            k_in, k_act, k_eps = (np.asarray(x[k]) for x in known)
            k_in, k_act = k_in.astype(bool), k_act.astype(bool) & ~k_in.astype(bool)
            for mask, target in ((k_in, st.stably_inactive), (k_act, st.stably_active)):
                new = mask & ~st.stably_inactive[k] & ~st.stably_active[k]
                target[k] |= new
                st.certificate[k][new] = "known"
                st.epsilon[k][new] = np.asarray(k_eps, float)[new]
            exact = np.asarray(k_eps, float) == 0
            st.upper[k] = np.where(k_in & exact, np.minimum(st.upper[k], 0.0), st.upper[k])
            st.lower[k] = np.where(k_act & exact, np.maximum(st.lower[k], 0.0), st.lower[k])
    prove_from_bounds("bounds")
    stage("crown", t, before, n_open())
    if alpha_iterations > 0 and time.monotonic() < deadline:
        t = time.monotonic()
        before = n_open()
        a = alpha_crown_bounds(net, lo, hi, iterations=alpha_iterations, start=Bounds(base.lower, base.upper),
                               lower=st.lower, upper=st.upper,
                               deadline=min(deadline, t + alpha_share * (deadline - t)))
        st.lower = [np.maximum(x, b[0]) for x, b in zip(st.lower, a.lower)]
        st.upper = [np.minimum(x, b[0]) for x, b in zip(st.upper, a.upper)]
        prove_from_bounds("alpha")
        stage("alpha", t, before, n_open())

    # 2. witnesses
    t = time.monotonic()
    before = n_open()
    targets = [x for k in hidden for x in open_sides(k)]
    if targets and time.monotonic() < deadline:
        budget = witness_seconds if witness_seconds is not None else 0.05 * (deadline - t)
        sa, si, where = find_witnesses(net, lo, hi, targets, floor, deadline=min(deadline, t + budget), rng=rng,
                                       coef=base.coef)
        _absorb_witnesses(st, sa, si, where)
    stage("witness", t, before, n_open())

    # 3. layer by layer
    relu = [l.is_relu for l in net.layers]
    side_results: list = []

    proved: dict = {}  # (layer, method) -> sides it proved in the first round

    def units_for(k: int, sides: list, per_side: float, budget: float, method: str, binary=None) -> list:
        """The sides ``(neuron, side)`` of layer k as units of ``chunk`` sides, with the bounds known now."""
        lower = [x.copy() for x in st.lower[:k + 1]]
        upper = [x.copy() for x in st.upper[:k + 1]]
        return [SideUnit([l.weight for l in net.layers[:k + 1]], [l.bias for l in net.layers[:k + 1]], relu[:k + 1],
                         lo, hi, lower, upper, k,
                         [SideTask(i, side, float(eps[k][i]), float(floor[k][i])) for i, side in sides[u:u + chunk]],
                         per_side, solver, budget, objective, binary, dict(solver_options or {}), method, exact_bounds[0],
                         refine)
                for u in range(0, len(sides), chunk)]

    def run_method(k: int, method: str, per_side: float, round_name: str, probe: bool = False) -> None:
        """Settle the open sides of layer k with ``method``; a probe stops after a first wave that settles
        nothing (the sides go on to the next method)."""
        sides = open_sides(k)
        if not sides or time.monotonic() >= deadline:
            return
        t = time.monotonic()
        binary = None
        if relax_proven and method == "milp":
            # neurons whose bounds were clipped to eps by a MILP proof: triangle relaxation, no binary
            binary = [~((st.upper[j] > 0) & (st.upper[j] <= 2 * eps[j]) | (st.lower[j] < 0) & (st.lower[j] >= -2 * eps[j]))
                      for j in range(k)]
        mine: list = []
        pending = list(sides)
        while pending and time.monotonic() < deadline:
            still = set(open_sides(k))
            pending = [x for x in pending if x in still]
            wave, pending = pending[:chunk * parallel], pending[chunk * parallel:]
            if not wave:
                break
            remaining = deadline - time.monotonic()
            units = units_for(k, [(i, side) for _, i, side in wave], min(per_side, remaining), remaining, method, binary)
            for results in map_fn(solve_sides, units):
                for r in results:
                    side_results.append(r)
                    mine.append(r)
                    if _apply_side(net, st, r, floor, eps):
                        exact_bounds[0] = False
            report_progress()
            if probe and not any(r.verdict != "undecided" for r in mine):
                break
        stats = {v: sum(1 for r in mine if r.verdict == v) for v in ("proven", "witness", "undecided")}
        if round_name == "1":
            proved[(k, method)] = proved.get((k, method), 0) + stats["proven"]
        times = [r.seconds for r in mine if r.status != "not started (budget)"]
        stage(f"{method}" + (f"-{solver}" if method == "milp" else ""), t, len(sides), len(open_sides(k)), layer=k,
              round=round_name, per_side_limit=round(per_side, 2), **stats, probe=probe,
              dropped=bool(probe and not stats["proven"] and not stats["witness"] and open_sides(k)),
              median_side=float(np.median(times)) if times else 0.0, max_side=max(times, default=0.0),
              binaries=max((r.binaries for r in mine), default=0))

    def run_tighten(k: int) -> None:
        """Bound the witnessed sides of layer k's unstable neurons more tightly (intermediate tightening:
        the later layers' relaxations and big-M constants get narrower)."""
        later = [j for j in hidden if j > k]
        if k == 0 or not n_open(later) or time.monotonic() >= deadline:
            return  # the first layer's interval bounds are exact over a box
        t = time.monotonic()
        l, u = st.lower[k], st.upper[k]
        uns = (l < 0) & (u > 0)
        gap = _relaxation(l, u)[2]  # the triangle's height, -u l / (u - l)
        sides = [(int(i), ACTIVE) for i in np.flatnonzero(uns & st.seen_active[k])]
        sides += [(int(i), INACTIVE) for i in np.flatnonzero(uns & st.seen_inactive[k])]
        sides.sort(key=lambda x: -gap[x[0]])
        if not sides:
            return
        budget = tighten * (deadline - t) / len(later)
        per_side = float(np.clip(budget * parallel / len(sides), *tighten_limits))
        stop = min(deadline, t + budget)
        width = float(np.sum(u[uns] - l[uns]))
        done = 0
        while done < len(sides) and time.monotonic() < stop:
            wave = sides[done:done + chunk * parallel]
            done += len(wave)
            remaining = stop - time.monotonic()
            for results in map_fn(solve_sides, units_for(k, wave, min(per_side, remaining), remaining, "tighten")):
                for r in results:
                    if _apply_side(net, st, r, floor, eps):
                        exact_bounds[0] = False
        stage("tighten", t, len(open_sides(k)), len(open_sides(k)), layer=k, sides=done, of=len(sides),
              per_side_limit=round(per_side, 3),
              width_ratio=round(float(np.sum(st.upper[k][uns] - st.lower[k][uns])) / max(width, 1e-300), 4))

    def refresh_bounds(k: int) -> None:
        """Recompute the bounds after layer k with what is proven up to k (alpha-CROWN, short)."""
        if k + 1 >= n_layers - 1 or time.monotonic() >= deadline or alpha_iterations <= 0:
            return
        t = time.monotonic()
        before = n_open(range(k + 1, n_layers))
        a = alpha_crown_bounds(net, lo, hi, iterations=alpha_iterations, lower=st.lower, upper=st.upper,
                               deadline=min(deadline, t + alpha_share * (deadline - t)))
        st.lower = [np.maximum(x, b[0]) for x, b in zip(st.lower, a.lower)]
        st.upper = [np.minimum(x, b[0]) for x, b in zip(st.upper, a.upper)]
        prove_from_bounds("alpha")
        stage("alpha-refresh", t, before, n_open(range(k + 1, n_layers)), layer=k)

    def per_side_limit(k: int, lo_t: float, hi_t: float) -> float:
        n_k = len(open_sides(k))
        later = n_open([j for j in hidden if j > k])
        share = (deadline - time.monotonic()) * n_k / max(n_k + later, 1)
        return float(np.clip(share / max(n_k, 1), lo_t, hi_t))

    for k in hidden:
        if time.monotonic() >= deadline:
            break
        if not open_sides(k):
            continue
        if lp:
            t = time.monotonic()
            before = len(open_sides(k))
            _lp_tighten(net, st, k, lo, hi, deadline)
            prove_from_bounds("lp", [k])
            stage("lp", t, before, len(open_sides(k)), layer=k)
        for method, lo_t, hi_t, probe in schedule:
            run_method(k, method, per_side_limit(k, lo_t, hi_t), "1", probe)
        if tighten > 0:
            run_tighten(k)
        refresh_bounds(k)
    # 4. later rounds over the time left, the per-side floor doubling each round, for as long as some side
    # of the last round ran out of time (when none did, more time per side would change nothing)
    round_no, floor_t = 2, (final[1] if final else 0.0)
    while second_round and final and n_open() and time.monotonic() < deadline - 1.0:
        first = len(side_results)
        for k in hidden:
            method = final[0]
            if adaptive:
                best = max(((n, m) for (j, m), n in proved.items() if j == k), default=(0, method))
                method = best[1] if best[0] > 0 else method
            if open_sides(k) and time.monotonic() < deadline - 1.0:
                run_method(k, method, max(per_side_limit(k, floor_t, np.inf), floor_t), str(round_no))
                refresh_bounds(k)
        if not any(r.status.startswith("time limit") or r.status == "not started (budget)"
                   for r in side_results[first:]):
            break
        round_no, floor_t = round_no + 1, min(2 * floor_t, max(deadline - time.monotonic(), 0.0))
    st.sides = side_results
    return st


def _absorb_witnesses(st: Settlement, sa: list, si: list, where: dict) -> None:
    """Add witnessed states.  A witness beats a certificate: a neuron certified only up to the margin
    (``y < eps``) may really reach ``(0, eps)``, and then it is kept (``conflicts``); an exact
    certificate contradicted by a witness is a soundness bug and raises."""
    for k in range(len(st.seen_active)):
        bad_in = sa[k] & st.stably_inactive[k]
        bad_act = si[k] & st.stably_active[k]
        for i in np.flatnonzero(bad_in | bad_act):
            if st.epsilon[k][i] == 0:
                raise RuntimeError(f"layer {k} neuron {i}: a witness contradicts an exact {st.certificate[k][i]} certificate")
            st.conflicts.append((k, int(i), str(st.certificate[k][i])))
            st.certificate[k][i] = ""
            st.epsilon[k][i] = 0.0
        st.stably_inactive[k] &= ~bad_in
        st.stably_active[k] &= ~bad_act
        st.seen_active[k] |= sa[k]
        st.seen_inactive[k] |= si[k]
    for key, x in where.items():
        st.witnesses.setdefault(key, x)


def _apply_side(net: Network, st: Settlement, r: SideResult, floor: list, eps: list) -> bool:
    """Record one side's outcome; True when it tightened a bound under the epsilon policy."""
    k, i = r.layer, r.neuron
    if r.verdict == "witness":
        _, pres = net.forward(r.witness[None, :], preactivations=True)
        sa = [p[0] > f for p, f in zip(pres, floor)]
        si = [p[0] < -f for p, f in zip(pres, floor)]
        where = {}
        for kk in range(len(sa)):
            for j in np.flatnonzero(sa[kk]):
                where[(kk, int(j), ACTIVE)] = r.witness
            for j in np.flatnonzero(si[kk]):
                where[(kk, int(j), INACTIVE)] = r.witness
        _absorb_witnesses(st, sa, si, where)
        return False
    if r.verdict == "proven":
        if r.side == ACTIVE and not st.seen_active[k][i]:
            st.stably_inactive[k][i] = True
        elif r.side == INACTIVE and not st.seen_inactive[k][i]:
            st.stably_active[k][i] = True
        else:
            return False
        st.certificate[k][i] = r.certificate
        st.epsilon[k][i] = max(st.epsilon[k][i], r.epsilon)
    if r.bound is None:
        return False
    # a proof (upper = eps, or the BaB's closed bound) or a timed-out solve's bound tightens a big-M constant
    if r.side == ACTIVE and r.bound < st.upper[k][i]:
        st.upper[k][i] = r.bound
    elif r.side == INACTIVE and r.bound > st.lower[k][i]:
        st.lower[k][i] = r.bound
    else:
        return False
    return r.solver != "bab" or r.epsilon > 0


def _lp_tighten(net: Network, st: Settlement, k: int, lo, hi, deadline: float) -> None:
    """Tighten the bounds of layer k's open sides by the LP relaxation (rigorous through the duals); the
    caller proves from them what they settle."""
    from .tighten import lp_bounds

    neurons = np.flatnonzero(~(st.stably_inactive[k] | st.stably_active[k]) & ~(st.seen_active[k] & st.seen_inactive[k]))
    if neurons.size == 0:
        return
    sides = {int(i): [s for s, seen in ((ACTIVE, st.seen_active[k][i]), (INACTIVE, st.seen_inactive[k][i])) if not seen]
             for i in neurons}
    low, up = lp_bounds(net, lo, hi, st.lower, st.upper, k, sides, deadline=deadline)
    st.lower[k] = np.maximum(st.lower[k], low)
    st.upper[k] = np.minimum(st.upper[k], up)

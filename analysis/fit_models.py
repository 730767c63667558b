"""Curve families for scaling fits, by name in :data:`FIT_MODELS` (used by analysis.fit).

* ``loglinear``: y = a + b * log10(N), Sun et al. 2017's "performance grows
  logarithmically with data"; b is the gain per 10x data.
* ``powerlaw``: err(N) = c + k * N^(-alpha), the saturating power law of later
  scaling work, fitted on the error (1 - y for metrics in [0, 1], 100 - y for
  percentages, y itself for losses) with bounds c >= 0, k >= 0, alpha in [1e-3, 3].

Which model may be fitted on how many data sizes is :attr:`FitModel.fit_sizes`
(docs/uncertainty.md): the log-linear baseline from 3 sizes, a model with k
parameters from k + 3 sizes (the power law: 6), the fewest for which its
AICc (k + 1 parameters with the noise variance) is defined with one
pretraining run per size and the held-out refit keeps two spare sizes.

A new family is a :class:`FitModel` added to the registry; every function
works on batches (one row per bootstrap resample) so uncertainty is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# Metric names (substrings) where lower is better: their error is the value itself.
LOWER_IS_BETTER = ("loss", "error", "err", "nll")


@dataclass(frozen=True)
class ErrorScale:
    """Maps a metric to an error that falls with data: err = bound - y, or y for losses."""

    bound: float | None

    def to_error(self, y):
        return y if self.bound is None else self.bound - y

    def from_error(self, err):
        return err if self.bound is None else self.bound - err


def metric_range(metric: str, values: np.ndarray) -> tuple[float, float]:
    """The values a metric can take: [0, 1] or [0, 100] for bounded ones, [0, inf) for losses.

    Uses :func:`error_scale`'s reading of the metric (its name and observed
    values); a metric it cannot place (e.g. negative values) is unbounded.
    Predictions and interval ends of every model are clipped to this range.
    """
    scale, problem = error_scale(metric, values)
    if problem:
        return -np.inf, np.inf
    return 0.0, np.inf if scale.bound is None else scale.bound


def error_scale(metric: str, values: np.ndarray) -> tuple[ErrorScale | None, str]:
    """The error transform for a metric, or (None, why the power law does not apply)."""
    if any(word in metric.lower() for word in LOWER_IS_BETTER):
        if values.min() < 0:
            return None, f"{metric} has negative values; a saturating error must be >= 0"
        return ErrorScale(None), ""
    if values.min() >= 0 and values.max() <= 1:
        return ErrorScale(1.0), ""
    if values.min() >= 0 and values.max() <= 100:
        return ErrorScale(100.0), ""  # a percentage
    return None, f"{metric} values lie outside [0, 100]; the power law needs a bounded metric or a loss"


# --------------------------------------------------------------------------- models
# Every model works on a batch: n and y of shape (draws, runs), params (draws, p),
# so that a thousand bootstrap refits are a few array operations, not a loop.


@dataclass(frozen=True)
class FitModel:
    """A curve family, registered in :data:`FIT_MODELS`.

    ``fit(n, y, scale) -> params`` on batches (D, m) -> (D, p);
    ``predict(params, n, scale)``: params (D, p) or (p,) at sizes n (G,) ->
    (D, G) or (G,); ``inverse(params, target, scale)`` -> N per row (inf when
    the target is never reached); ``min_sizes``: distinct sizes that determine
    the parameters; ``needs_scale``: fitted on the error, so the metric must
    be bounded or a loss; ``derived(params, low, high, scale)`` -> extra
    columns, named in ``derived_names`` (each with ``_low`` / ``_high``);
    ``fit_sizes``: distinct data sizes a curve needs before the model is
    fitted at all (and so can be chosen); ``design(n)`` -> (len(n), p): the
    design matrix of a model that is linear in its parameters, which then
    gets exact t intervals instead of a bootstrap.
    """

    name: str
    param_names: tuple[str, ...]
    min_sizes: int
    fit: Callable[[np.ndarray, np.ndarray, ErrorScale], np.ndarray]
    predict: Callable[[np.ndarray, np.ndarray, ErrorScale], np.ndarray]
    inverse: Callable[[np.ndarray, float, ErrorScale], np.ndarray]
    fit_sizes: int = 3
    needs_scale: bool = False
    derived: Callable[..., dict] | None = None
    derived_names: tuple[str, ...] = ()
    design: Callable[[np.ndarray], np.ndarray] | None = None


def _columns(params: np.ndarray) -> list[np.ndarray]:
    """Parameter columns shaped to broadcast against a grid of sizes."""
    params = np.asarray(params, dtype=float)
    return [params[..., i, None] if params.ndim > 1 else params[i] for i in range(params.shape[-1])]


def _loglinear_fit(n, y, scale=None):
    x = np.log10(n)
    x_centered = x - x.mean(axis=1, keepdims=True)
    y_mean = y.mean(axis=1)
    slope = (x_centered * y).sum(axis=1) / (x_centered ** 2).sum(axis=1)
    return np.column_stack([y_mean - slope * x.mean(axis=1), slope])


def _loglinear_design(n):
    n = np.asarray(n, dtype=float)
    return np.column_stack([np.ones_like(n), np.log10(n)])


def _loglinear_predict(params, n, scale=None):
    intercept, slope = _columns(params)
    return intercept + slope * np.log10(n)


def _loglinear_inverse(params, target, scale=None):
    intercept, slope = np.atleast_2d(params).T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        decades = np.where(slope != 0, (target - intercept) / slope, np.inf)
        return 10.0 ** decades


def _linear_part(power: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For fixed alpha: min over c >= 0, k >= 0 of sum (c + k * power - err)^2, batched.

    The problem is a convex quadratic on a quadrant, so its optimum is the
    unconstrained one when feasible, else the best of the two faces (c = 0 or
    k = 0), each a clipped one-dimensional least squares.
    """
    p_mean, e_mean = power.mean(-1, keepdims=True), err.mean(-1, keepdims=True)
    var = ((power - p_mean) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        k_free = ((power - p_mean) * (err - e_mean)).sum(-1) / var
        c_free = e_mean[..., 0] - k_free * p_mean[..., 0]
        k_face = np.maximum((power * err).sum(-1) / (power ** 2).sum(-1), 0.0)
    c_face = np.maximum(e_mean[..., 0], 0.0)
    candidates = [(np.where((c_free >= 0) & (k_free >= 0), c_free, np.nan), k_free),
                  (np.zeros_like(k_face), k_face), (c_face, np.zeros_like(c_face))]
    best_sse = np.full(k_face.shape, np.inf)
    best_c, best_k = np.zeros_like(k_face), np.zeros_like(k_face)
    for c, k in candidates:
        sse = ((c[..., None] + k[..., None] * power - err) ** 2).sum(-1)
        better = np.nan_to_num(sse, nan=np.inf) < best_sse
        best_sse, best_c, best_k = (np.where(better, sse, best_sse), np.where(better, c, best_c),
                                    np.where(better, k, best_k))
    return best_sse, best_c, best_k


_ALPHA_GRID = np.geomspace(1e-3, 3.0, 160)


def _powerlaw_fit(n, y, scale):
    """err = c + k * N^-alpha by profiling alpha on a grid (5% steps, refined to 0.03%).

    For each alpha the best (c, k) is a closed form (:func:`_linear_part`), so
    the search is global in alpha, needs no start values and runs on the whole
    bootstrap batch at once. Time and memory: O(200 x draws x runs).
    """
    err = scale.to_error(y)
    # x = N / N_min puts x^-alpha in (0, 1], keeping the problem well conditioned.
    n_min = n.min(axis=1, keepdims=True)
    log_x = np.log(n / n_min)
    sse, _, _ = _linear_part(np.exp(-_ALPHA_GRID[:, None, None] * log_x), err)
    best = _ALPHA_GRID[np.argmin(sse, axis=0)]
    rows = np.arange(len(err))
    for step in (_ALPHA_GRID[1] / _ALPHA_GRID[0], 1.003):  # two finer passes around the best
        fine = np.clip(best * step ** np.linspace(-1, 1, 21)[:, None], _ALPHA_GRID[0], _ALPHA_GRID[-1])
        sse, c, k = _linear_part(np.exp(-fine[:, :, None] * log_x), err)
        pick = np.argmin(sse, axis=0)
        best = fine[pick, rows]
    alpha = best
    return np.column_stack([c[pick, rows], k[pick, rows] * n_min[:, 0] ** alpha, alpha])


def _powerlaw_predict(params, n, scale):
    floor, coefficient, alpha = _columns(params)
    return scale.from_error(floor + coefficient * np.asarray(n, dtype=float) ** -alpha)


def _powerlaw_inverse(params, target, scale):
    floor, coefficient, alpha = np.atleast_2d(params).T
    gap = scale.to_error(target) - floor
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        images = np.exp((np.log(coefficient) - np.log(gap)) / alpha)
    # A target beyond the fitted floor is never reached: infinite data needed.
    return np.where((gap > 0) & (coefficient > 0), images, np.inf)


def _powerlaw_limit(params, low, high, scale):
    """The metric at infinite data (from the error floor c), with its interval."""
    limits = sorted(float(scale.from_error(v)) for v in (low[0], high[0]))
    return {"limit": float(scale.from_error(params[0])), "limit_low": limits[0], "limit_high": limits[1]}


FIT_MODELS: dict[str, FitModel] = {
    "loglinear": FitModel("loglinear", ("intercept", "slope_per_10x"), 2,
                          _loglinear_fit, _loglinear_predict, _loglinear_inverse,
                          fit_sizes=3, design=_loglinear_design),
    "powerlaw": FitModel("powerlaw", ("error_floor", "coefficient", "alpha"), 3,
                         _powerlaw_fit, _powerlaw_predict, _powerlaw_inverse, fit_sizes=6,
                         needs_scale=True, derived=_powerlaw_limit, derived_names=("limit",)),
}

"""Multi-objective tools: preferences, scalarisation, the non-dominated front, hypervolume.

Every objective is MAXIMISED (task scores such as exact match). Following HM3 (DESIGN.md §1.1), a
score vector f is normalised by the ideal point z* (the best single model per task), a preference
λ is drawn from Dirichlet(1) on the simplex, and f is scalarised by the weighted sum Σ λ_k f_k or by
the Tchebycheff form −max_k λ_k (z*_k − f_k) (Miettinen, *Nonlinear Multiobjective Optimization*,
1999, §3.4; Zhang & Li, MOEA/D, IEEE TEVC 2007, eq. 3), which also reaches non-convex parts of the
front. The distance is signed, not absolute (Wierzbicki's achievement function): z* is the best
single model, which a merge can beat, and |f_k − z*_k| would count beating it as a loss.
Hypervolume is computed exactly by moocore (Fonseca et al. 2006; Guerreiro & Fonseca 2017).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import moocore
import numpy as np

from merge_env.errors import ConfigError

logger = logging.getLogger(__name__)

SCALARISATIONS = ("weighted_sum", "tchebycheff")


# ----------------------------------------------------------------------------- preferences, scores
def sample_preferences(
    n: int, n_objectives: int, rng: np.random.Generator, alpha: float = 1.0
) -> np.ndarray:
    """Return `n` preferences of shape (n, n_objectives), rows on the simplex, ~ Dirichlet(alpha)."""
    if n < 0 or n_objectives < 1:
        raise ConfigError(
            f"sample_preferences: need n >= 0, n_objectives >= 1: {n}, {n_objectives}"
        )
    if not alpha > 0:
        raise ConfigError(f"sample_preferences: Dirichlet alpha must be > 0, got {alpha}")
    return rng.dirichlet(np.full(n_objectives, float(alpha)), size=n)


def ideal_point(score_rows: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Return the ideal point z*: the per-objective maximum over the score rows (n, k)."""
    rows = np.asarray(score_rows, dtype=float)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ConfigError(f"ideal_point: need a non-empty (n, k) score matrix, got {rows.shape}")
    return rows.max(axis=0)


def normalise(scores: np.ndarray, ideal: np.ndarray, nadir: np.ndarray | None = None) -> np.ndarray:
    """Return scores in units of the ideal point: f / z* by default, (f − nadir)/(z* − nadir) with a nadir.

    The default f / z* is DESIGN.md's choice: the best single model scores 1 on its task and a
    model scoring 0 stays at 0, so the reference point 0 means "solves nothing". It needs z* >= 0;
    a negative ideal (e.g. a log-likelihood headline) would flip the order, so it is an error —
    pass a nadir instead. Where z* == 0 (or z* == nadir), every model ties on that objective and it
    is left unscaled (divisor 1) with a warning, rather than dividing by zero.
    """
    f = np.asarray(scores, dtype=float)
    z = np.asarray(ideal, dtype=float)
    if f.shape[-1:] != z.shape:
        raise ConfigError(f"normalise: scores of shape {f.shape} do not match ideal {z.shape}")
    if nadir is None:
        if np.any(z < 0):
            raise ConfigError(
                f"normalise: ideal point {z.tolist()} has a negative entry; f / z* would reverse "
                "the order there — pass a nadir point to normalise as (f - nadir) / (z* - nadir)"
            )
        low, span = np.zeros_like(z), z
    else:
        low = np.asarray(nadir, dtype=float)
        if low.shape != z.shape:
            raise ConfigError(
                f"normalise: nadir of shape {low.shape} does not match ideal {z.shape}"
            )
        span = z - low
        if np.any(span < 0):
            raise ConfigError(f"normalise: nadir {low.tolist()} exceeds ideal {z.tolist()}")
    flat = np.isclose(span, 0.0, rtol=0.0, atol=1e-12)
    if np.any(flat):
        logger.warning("normalise: objectives %s have a zero range; unscaled", np.flatnonzero(flat))
    return (f - low) / np.where(flat, 1.0, span)


def _check_pref(f: np.ndarray, pref: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    f, pref = np.asarray(f, dtype=float), np.asarray(pref, dtype=float)
    if f.shape[-1:] != pref.shape[-1:]:
        raise ConfigError(
            f"{name}: scores {f.shape} and preference {pref.shape} differ in objectives"
        )
    if np.any(pref < 0) or not np.all(np.isfinite(pref)):
        raise ConfigError(f"{name}: preference must be finite and non-negative: {pref.tolist()}")
    return f, pref


def _scalar_or_array(x: np.ndarray) -> np.ndarray | float:
    return float(x) if np.ndim(x) == 0 else x


def weighted_sum(f: np.ndarray, pref: np.ndarray) -> np.ndarray | float:
    """Return Σ_k pref_k f_k over the last axis (f normalised); a float for one score vector."""
    f, pref = _check_pref(f, pref, "weighted_sum")
    return _scalar_or_array((f * pref).sum(axis=-1))


def tchebycheff(f: np.ndarray, pref: np.ndarray, ideal: np.ndarray) -> np.ndarray | float:
    """Return −max_k pref_k (ideal_k − f_k) over the last axis (higher is better; 0 at the ideal).

    Signed, so the value never falls as a score rises: a score above the ideal on task k (a merge
    that beats the best single model) never counts against it, where −max_k pref_k |f_k − ideal_k|
    (MOEA/D's form, whose ideal is the best score seen, so never exceeded) would. It raises the
    value only where it moves the max (every weighted task at or above the ideal); elsewhere it
    ties. Below the ideal on every task the two forms agree.
    """
    f, pref = _check_pref(f, pref, "tchebycheff")
    z = np.asarray(ideal, dtype=float)
    if z.shape != f.shape[-1:]:
        raise ConfigError(f"tchebycheff: ideal of shape {z.shape} does not match scores {f.shape}")
    return _scalar_or_array(-(pref * (z - f)).max(axis=-1))


def scalarise(
    f: np.ndarray, pref: np.ndarray, ideal: np.ndarray, kind: str = "tchebycheff"
) -> np.ndarray | float:
    """Return the scalarised score of f under `pref`: kind is "weighted_sum" or "tchebycheff"."""
    if kind == "weighted_sum":
        return weighted_sum(f, pref)
    if kind == "tchebycheff":
        return tchebycheff(f, pref, ideal)
    raise ConfigError(f"scalarise: unknown kind {kind!r}; expected one of {SCALARISATIONS}")


# ----------------------------------------------------------------------------- front, hypervolume
def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim == 1:
        p = p[None, :] if p.size else p.reshape(0, 0)
    if p.ndim != 2:
        raise ConfigError(f"{name}: points must be a (n, k) matrix, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ConfigError(f"{name}: points contain NaN or inf")
    return p


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Return a boolean mask of the non-dominated rows of (n, k) points, all objectives maximised.

    Of several identical non-dominated rows only the first is kept, so the front holds each score
    vector once (the earliest recipe that reached it).
    """
    p = _as_points(points, "non_dominated")
    if p.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(p, maximise=True, keep_weakly=False), dtype=bool)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Return the exact hypervolume dominated by `points` (maximised) and bounded below by `reference`.

    Points are expected already normalised (see `normalise`); with f / z* the natural reference is
    the origin. Points that do not strictly exceed the reference in every objective add nothing.
    """
    p = _as_points(points, "hypervolume")
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if p.shape[0] == 0:
        return 0.0
    if ref.shape != (p.shape[1],) or not np.all(np.isfinite(ref)):
        raise ConfigError(
            f"hypervolume: reference {ref.tolist()} does not fit {p.shape[1]} objectives"
        )
    p = p[np.all(p > ref, axis=1)]
    if p.shape[0] == 0:
        return 0.0
    return float(moocore.hypervolume(p, ref=ref, maximise=True))

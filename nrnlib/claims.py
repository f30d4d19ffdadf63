"""Every verdict of the suite: a statistic, its bootstrap 95% CI, a threshold fixed in code, a verdict.

**The rule.** A claim is decided before the run by a statistic ``T`` (a mean, a paired difference,
a ratio of means, a correlation, ...), a threshold ``t`` and a direction (``">"``: the claim says
``T > t``; ``"<"``: it says ``T < t``). With ``[lo, hi]`` the percentile-bootstrap 95% CI of ``T``:

- ``">"``: **holds** if ``lo > t``; **does not hold** if ``hi < t``; otherwise **inconclusive**;
- ``"<"``: **holds** if ``hi < t``; **does not hold** if ``lo > t``; otherwise **inconclusive**.

A CI that touches the threshold is inconclusive. Never a mean compared with a mean.

**Percentile bootstrap.** Draw ``B`` (default 2,000) resamples of the units with replacement
(``numpy.random.default_rng(seed)``, seed 0 by default, so a rerun gives the same CI), compute
``T*_b`` on each, and take ``[q_{α/2}(T*), q_{1-α/2}(T*)]`` (``α = 0.05``; ``numpy.quantile``,
linear interpolation). Units:

- a 1-D array ``[unit]`` (e.g. test examples): resample the units;
- a 2-D array ``[seed, example]``, ``design="nested"`` (default): resample seeds, and within each
  drawn seed resample its examples independently, ``x*_{b,i,j} = x[s_{b,i}, e_{b,i,j}]``;
  ``design="crossed"``: one example resample shared by all drawn seeds,
  ``x*_{b,i,j} = x[s_{b,i}, e_{b,j}]`` (for a test set shared by the seeds).

Two arms measured on the same units (same test examples, same seeds, same batches) are resampled
with the same indices (*paired*): :func:`paired_difference_ci`, :func:`scaled_difference_ci`,
:func:`ratio_of_means_ci` with ``paired=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import numpy as np
from jaxtyping import Float, Real

DIRECTIONS = (">", "<")
VERDICTS = ("holds", "does not hold", "inconclusive")
PAPERS = ("A", "B", "ours")
DESIGNS = ("nested", "crossed")
N_BOOT = 2000
LEVEL = 0.95
SEED = 0

Statistic = Callable[..., Any]  # numpy-style reduction: statistic(x, axis=tuple_of_axes) -> array
# Values may also come as lists, which numpy turns into a [unit] or [seed, example] array (any real dtype).
UnitLists = Sequence[float] | Sequence[Sequence[float]]


# --------------------------------------------------------------------------------------------------
# the record
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A statistic on the data (``estimate``) and its percentile-bootstrap CI ``[ci_low, ci_high]``.

    ``n`` is the number of values resampled (seeds × examples for a 2-D design), ``shape`` their
    array shape, ``method`` a one-line description of how the CI was made."""

    estimate: float
    ci_low: float
    ci_high: float
    n: int
    shape: tuple[int, ...] = ()
    method: str = ""


@dataclass(frozen=True)
class Claim:
    """One verdict, as written to ``figures/results/*.json`` and read by the scorecard.

    ``id`` is stable across runs (e.g. ``"A.deactivation.ratio"``), ``paper`` is ``"A"``, ``"B"`` or
    ``"ours"``; ``statement`` is the paper's words, ``paper_value`` the paper's number as text;
    ``statistic`` says in words what ``estimate`` is; ``[ci_low, ci_high]`` its 95% CI; the claim
    says ``estimate {direction} threshold``; ``verdict`` follows :func:`decide` (checked here);
    ``n`` units of ``unit`` were resampled; ``scope`` is a task name or e.g. ``"all tasks"``."""

    id: str
    paper: str
    statement: str
    paper_value: str
    statistic: str
    estimate: float
    ci_low: float
    ci_high: float
    threshold: float
    direction: str
    verdict: str
    n: int
    unit: str
    scope: str
    notebook: str
    figure: str
    profile: str
    method: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or any(c.isspace() for c in self.id):
            raise ValueError(f"Claim id must be a non-empty string without spaces, got {self.id!r}")
        if self.paper not in PAPERS:
            raise ValueError(f"Claim {self.id}: paper must be one of {PAPERS}, got {self.paper!r}")
        for name in ("estimate", "ci_low", "ci_high", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Claim {self.id}: {name} must be a finite number, got {value!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"Claim {self.id}: n (units resampled) must be a positive int, got {self.n!r}")
        expected = decide(self.ci_low, self.ci_high, self.threshold, self.direction)
        if self.verdict != expected:
            raise ValueError(f"Claim {self.id}: verdict {self.verdict!r} does not follow the rule: CI "
                             f"[{self.ci_low}, {self.ci_high}] vs {self.direction} {self.threshold} gives "
                             f"{expected!r}. Build claims with make_claim().")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Claim:
        """The claim written by :meth:`as_dict` (unknown or missing keys are a ``ValueError``)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a claim must be a dict, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        unknown, missing = set(data) - names, required - set(data)
        if unknown or missing:
            raise ValueError(f"not a Claim dict: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        return cls(**dict(data))


# --------------------------------------------------------------------------------------------------
# the rule
# --------------------------------------------------------------------------------------------------


def decide(ci_low: float, ci_high: float, threshold: float, direction: str) -> str:
    """``"holds"`` when the whole CI is past ``threshold`` in ``direction``, ``"does not hold"`` when
    the whole CI is short of it, else ``"inconclusive"`` (a CI touching the threshold included)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    values = {"ci_low": ci_low, "ci_high": ci_high, "threshold": threshold}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(value):
            raise ValueError(f"decide: {name} must be a finite number, got {value!r}")
    if ci_low > ci_high:
        raise ValueError(f"decide: ci_low {ci_low} is above ci_high {ci_high}")
    above, below = ci_low > threshold, ci_high < threshold
    if direction == ">":
        return "holds" if above else "does not hold" if below else "inconclusive"
    return "holds" if below else "does not hold" if above else "inconclusive"


def make_claim(
    id: str, *, paper: str, statement: str, paper_value: str, statistic: str, estimate: Estimate,
    threshold: float, direction: str, unit: str, scope: str, notebook: str, figure: str = "", profile: str,
) -> Claim:
    """A :class:`Claim` from an :class:`Estimate`, its verdict decided by :func:`decide`."""
    if not isinstance(estimate, Estimate):
        raise ValueError(f"make_claim: estimate must be an Estimate (from bootstrap_ci & co.), got "
                         f"{type(estimate).__name__}")
    verdict = decide(estimate.ci_low, estimate.ci_high, threshold, direction)
    return Claim(id=id, paper=paper, statement=statement, paper_value=paper_value, statistic=statistic,
                 estimate=float(estimate.estimate), ci_low=float(estimate.ci_low), ci_high=float(estimate.ci_high),
                 threshold=float(threshold), direction=direction, verdict=verdict, n=int(estimate.n), unit=unit,
                 scope=scope, notebook=notebook, figure=figure, profile=str(getattr(profile, "name", profile)),
                 method=estimate.method)


def tally_claim(
    id: str, claims: Sequence[Claim], at_least: int, *, paper: str, statement: str, paper_value: str,
    unit: str = "tasks", scope: str, notebook: str, figure: str = "", profile: str,
) -> Claim:
    """"The claim holds on at least ``at_least`` of the units", decided from per-unit verdicts.

    The number ``H`` of units whose claim truly holds lies in ``[#holds, #holds + #inconclusive]``
    (each unit's own CI decides it); that interval is the claim's CI, the estimate is ``#holds``,
    and the threshold is ``at_least − 0.5`` with direction ``">"``: holds when ``#holds ≥ at_least``,
    does not hold when ``#holds + #inconclusive < at_least``."""
    if not claims:
        raise ValueError(f"tally_claim {id}: no per-unit claims to count")
    if not 1 <= at_least <= len(claims):
        raise ValueError(f"tally_claim {id}: at_least must be in 1..{len(claims)}, got {at_least}")
    n_holds = sum(c.verdict == "holds" for c in claims)
    n_open = sum(c.verdict == "inconclusive" for c in claims)
    estimate = Estimate(n_holds, n_holds, n_holds + n_open, len(claims),
                        method="count of per-unit verdicts: [#holds, #holds + #inconclusive]")
    return make_claim(id, paper=paper, statement=statement, paper_value=paper_value,
                      statistic=f"number of {unit} (of {len(claims)}) where '{claims[0].id}' holds",
                      estimate=estimate, threshold=at_least - 0.5, direction=">", unit=unit, scope=scope,
                      notebook=notebook, figure=figure, profile=profile)


# --------------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------------


def _units(values: Any, name: str = "values") -> np.ndarray:
    """``values`` as a float64 array of shape [unit] or [seed, example], checked."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numbers (a 1-D [unit] or 2-D [seed, example] array): {err}") from None
    if array.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D [unit] or 2-D [seed, example], got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: nothing to bootstrap")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} non-finite value(s) (NaN or inf): "
                         f"drop or fix those units before bootstrapping")
    if array.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 units along its last axis to resample, got shape {array.shape}")
    return array


def _check_options(n_boot: int, level: float, design: str) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
        raise ValueError(f"n_boot must be an int >= 100, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")


def resample_indices(shape: tuple[int, ...], n_boot: int, rng: np.random.Generator,
                     design: str = "nested") -> tuple[np.ndarray, ...]:
    """Index arrays that take ``B`` resamples of an array of ``shape`` (see the module docstring):
    1-D: ``(e,)`` with ``e`` [B, n]; 2-D: ``(s[..., None], e)`` giving [B, S, E]."""
    if len(shape) == 1:
        return (rng.integers(0, shape[0], (n_boot, shape[0])),)
    n_seeds, n_examples = shape
    seeds = rng.integers(0, n_seeds, (n_boot, n_seeds))
    if design == "nested":
        examples = rng.integers(0, n_examples, (n_boot, n_seeds, n_examples))
    else:
        examples = rng.integers(0, n_examples, (n_boot, 1, n_examples))
    return seeds[:, :, None], examples


def _reduce(statistic: Statistic, x: np.ndarray, first_axis: int) -> np.ndarray:
    return np.asarray(statistic(x, axis=tuple(range(first_axis, x.ndim))), dtype=np.float64)


def _percentile(boot: np.ndarray, level: float, what: str, max_undefined: float = 0.1) -> tuple[float, float]:
    """Percentile interval of the resamples whose statistic is defined (not NaN); at most a
    ``max_undefined`` share may be undefined."""
    finite = boot[~np.isnan(boot)]
    if len(finite) < (1 - max_undefined) * len(boot):
        raise ValueError(f"{what}: {len(boot) - len(finite)} of {len(boot)} resamples gave an undefined "
                         f"statistic; the CI is not meaningful on these data")
    alpha = 1 - level
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _method(shape: tuple[int, ...], n_boot: int, level: float, seed: int, design: str, extra: str = "") -> str:
    units = f"{shape[0]} units" if len(shape) == 1 else f"{shape[0]} seeds x {shape[1]} examples, {design}"
    return f"percentile bootstrap {level:.0%}, {n_boot} resamples of {units}, seed {seed}" + extra


def bootstrap_distribution(
    values: Real[np.ndarray, "*units"] | UnitLists, statistic: Statistic = np.mean, *, n_boot: int = N_BOOT,
    seed: int = SEED, design: str = "nested",
) -> Float[np.ndarray, " n_boot"]:
    """``statistic`` on ``n_boot`` resamples of ``values`` ([unit] or [seed, example]).

    ``statistic(x, axis=...)`` must reduce the given axes the numpy way (``np.mean``, ``np.median``)."""
    _check_options(n_boot, LEVEL, design)
    array = _units(values)
    boot = array[resample_indices(array.shape, n_boot, np.random.default_rng(seed), design)]
    out = _reduce(statistic, boot, 1)
    if out.shape != (n_boot,):
        raise ValueError(f"statistic must reduce a resample to one number (numpy-style axis=...), got shape "
                         f"{out.shape}")
    return out


def bootstrap_ci(
    values: Real[np.ndarray, "*units"] | UnitLists, statistic: Statistic = np.mean, *, n_boot: int = N_BOOT,
    level: float = LEVEL, seed: int = SEED, design: str = "nested",
) -> Estimate:
    """``statistic(values)`` and its percentile-bootstrap CI over the units (module docstring)."""
    _check_options(n_boot, level, design)
    array = _units(values)
    boot = bootstrap_distribution(array, statistic, n_boot=n_boot, seed=seed, design=design)
    low, high = _percentile(boot, level, "bootstrap_ci")
    return Estimate(float(_reduce(statistic, array, 0)), low, high, int(array.size), array.shape,
                    _method(array.shape, n_boot, level, seed, design))


def _pair(a: Any, b: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _units(a, names[0]), _units(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"paired arms must share units: {names[0]} has shape {a.shape}, {names[1]} {b.shape}")
    return a, b


def paired_difference_ci(
    a: Real[np.ndarray, "*units"] | UnitLists, b: Real[np.ndarray, "*units"] | UnitLists, *, n_boot: int = N_BOOT,
    level: float = LEVEL, seed: int = SEED, design: str = "nested",
) -> Estimate:
    """``mean(a − b)`` over units shared by two arms, resampled together (paired)."""
    a, b = _pair(a, b, ("a", "b"))
    estimate = bootstrap_ci(a - b, n_boot=n_boot, level=level, seed=seed, design=design)
    return Estimate(estimate.estimate, estimate.ci_low, estimate.ci_high, estimate.n, estimate.shape,
                    estimate.method + ", paired difference")


def _two_arm_means(num: Any, den: Any, paired: bool, n_boot: int, seed: int, design: str):
    """Bootstrap means of two arms: the same indices when paired, independent resamples otherwise."""
    if paired:
        num, den = _pair(num, den, ("numerator", "denominator"))
        idx = resample_indices(num.shape, n_boot, np.random.default_rng(seed), design)
        return num, den, _reduce(np.mean, num[idx], 1), _reduce(np.mean, den[idx], 1)
    num, den = _units(num, "numerator"), _units(den, "denominator")
    rng = np.random.default_rng(seed)
    boot_num = _reduce(np.mean, num[resample_indices(num.shape, n_boot, rng, design)], 1)
    boot_den = _reduce(np.mean, den[resample_indices(den.shape, n_boot, rng, design)], 1)
    return num, den, boot_num, boot_den


def scaled_difference_ci(
    num: Real[np.ndarray, "*num_units"] | UnitLists, den: Real[np.ndarray, "*den_units"] | UnitLists, factor: float,
    *, paired: bool = True, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED, design: str = "nested",
) -> Estimate:
    """``mean(num) − factor · mean(den)``: "num is at least ``factor`` times den" as a margin above 0.

    Equivalent to ``mean(num) / mean(den) > factor`` where ``mean(den) > 0``, and defined everywhere."""
    if not math.isfinite(factor):
        raise ValueError(f"factor must be finite, got {factor!r}")
    _check_options(n_boot, level, design)
    num, den, boot_num, boot_den = _two_arm_means(num, den, paired, n_boot, seed, design)
    low, high = _percentile(boot_num - factor * boot_den, level, "scaled_difference_ci")
    return Estimate(float(num.mean() - factor * den.mean()), low, high, int(num.size + (0 if paired else den.size)),
                    num.shape, _method(num.shape, n_boot, level, seed, design,
                                       f", mean(num) - {factor:g} mean(den), {'paired' if paired else 'unpaired'}"))


def ratio_of_means_ci(
    num: Real[np.ndarray, "*num_units"] | UnitLists, den: Real[np.ndarray, "*den_units"] | UnitLists, *,
    paired: bool = True, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED, design: str = "nested",
) -> Estimate:
    """``mean(num) / mean(den)`` (e.g. own-set drop over random-set drop, for "≥ 3× random").

    Needs ``mean(den) > 0`` on the data; a resample whose denominator mean is ``≤ 0`` is undefined
    and left out (more than 10% undefined is a ``ValueError``: use :func:`scaled_difference_ci`,
    defined everywhere, when the denominator can be near 0)."""
    _check_options(n_boot, level, design)
    num, den, boot_num, boot_den = _two_arm_means(num, den, paired, n_boot, seed, design)
    if den.mean() <= 0:
        raise ValueError(f"ratio_of_means_ci: the denominator's mean is {den.mean():.4g} <= 0, the ratio is "
                         f"undefined; use scaled_difference_ci(num, den, factor) > 0 instead")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(boot_den > 0, boot_num / boot_den, np.nan)
    low, high = _percentile(ratio, level, "ratio_of_means_ci (use scaled_difference_ci)")
    return Estimate(float(num.mean() / den.mean()), low, high, int(num.size + (0 if paired else den.size)),
                    num.shape, _method(num.shape, n_boot, level, seed, design,
                                       f", ratio of means, {'paired' if paired else 'unpaired'}"))


def _rank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    denominator = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (x * y).sum(-1) / denominator, np.nan)


def correlation_ci(
    x: Real[np.ndarray, " unit"] | Sequence[float], y: Real[np.ndarray, " unit"] | Sequence[float],
    method: str = "spearman", *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED,
) -> Estimate:
    """Spearman (Pearson on average ranks) or Pearson correlation of paired ``(x_i, y_i)``, with the
    percentile CI of resampled pairs (resamples where x or y is constant are left out; > 10% is an error)."""
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    _check_options(n_boot, level, "nested")
    x, y = _pair(x, y, ("x", "y"))
    if x.ndim != 1 or len(x) < 3:
        raise ValueError(f"correlation_ci needs 1-D x and y of at least 3 pairs, got shape {x.shape}")
    transform = _rank if method == "spearman" else (lambda v: v)
    estimate = float(_pearson_rows(transform(x), transform(y)))
    if not math.isfinite(estimate):
        raise ValueError("correlation_ci: x or y is constant, the correlation is undefined")
    (idx,) = resample_indices(x.shape, n_boot, np.random.default_rng(seed))
    low, high = _percentile(_pearson_rows(transform(x[idx]), transform(y[idx])), level, "correlation_ci")
    return Estimate(estimate, low, high, len(x), x.shape,
                    _method(x.shape, n_boot, level, seed, "nested", f", {method} correlation of resampled pairs"))


def off_diagonal_mean_ci(
    matrix: Real[np.ndarray, "unit unit"] | Sequence[Sequence[float]], *, n_boot: int = N_BOOT,
    level: float = LEVEL, seed: int = SEED,
) -> Estimate:
    """Mean of ``M[i, j]`` over pairs of different units ``i ≠ j`` (e.g. IoU between two tasks'
    sets, or a paired difference of two such matrices), with a CI from resampling the *units*: a
    resample of units ``u_1..u_n`` gives the mean of ``M[u_a, u_b]`` over the pairs with
    ``u_a ≠ u_b`` (a unit drawn twice is never paired with itself). Resamples that draw a single
    unit have no such pair and are left out (3 of 27 for 3 units, 4 of 256 for 4)."""
    _check_options(n_boot, level, "nested")
    m = _units(matrix, "matrix")
    n = len(m)
    if m.shape != (n, n) or n < 3:
        raise ValueError(f"off_diagonal_mean_ci needs a square matrix of at least 3 units, got shape {m.shape}")
    (idx,) = resample_indices((n,), n_boot, np.random.default_rng(seed))
    pairs = m[idx[:, :, None], idx[:, None, :]]
    distinct = idx[:, :, None] != idx[:, None, :]
    with np.errstate(invalid="ignore"):
        boot = (pairs * distinct).sum((1, 2)) / distinct.sum((1, 2))
    low, high = _percentile(boot, level, "off_diagonal_mean_ci", max_undefined=0.25)
    estimate = float((m.sum() - np.trace(m)) / (n * n - n))
    return Estimate(estimate, low, high, n, m.shape,
                    _method((n,), n_boot, level, seed, "nested", ", mean over pairs of distinct units"))


# --------------------------------------------------------------------------------------------------
# display
# --------------------------------------------------------------------------------------------------


def format_ci(estimate: float, low: float, high: float, digits: int = 3) -> str:
    """``"0.123 [0.100, 0.150]"``; counts (all three whole numbers) as ``"3 [3, 4]"``."""
    if all(float(v).is_integer() for v in (estimate, low, high)):
        return f"{estimate:.0f} [{low:.0f}, {high:.0f}]"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def describe(claim: Claim, digits: int = 3) -> str:
    """One sentence: ``"HOLDS: statement (scope): statistic = 0.5 [0.4, 0.6], rule > 0.1, n = 12 tasks"``."""
    return (f"{claim.verdict.upper()}: {claim.statement} ({claim.scope}): {claim.statistic} = "
            f"{format_ci(claim.estimate, claim.ci_low, claim.ci_high, digits)}, rule {claim.direction} "
            f"{claim.threshold:.{digits}g}, n = {claim.n} {claim.unit}")


def claims_table(claims: Sequence[Claim], digits: int = 3):
    """A tidy ``pandas.DataFrame`` of claims: id, scope, estimate [95% CI], rule, n, verdict."""
    import pandas as pd

    rows = [{"id": c.id, "scope": c.scope, "estimate [95% CI]": format_ci(c.estimate, c.ci_low, c.ci_high, digits),
             "rule": f"{c.direction} {c.threshold:.{digits}g}", "n": f"{c.n} {c.unit}", "verdict": c.verdict}
            for c in claims]
    return pd.DataFrame(rows, columns=["id", "scope", "estimate [95% CI]", "rule", "n", "verdict"])

"""The cross-checkpoint checks: from the observations of a suite's checkpoints to a verdict per checkpoint.

Each check gives reasons (`Finding`: a code and a sentence); a checkpoint with any reason is *suspect*.

- `identical`: the checkpoint's content hash equals another audited step's, anywhere in the schedule.
  In each group of identical checkpoints one is taken as genuine (the final checkpoint if it is in the
  group, else the earliest) and the others are flagged, with the run they belong to.
- `partial`: some but not all of its tensors are byte-identical to another step's (a tensor or a whole
  shard served from another checkpoint). Tensors identical at every audited step (frozen ones) are left
  out. Of the two steps sharing tensors, the borrower is flagged: the other one if one of them is the
  first or final checkpoint, else the one whose shared tensors sit further from their own neighbours'
  trajectory (`_deviation`); both when that cannot tell them apart (less than twice as far).
- `trajectory`: a break in log ‖W‖, log ‖W − W_initial‖ or log ‖W − W_final‖ against log(1 + step)
  (see `trajectory_breaks`).
- `config`, `layout`: config.json, or the tensors' names, dtypes or shapes, differ from what most
  audited steps have.
- `missing`, `unreadable`: a step of the schedule whose weights are not there, or cannot be read.
- `known`: a published defect of this model names the step (`catalog.KNOWN_DEFECTS`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pythia_dynamics.audit.observe import Observation
from pythia_dynamics.catalog import KnownDefect

__all__ = ["MIN_JUMP", "MIN_TRAJECTORY_POINTS", "Z_THRESHOLD", "Finding", "judge", "trajectory_breaks"]

# A trajectory break: robust z of at least Z_THRESHOLD *and* a jump of at least MIN_JUMP in log units (a
# factor of two) away from the line through the neighbours. docs/audit.md gives the false-positive rate.
Z_THRESHOLD = 8.0
MIN_JUMP = math.log(2.0)
MAD_TO_SIGMA = 1.4826  # MAD of a normal sample x this = its standard deviation
SCALE_FLOOR = 1e-3  # log units: a series smoother than this (all but constant) is not divided by ~0
MIN_TRAJECTORY_POINTS = 8  # checkpoints with features needed before breaks are looked for
FEATURES = ("norm", "distance from initial", "distance to final")


@dataclass(frozen=True)
class Finding:
    code: str  # identical | partial | trajectory | config | layout | missing | unreadable | known | hub
    text: str

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


@dataclass
class Judgement:
    findings: dict[int, list[Finding]] = field(default_factory=lambda: defaultdict(list))
    scores: dict[int, float] = field(default_factory=dict)  # step -> largest |robust z| of its trajectory
    groups: list[list[int]] = field(default_factory=list)  # identical checkpoints, each group in step order
    notes: list[str] = field(default_factory=list)


def judge(
    observations: dict[int, Observation],
    audited: Sequence[int],
    schedule: Sequence[int],
    *,
    unreadable: dict[int, str] | None = None,
    known: Sequence[KnownDefect] = (),
) -> Judgement:
    """Verdict reasons for every step of `audited` (the steps asked for, in training order)."""
    result = Judgement()
    first, final = schedule[0], schedule[-1]
    for step, why in (unreadable or {}).items():
        code = "missing" if _is_missing(why) else "unreadable"
        result.findings[step].append(Finding(code, why))
    observed = {s: observations[s] for s in audited if s in observations}
    copies = _identical(observed, first, final, result)
    canonical = {s: o for s, o in observed.items() if s not in copies}
    borrowers = _partial(canonical, first, final, result)
    changed = _odd_ones_out(observed, final, result)
    excluded = (copies | borrowers | changed) - {first, final}
    on_trajectory = {s: o for s, o in observed.items() if s not in excluded}
    for step, (feature, score, jump) in trajectory_breaks(on_trajectory, result).items():
        how = "smaller" if jump < 0 else "larger"
        result.findings[step].append(Finding(
            "trajectory", f"{feature} is {math.exp(abs(jump)):.3g}x {how} than the trend of its neighbours "
            f"(robust z {score:+.1f}, threshold {Z_THRESHOLD:g})"
        ))  # fmt: skip
    for defect in known:
        for step in defect.affected_steps(list(audited)):
            result.findings[step].append(Finding("known", f"EleutherAI/pythia#{defect.issue}: {defect.summary} ({defect.url})"))
    return result


def _is_missing(why: str) -> bool:
    return "missing" in why or "no weights" in why or "not in the Hugging Face cache" in why


def _identical(observed: dict[int, Observation], first: int, final: int, result: Judgement) -> set[int]:
    by_hash: dict[str, list[int]] = defaultdict(list)
    for step in sorted(observed):
        by_hash[observed[step].content_hash].append(step)
    order = sorted(observed)
    copies = set()
    for steps in by_hash.values():
        if len(steps) < 2:
            continue
        result.groups.append(steps)
        genuine = final if final in steps else steps[0]
        runs = _runs(steps, order)
        for step in steps:
            if step == genuine:
                continue
            copies.add(step)
            run = next(r for r in runs if step in r)
            in_run = f"; part of a run of {len(run)} identical consecutive checkpoints, steps {run[0]}–{run[-1]}" if len(run) > 2 else ""
            result.findings[step].append(Finding(
                "identical", f"weights identical to step {genuine} (content hash {observed[step].content_hash[:12]}){in_run}"
            ))  # fmt: skip
    return copies


def _runs(steps: list[int], order: list[int]) -> list[list[int]]:
    """`steps` split into runs of consecutive audited checkpoints."""
    runs: list[list[int]] = []
    for step in steps:
        if runs and order.index(step) == order.index(runs[-1][-1]) + 1:
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


def _partial(observed: dict[int, Observation], first: int, final: int, result: Judgement) -> set[int]:
    holders: dict[tuple[str, str], list[int]] = defaultdict(list)
    for step, obs in observed.items():
        for name, digest in obs.tensor_hashes.items():
            holders[(name, digest)].append(step)
    frozen = {name for (name, _), steps in holders.items() if len(steps) == len(observed) and len(observed) > 1}
    shared: dict[tuple[int, int], list[str]] = defaultdict(list)
    for (name, _), steps in holders.items():
        if name in frozen or len(steps) < 2:
            continue
        for i, a in enumerate(steps):
            for b in steps[i + 1 :]:
                shared[(a, b)].append(name)
    borrowers = set()
    for (a, b), names in sorted(shared.items()):
        flagged = _borrower(a, b, names, observed, first, final)
        for step in flagged:
            other = b if step == a else a
            borrowers.add(step)
            result.findings[step].append(Finding("partial", _describe_shared(observed[step], names, other, frozen)))
    return borrowers


def _borrower(a: int, b: int, names: list[str], observed: dict[int, Observation], first: int, final: int) -> list[int]:
    for reference in (final, first):  # the reference checkpoints are taken as genuine
        if reference in (a, b):
            return [b if a == reference else a]
    dev_a, dev_b = (_deviation(s, names, observed) for s in (a, b))
    if math.isnan(dev_a) or math.isnan(dev_b) or max(dev_a, dev_b) < 2 * min(dev_a, dev_b):
        return [a, b]
    return [a] if dev_a > dev_b else [b]


def _deviation(step: int, names: list[str], observed: dict[int, Observation]) -> float:
    """How far the `names` tensors' log distance from initial sits from the line through the step's neighbours."""
    order = sorted(observed)
    i = order.index(step)
    if i == 0 or i == len(order) - 1:
        return math.nan
    x = [math.log1p(s) for s in order[i - 1 : i + 2]]
    total = 0.0
    for name in names:
        values = [observed[s].features.get(name, (math.nan,) * 3)[1] for s in order[i - 1 : i + 2]]
        if not all(v > 0 for v in values):
            return math.nan
        y = [math.log(v) for v in values]
        total += abs(y[1] - _interpolate(x, y))
    return total


def _interpolate(x: Sequence[float], y: Sequence[float]) -> float:
    """y at x[1] on the straight line through (x[0], y[0]) and (x[2], y[2])."""
    w = (x[1] - x[0]) / (x[2] - x[0])
    return (1 - w) * y[0] + w * y[2]


def _describe_shared(obs: Observation, names: list[str], other: int, frozen: set[str]) -> str:
    names = sorted(names)
    whole_shards = []
    if obs.shards:
        by_shard: dict[str, set[str]] = defaultdict(set)
        for name, shard in obs.shards.items():
            if name in obs.tensor_hashes:
                by_shard[shard].add(name)
        equal = set(names) | frozen  # frozen tensors are equal at every step, so to `other`'s too
        whole_shards = [shard for shard, members in sorted(by_shard.items()) if members - frozen and members <= equal]
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    text = f"{len(names)} of its {len(obs.tensor_hashes)} tensors are byte-identical to step {other}'s ({shown})"
    if whole_shards:
        text += f"; whole shard(s) equal to step {other}'s: {', '.join(whole_shards)}"
    return text


def _odd_ones_out(observed: dict[int, Observation], final: int, result: Judgement) -> set[int]:
    """Steps whose config, or whose tensors' names, dtypes and shapes, differ from most audited steps'."""
    flagged = set()
    for code, get in (("config", lambda o: o.config), ("layout", lambda o: o.signature)):
        values = {s: json.dumps(get(o), sort_keys=True) for s, o in observed.items() if get(o) is not None}
        if len(set(values.values())) < 2:
            continue
        counts = Counter(values.values())
        top = max(counts.values())
        # Ties go to what the final checkpoint has (else the latest step's).
        usual = values.get(final) if counts.get(values.get(final)) == top else next(
            v for s, v in sorted(values.items(), reverse=True) if counts[v] == top
        )  # fmt: skip
        for step, value in values.items():
            if value != usual:
                flagged.add(step)
                result.findings[step].append(Finding(code, _describe_change(code, json.loads(value), json.loads(usual))))
    return flagged


def _describe_change(code: str, have: dict, usual: dict) -> str:
    keys = sorted(k for k in set(have) | set(usual) if have.get(k) != usual.get(k))
    shown = "; ".join(f"{k}: {have.get(k, 'absent')} (most steps: {usual.get(k, 'absent')})" for k in keys[:3])
    more = f"; and {len(keys) - 3} more" if len(keys) > 3 else ""
    what = "config.json differs from most steps'" if code == "config" else "tensor names, dtypes or shapes differ from most steps'"
    return f"{what}: {shown}{more}"


def trajectory_breaks(observed: dict[int, Observation], result: Judgement | None = None) -> dict[int, tuple[str, float, float]]:
    """Checkpoints off their neighbours' trend: step -> (feature, robust z, jump in log units).

    For each tensor and feature f in (‖W‖, ‖W − W_initial‖, ‖W − W_final‖), the residual of log f at a
    checkpoint from the straight line (in x = log(1 + step)) through its two neighbours: a second
    difference on log-step. Each tensor's residual at a checkpoint is standardised robustly against the
    residuals that do not involve the checkpoint (all but its own and its two neighbours'), z = (r − median)
    / (1.4826 · MAD) (scale at least SCALE_FLOOR), and a checkpoint's score for the feature is the median
    over tensors of z, its jump the median of r. A checkpoint is a break when |score| ≥ Z_THRESHOLD and
    |jump| ≥ MIN_JUMP. Breaks are taken one at a time, the largest first, each removed before the rest are
    scored again, so a break's neighbours (whose lines run through it) are not flagged with it. The first
    and final checkpoints, which have one neighbour, are never scored.
    """
    steps = sorted(s for s, o in observed.items() if o.features)
    names = sorted(set.intersection(*(set(observed[s].features) for s in steps))) if steps else []
    if len(steps) < MIN_TRAJECTORY_POINTS or not names:
        if result is not None:
            result.notes.append(
                f"trajectory not checked: {len(steps)} checkpoint(s) with distance features, at least "
                f"{MIN_TRAJECTORY_POINTS} are needed (and the first and final checkpoints must be readable)"
            )
        return {}
    # values[feature, tensor, step]
    values = np.array([[[observed[s].features[n][k] for s in steps] for n in names] for k in range(3)], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(values > 0, np.log(values), np.nan)
    x = np.log1p(np.array(steps, dtype=np.float64))
    active = list(range(len(steps)))
    breaks: dict[int, tuple[str, float, float]] = {}
    while len(active) >= MIN_TRAJECTORY_POINTS:
        best = None
        for k in range(3):
            scores, jumps = _scores(logs[k][:, active], x[active])
            for j, (score, jump) in enumerate(zip(scores, jumps)):
                if math.isnan(score) or abs(score) < Z_THRESHOLD or abs(jump) < MIN_JUMP:
                    continue
                if best is None or abs(score) > abs(best[2]):
                    best = (active[j], k, score, jump)
        if best is None:
            break
        index, k, score, jump = best
        breaks[steps[index]] = (FEATURES[k], float(score), float(jump))
        active.remove(index)
    if result is not None:
        for k in range(3):
            scores, _ = _scores(logs[k][:, active], x[active])
            for j, score in enumerate(scores):
                if not math.isnan(score):
                    step = steps[active[j]]
                    result.scores[step] = max(result.scores.get(step, 0.0), abs(float(score)))
        result.scores.update({s: abs(b[1]) for s, b in breaks.items()})
    return breaks


def _scores(logs: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per checkpoint (first and last: NaN): median over tensors of robust z, and of the residual."""
    n = logs.shape[1]
    residual = np.full_like(logs, np.nan)
    if n >= 3:
        w = (x[1:-1] - x[:-2]) / (x[2:] - x[:-2])
        residual[:, 1:-1] = logs[:, 1:-1] - ((1 - w) * logs[:, :-2] + w * logs[:, 2:])
    z = np.full_like(logs, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (a feature undefined at a step) are expected
        for i in range(1, n - 1):
            # A break moves its neighbours' residuals too (their lines run through it): judge each checkpoint
            # against the spread of the residuals that do not involve it.
            others = np.ones(n, dtype=bool)
            others[i - 1 : i + 2] = False
            rest = residual[:, others]
            centre = np.nanmedian(rest, axis=1)
            scale = np.maximum(MAD_TO_SIGMA * np.nanmedian(np.abs(rest - centre[:, None]), axis=1), SCALE_FLOOR)
            z[:, i] = (residual[:, i] - centre) / scale
        return np.nanmedian(z, axis=0), np.nanmedian(residual, axis=0)

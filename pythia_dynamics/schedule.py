"""Checkpoint schedules and the step-selection language users type.

A schedule is the sorted list of training steps at which a suite saved weights. Users pick from it
with a small spec language (see `select_steps`), parsed once here and passed on as a list of ints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

__all__ = [
    "PYTHIA_STEPS",
    "PYTHIA_V0_STEPS",
    "STEP_SPEC_HELP",
    "StepSelectionError",
    "describe_schedule",
    "format_tokens",
    "parse_token_count",
    "pythia_like_schedule",
    "select_steps",
]


def pythia_like_schedule(total_steps: int, n_evenly_spaced: int) -> list[int]:
    """Step 0, then powers of two below the spacing interval, then `n_evenly_spaced` even steps.

    This is the shape of Pythia's schedule: `pythia_like_schedule(143_000, 143)` is exactly the
    154 published checkpoints (0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000).
    """
    if total_steps <= 0 or n_evenly_spaced <= 0:
        raise ValueError(
            f"total_steps and n_evenly_spaced must be positive, got {total_steps} and {n_evenly_spaced}"
        )
    if total_steps % n_evenly_spaced:
        raise ValueError(
            f"total_steps ({total_steps}) must be a multiple of n_evenly_spaced ({n_evenly_spaced}) "
            "so the evenly spaced checkpoints end exactly at the last step"
        )
    interval = total_steps // n_evenly_spaced
    early = [0] + [2**i for i in range(int(math.log2(interval)) + 1) if 2**i < interval]
    return early + [interval * k for k in range(1, n_evenly_spaced + 1)]


# EleutherAI's published schedule for the current Pythia suite: revisions step0 ... step143000 on the
# Hub (Biderman et al. 2023, "Pythia", section 2; the same list as TransformerLens's PYTHIA_CHECKPOINTS).
PYTHIA_STEPS: list[int] = pythia_like_schedule(143_000, 143)
# The first release ("v0", the models the source study analysed) saved every 1000 steps only.
PYTHIA_V0_STEPS: list[int] = list(range(1000, 143_000 + 1, 1000))

STEP_SPEC_HELP = """\
A step spec is a comma-separated list of terms; the result is their union, in training order:
  all              every checkpoint in the schedule (the default)
  1000             one step (it must be in the schedule)
  0:143000:1000    schedule steps from 0 to 143000 inclusive, every 1000 steps counted from 0
  2000:8000        every schedule step from 2000 to 8000 inclusive (either end may be left empty)
  every:10         every 10th checkpoint of the schedule, and always the last one
  log:12           at most 12 checkpoints evenly spaced in log(1 + step), first and last included
  first, first:3   the first (3) checkpoints;  last, last:3   the last (3) checkpoints
Where the suite publishes tokens seen per checkpoint (OLMo, SmolLM2/3, Pythia; see `pythia-dynamics steps`):
  tokens:10B-100B  every checkpoint that has seen from 10B to 100B tokens inclusive (either end may be
                   left empty: tokens:-1T, tokens:500B-); units K, M, B, T (10^3 ... 10^12), decimals allowed
  tokens:250B      the first checkpoint that has seen at least 250B tokens"""


class StepSelectionError(ValueError):
    """A step spec that does not parse, or that selects steps the schedule does not have."""


def describe_schedule(steps: Sequence[int], max_items: int = 12) -> str:
    """A compact human-readable rendering, e.g. '0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000 (154)'."""
    steps = list(steps)
    if len(steps) <= max_items:
        return ", ".join(map(str, steps)) + f" ({len(steps)} checkpoints)"
    runs: list[list[int]] = [[steps[0]]]
    for s in steps[1:]:
        run = runs[-1]
        arithmetic = len(run) < 2 or s - run[-1] == run[-1] - run[-2]
        geometric = len(run) >= 2 and run[-2] > 0 and s * run[-2] == run[-1] ** 2
        (run.append(s) if arithmetic or geometric else runs.append([s]))
    parts: list[str] = []
    for run in runs:
        arithmetic = len({b - a for a, b in zip(run, run[1:])}) <= 1
        head = run[:2] if arithmetic else run[:4]
        parts.extend(map(str, run) if len(run) <= len(head) + 2 else [*map(str, head), "...", str(run[-1])])
    return ", ".join(parts) + f" ({len(steps)} checkpoints)"


_INT = r"\d+"
_RANGE = re.compile(rf"^(?P<start>{_INT})?:(?P<stop>{_INT})?(?::(?P<stride>{_INT}))?$")
_NAMED = re.compile(r"^(?P<name>first|last|every|log)(?::(?P<n>\d+))?$")


def select_steps(
    spec: str | int | Sequence[int] | None, schedule: Sequence[int], tokens: Mapping[int, int] | None = None
) -> list[int]:
    """Resolve a step spec (see STEP_SPEC_HELP) or an explicit list of steps against a schedule.

    `tokens` maps steps to tokens seen, where the source knows them; `tokens:` terms need it."""
    schedule = sorted(set(schedule))
    if not schedule:
        raise StepSelectionError("the schedule is empty: this source has no checkpoints")
    if spec is None:
        return schedule
    if isinstance(spec, int):
        spec = [spec]
    if not isinstance(spec, str):
        return _check_in_schedule([int(s) for s in spec], schedule)
    chosen: set[int] = set()
    for term in (t.strip() for t in spec.split(",")):
        if not term:
            raise StepSelectionError(f"empty term in step spec {spec!r}\n{STEP_SPEC_HELP}")
        chosen.update(_select_tokens(term, schedule, tokens) if term.startswith("tokens:") else _select_term(term, schedule))
    return sorted(chosen)


_TOKEN_COUNT = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>[KMBT]?)$", re.IGNORECASE)
_TOKEN_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_token_count(text: str) -> int:
    """'10B' -> 10_000_000_000; '1.5T', '250m', '4096' (no unit: tokens)."""
    m = _TOKEN_COUNT.match(text.strip())
    if m is None:
        raise StepSelectionError(f"cannot read token count {text!r}: write a number with an optional unit K, M, B or T (10B, 1.5T)")
    return round(float(m["value"]) * _TOKEN_UNITS[m["unit"].upper()])


def format_tokens(count: int) -> str:
    """A token count the way the suites write it: 4B, 1.26T, 512M."""
    for unit in "TBMK":
        if count >= _TOKEN_UNITS[unit]:
            return f"{count / _TOKEN_UNITS[unit]:.3g}{unit}"
    return str(count)


def _select_tokens(term: str, schedule: list[int], tokens: Mapping[int, int] | None) -> list[int]:
    known = {s: tokens[s] for s in schedule if tokens and tokens.get(s) is not None}
    if not known:
        raise StepSelectionError(
            f"{term!r} selects by tokens seen, but this source does not say how many tokens each checkpoint has "
            "seen (its branch names and model card give no count); select by step instead"
        )
    body = term.removeprefix("tokens:")
    if "-" not in body:
        at_least = parse_token_count(body)
        later = [s for s in schedule if s in known and known[s] >= at_least]
        if not later:
            raise StepSelectionError(f"{term!r}: no checkpoint has seen {body} tokens; the last has seen {format_tokens(max(known.values()))}")
        return [later[0]]
    low_text, high_text = body.split("-", 1)
    low = parse_token_count(low_text) if low_text else 0
    high = parse_token_count(high_text) if high_text else max(known.values())
    picked = [s for s in schedule if s in known and low <= known[s] <= high]
    if not picked:
        seen = sorted(known.values())
        raise StepSelectionError(
            f"{term!r} selects no checkpoint: tokens seen run from {format_tokens(seen[0])} to {format_tokens(seen[-1])}"
        )
    return picked


def _select_term(term: str, schedule: list[int]) -> list[int]:
    if term == "all":
        return schedule
    if term.isdigit():
        return _check_in_schedule([int(term)], schedule)
    if m := _RANGE.match(term):
        start = int(m["start"]) if m["start"] else schedule[0]
        stop = int(m["stop"]) if m["stop"] else schedule[-1]
        stride = int(m["stride"]) if m["stride"] else None
        if stride == 0:
            raise StepSelectionError(f"stride must be positive in {term!r}")
        picked = [s for s in schedule if start <= s <= stop and (stride is None or (s - start) % stride == 0)]
        if not picked:
            raise StepSelectionError(
                f"{term!r} selects no checkpoint; valid steps: {describe_schedule(schedule)}"
            )
        return picked
    if m := _NAMED.match(term):
        name, n = m["name"], int(m["n"]) if m["n"] else None
        if name in ("every", "log") and not n:
            raise StepSelectionError(f"{name!r} needs a positive count, e.g. '{name}:10'\n{STEP_SPEC_HELP}")
        if n == 0:
            raise StepSelectionError(f"{name!r} needs a positive count, got {term!r}")
        if name == "first":
            return schedule[: n or 1]
        if name == "last":
            return schedule[-(n or 1) :]
        if name == "every":
            return sorted(set(schedule[::n]) | {schedule[-1]})
        return _log_spaced(schedule, n)
    raise StepSelectionError(f"cannot read step spec term {term!r}\n{STEP_SPEC_HELP}")


def _log_spaced(schedule: list[int], n: int) -> list[int]:
    lo, hi = math.log1p(schedule[0]), math.log1p(schedule[-1])
    targets = [lo + (hi - lo) * i / max(n - 1, 1) for i in range(n)]
    return sorted({min(schedule, key=lambda s: abs(math.log1p(s) - t)) for t in targets})


def _check_in_schedule(steps: list[int], schedule: list[int]) -> list[int]:
    valid = set(schedule)
    missing = [s for s in steps if s not in valid]
    if missing:
        raise StepSelectionError(
            f"step(s) {', '.join(map(str, missing))} not in this schedule; "
            f"valid steps: {describe_schedule(schedule)}"
        )
    return sorted(set(steps))

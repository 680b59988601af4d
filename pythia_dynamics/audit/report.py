"""The audit's result: a verdict per checkpoint, as a table, and as `audit` rows in the results store.

Stored per audited checkpoint (analysis `audit`, component `checkpoint`):
- scalars `suspect` (0/1), one 0/1 stat per reason code (`identical`, `partial`, `trajectory`, `config`,
  `layout`, `missing`, `unreadable`, `known`, `hub`), `trajectory_score` (largest |robust z|, NaN where
  not scored), and `norm`, `distance_from_initial`, `distance_to_final` (the whole checkpoint's, from the
  per-tensor features; NaN where unknown);
- arrays (text): `reasons` (one "code: sentence" each, only when suspect) and `observation` (the JSON of
  what was read: hashes, layout, config, features), so a later audit of the same store reuses it
  instead of reading the checkpoint again.
Provenance: package and audit version, the checkpoint's content hash, the reference checkpoints' hashes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from pythia_dynamics.audit.judge import Finding
from pythia_dynamics.audit.observe import Observation
from pythia_dynamics.catalog import KnownDefect
from pythia_dynamics.store import AUDIT_ANALYSIS

__all__ = ["AUDIT_ANALYSIS", "AUDIT_VERSION", "REASON_CODES", "AuditReport", "Verdict"]

AUDIT_VERSION = 2  # 2: distance features sampled on 4,096 entries per matrix (was 16,384); observations of another version are remade
REASON_CODES = ("identical", "partial", "trajectory", "config", "layout", "missing", "unreadable", "known", "hub")


@dataclass
class Verdict:
    step: int
    reasons: list[Finding] = field(default_factory=list)
    content_hash: str | None = None
    trajectory_score: float = math.nan
    totals: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # norm, from initial, to final

    @property
    def suspect(self) -> bool:
        return bool(self.reasons)

    @property
    def codes(self) -> list[str]:
        return sorted({r.code for r in self.reasons})

    def scalars(self) -> pd.DataFrame:
        stats = {"suspect": float(self.suspect)} | {code: float(code in self.codes) for code in REASON_CODES}
        stats |= {"trajectory_score": self.trajectory_score, "norm": self.totals[0],
                  "distance_from_initial": self.totals[1], "distance_to_final": self.totals[2]}  # fmt: skip
        return pd.DataFrame({"component": "checkpoint", "layer": None, "head": None, "stat": list(stats),
                             "value": list(stats.values())}).astype({"layer": "Int64", "head": "Int64"})  # fmt: skip


@dataclass
class AuditReport:
    model: str
    steps: list[int]  # the audited steps, in training order
    verdicts: dict[int, Verdict]
    known: list[KnownDefect] = field(default_factory=list)  # every published defect of the model, named or not
    groups: list[list[int]] = field(default_factory=list)  # identical checkpoints
    notes: list[str] = field(default_factory=list)
    observations: dict[int, Observation] = field(default_factory=dict, repr=False)
    hub: object | None = field(default=None, repr=False)  # a HubHashReport when the Hub's hashes were compared

    @property
    def suspect_steps(self) -> list[int]:
        return [s for s in self.steps if self.verdicts[s].suspect]

    def table(self) -> pd.DataFrame:
        """One row per audited checkpoint: step, verdict, reason codes, reasons."""
        rows = [
            {"step": s, "verdict": "suspect" if v.suspect else "ok", "codes": ",".join(v.codes),
             "reasons": "; ".join(r.text for r in v.reasons)}
            for s, v in sorted(self.verdicts.items())
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=["step", "verdict", "codes", "reasons"])

    def __str__(self) -> str:
        suspect = self.suspect_steps
        lines = [f"audit of {self.model}: {len(self.steps)} checkpoint(s), {len(suspect)} suspect"]
        if suspect:
            lines.append(f"  {'step':>8}  {'reasons':<22} details")
            for step in suspect:
                verdict = self.verdicts[step]
                for i, reason in enumerate(verdict.reasons):
                    lines.append(f"  {step if i == 0 else '':>8}  {reason.code:<22} {reason.text}")
        for defect in self.known:
            lines.append(f"  known: EleutherAI/pythia#{defect.issue} {defect.summary} {defect.url}"
                         + (f" ({defect.scope})" if defect.scope else ""))  # fmt: skip
        lines += [f"  note: {note}" for note in self.notes]
        if self.hub is not None:
            lines.append(str(self.hub))
        return "\n".join(lines)

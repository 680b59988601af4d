"""Checkpoint integrity audit: find broken checkpoints before they become findings (docs/audit.md).

`audit(source, steps)` reads each selected checkpoint once, memory-mapped, through
`CheckpointLoader.read` (which hashes every tensor in the pass that computes the content hash),
records an `Observation` of it, and judges all of them together: identical checkpoints and runs of
them, tensors or shards shared with another step, trajectory breaks, config and layout changes,
missing steps, and the model's published defects (`catalog.KNOWN_DEFECTS`). With `hub=True` it first
compares the Hub's LFS hashes of every branch's weight files (`audit.hub_hashes`).

Inside a sweep an `Auditor` observes each checkpoint the sweep reads (sharing its read and hashes);
`finish` reads only the selected checkpoints the sweep did not (those already complete in the store
whose observation is not stored either) and writes one `audit` row per checkpoint.

`audit` is not a registered analysis: its verdict on a checkpoint depends on the other checkpoints, so
it cannot run on one model. It writes its rows with `Store.write_result(model, step, "audit", ...)`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from pythia_dynamics.audit.judge import Finding, judge
from pythia_dynamics.audit.observe import FeatureReferences, Observation, observe
from pythia_dynamics.audit.report import AUDIT_ANALYSIS, AUDIT_VERSION, AuditReport, Verdict

__all__ = ["AUDIT_ANALYSIS", "AuditReport", "Auditor", "Finding", "Observation", "Verdict", "audit", "write_audit"]

log = logging.getLogger(__name__)


class Auditor:
    """Collects observations of a source's selected checkpoints, then judges them (see the module doc)."""

    def __init__(self, loader, steps: Sequence[int], *, exact: bool = False):
        self.loader = loader
        self.source = loader.source
        self.steps = list(steps)
        self.exact = exact
        self.observations: dict[int, Observation] = {}
        self.unreadable: dict[int, str] = {}
        self.notes: list[str] = []
        self._references: dict | None = None
        self._features: FeatureReferences | None = None
        self._references_read = False

    def references(self) -> dict | None:
        """The schedule's first and final checkpoints, read once (and handed to the loader's next read of them)."""
        if not self._references_read:
            self._references_read = True
            try:
                staged = {kind: self.loader.read(step) for kind, step in (("initial", self.source.steps[0]), ("final", self.source.steps[-1]))}
            except Exception as error:  # the checks that need them are skipped, saying why
                self.notes.append(f"no distance features: the first or final checkpoint cannot be read ({type(error).__name__}: {error})")
                return None
            for checkpoint in staged.values():
                self.loader.keep(checkpoint)
            self._references = staged
            self._features = FeatureReferences(staged["initial"].state_dict, staged["final"].state_dict, self.exact)
        return self._references

    def observe(self, staged) -> None:
        """Record a read checkpoint (a `StagedCheckpoint`); an error here is logged, never raised into a sweep."""
        if staged.step not in self.steps or staged.step in self.observations:
            return
        try:
            self.references()
            self.observations[staged.step] = observe(staged, self._features, self._config_path(staged.step), self._reference_hashes())
        except Exception as error:
            log.warning("the audit could not observe step %d: %s: %s", staged.step, type(error).__name__, error)

    def failed(self, step: int, error: BaseException) -> None:
        """A selected checkpoint whose read failed."""
        if step in self.steps and step not in self.observations:
            self.unreadable[step] = f"{type(error).__name__}: {error}"

    def finish(self, store=None, *, progress: bool = False) -> AuditReport:
        """Observe what is left (from `store` where it holds the observation, else by reading), judge, and write."""
        from pythia_dynamics.catalog import known_defects

        todo = [s for s in self.steps if s not in self.observations and s not in self.unreadable]
        if store is not None and todo:
            self.observations.update(_stored_observations(store, self.source.name, todo, self._reference_hashes()))
            todo = [s for s in todo if s not in self.observations]
        for step in tqdm(todo, desc=f"audit {self.source.name}", unit="ckpt", disable=not progress):
            try:
                staged = self.loader.read(step)
            except Exception as error:  # a missing or corrupt checkpoint is a finding, not a crash
                self.failed(step, error)
                continue
            self.observe(staged)
            if step not in self.observations:
                self.unreadable[step] = "read, but could not be observed (see the log)"
        known = known_defects(self.source.name)
        judgement = judge(self.observations, self.steps, self.source.steps, unreadable=self.unreadable, known=known)
        verdicts = {}
        for step in self.steps:
            obs = self.observations.get(step)
            verdicts[step] = Verdict(
                step, list(judgement.findings.get(step, [])), obs.content_hash if obs else None,
                judgement.scores.get(step, math.nan), _totals(obs),
            )  # fmt: skip
        report = AuditReport(self.source.name, self.steps, verdicts, known, judgement.groups,
                             self.notes + judgement.notes, self.observations)  # fmt: skip
        if store is not None:
            write_audit(store, report)
        return report

    def _config_path(self, step: int) -> Path | None:
        try:
            return Path(self.source.config_dir(step)) / "config.json"
        except Exception:  # a config that cannot be found is left to the layout and weight checks
            return None

    def _reference_hashes(self) -> dict[str, str]:
        refs = self.references()
        return {kind: staged.content_hash for kind, staged in refs.items()} if refs else {}


def audit(
    source,
    steps: str | Iterable[int] | None = None,
    *,
    store: str | Path | None = None,
    hub: bool = False,
    hub_listing: dict | None = None,
    exact: bool = False,
    prefetch: bool = True,
    progress: bool = True,
) -> AuditReport:
    """Audit the selected checkpoints of `source` (a name, a folder or a `CheckpointSource`).

    Reads each checkpoint once (memory-mapped; the next is read in the background while one is
    observed, unless `prefetch=False`). `store` (a results-store folder) receives one `audit` row per
    checkpoint. `hub=True` (a Hub source, online) or `hub_listing` (a recorded listing, see
    `audit.hub_hashes`) adds the comparison of the Hub's file hashes across all branches, including the
    branches not selected. `exact=True` measures the distance features on every entry, not a sample.
    """
    from pythia_dynamics.loading import CheckpointLoader
    from pythia_dynamics.sources import open_source
    from pythia_dynamics.store import Store

    source = open_source(source)
    selected = source.select(steps)
    hub_report = _hub_report(source, hub, hub_listing)
    source.preflight(selected)
    loader = CheckpointLoader(source)
    auditor = Auditor(loader, selected, exact=exact)
    auditor.references()  # before the prefetcher starts, so the two never read the same checkpoint at once
    with loader.prefetch(selected if prefetch else []) as prefetcher:
        for step in tqdm(selected, desc=f"audit {source.name}", unit="ckpt", disable=not progress):
            try:
                staged = prefetcher.take(step)
            except Exception as error:
                auditor.failed(step, error)
                continue
            auditor.observe(staged)
            del staged
    report = auditor.finish(None)
    if hub_report is not None:
        report.hub = hub_report
        for step, reasons in hub_report.findings.items():
            if step in report.verdicts:
                report.verdicts[step].reasons += reasons
    if store is not None:
        write_audit(Store(store, create=True), report)
    return report


def _hub_report(source, hub: bool, listing: dict | None):
    if not hub and listing is None:
        return None
    from pythia_dynamics.audit.hub_hashes import compare_branch_hashes, fetch_branch_listing

    if listing is None:
        from pythia_dynamics.sources import HubSource

        if not isinstance(source, HubSource):
            raise ValueError(f"--hub compares the Hub's file hashes of a Hub model's branches; {source.name} is not on the Hub")
        listing = fetch_branch_listing(source.repo_id, token=source.token)
    repo_id = getattr(source, "repo_id", source.name)
    revisions = getattr(source, "revisions", None)
    branch_steps = {r.name: step for step, r in revisions().items()} if revisions is not None else None
    return compare_branch_hashes(repo_id, listing, source.steps, branch_steps)


def _totals(obs: Observation | None) -> tuple[float, float, float]:
    """The whole checkpoint's norm and distances: the root of the summed squares of its tensors'."""
    if obs is None or not obs.features:
        return (math.nan, math.nan, math.nan)
    return tuple(math.sqrt(sum(f[k] ** 2 for f in obs.features.values())) for k in range(3))


def write_audit(store, report: AuditReport) -> None:
    """One `audit` result per audited checkpoint (scalars, reasons, observation), with provenance."""
    from pythia_dynamics import __version__
    from pythia_dynamics.store import array_record

    for step in report.steps:
        verdict = report.verdicts[step]
        obs = report.observations.get(step)
        arrays = []
        if verdict.reasons:
            arrays.append(array_record("checkpoint", None, None, "reasons", [str(r) for r in verdict.reasons]))
        if obs is not None:
            arrays.append(array_record("checkpoint", None, None, "observation", [obs.to_json()]))
        provenance = {"package_version": __version__, "analysis_version": AUDIT_VERSION,
                      "content_hash": verdict.content_hash,
                      "audit_references": obs.references if obs is not None else {}}  # fmt: skip
        store.write_result(report.model, step, AUDIT_ANALYSIS, verdict.scalars(), arrays, provenance)


def _stored_observations(store, model: str, steps: list[int], references: dict[str, str]) -> dict[int, Observation]:
    """Observations an earlier audit stored for `steps`, where made by this audit version against the same references."""
    usable = [i.step for i in store.results(model, [AUDIT_ANALYSIS])
              if i.step in steps and i.problem is None and (i.provenance or {}).get("analysis_version") == AUDIT_VERSION
              and (i.provenance or {}).get("audit_references") == references]  # fmt: skip
    if not usable:
        return {}
    rows = store.arrays(model=model, analysis=AUDIT_ANALYSIS, steps=usable, name="observation")
    return {int(row.step): Observation.from_json(row.text[0]) for row in rows.itertuples()}

"""The sweep: select steps -> load each checkpoint once -> shared passes -> analyses -> results store.

Resumable by construction: each (checkpoint, analysis) result is its own atomically written file, so
a re-run computes only what the store lacks, and a checkpoint that fails is recorded and skipped.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import statistics
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pythia_dynamics import __version__
from pythia_dynamics.analyses import get_analysis, registered_analyses
from pythia_dynamics.evalbatch import EvalBatch, make_eval_batch
from pythia_dynamics.loading import CheckpointLoader, LoadOptions
from pythia_dynamics.architectures import ComponentViews, ModelShape
from pythia_dynamics.passes import run_chunked_passes
from pythia_dynamics.weights import component_weights
from pythia_dynamics.sources import CheckpointSource, open_source
from pythia_dynamics.store import CONSISTENT_PROVENANCE, ResultInfo, Store, describe_steps, is_store
from pythia_dynamics.storage import is_url

__all__ = ["EXECUTORS", "StepContext", "StoreMismatchError", "SweepSummary", "eval_batch_digest", "run_steps", "sweep"]

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")  # where the checkpoints are analysed: this process, or a Ray cluster's workers


@dataclass
class SweepSummary:
    model: str
    store: Path | str  # the store's folder, or its URL
    analyses: list[str]
    done: list[int] = field(default_factory=list)  # steps where something was computed
    skipped: list[int] = field(default_factory=list)  # steps already complete in the store
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (step, analysis or 'load', reason)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (step, identical earlier step)
    reused: list[tuple[int, str]] = field(default_factory=list)  # (step, analysis) taken from `reuse`
    suspect: dict[int, str] = field(default_factory=dict)  # step -> the integrity audit's reasons (docs/audit.md)
    excluded: list[int] = field(default_factory=list)  # suspect steps left out (exclude_suspect)
    seconds: float = 0.0
    # Wall time of each computed step, from waiting for its checkpoint to its results written (the
    # first also builds the model); the sweep's start-up (references, evaluation batch) is outside them.
    step_seconds: dict[int, float] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"sweep of {self.model} into {self.store} ({self.seconds:.1f} s)",
            f"  analyses:  {', '.join(self.analyses)}",
            f"  computed:  {len(self.done)} checkpoint(s){self._per_checkpoint()}",
            f"  skipped:   {len(self.skipped)} already in the store",
            f"  failed:    {len(self.failed)}",
        ]
        lines += [f"    step {step} [{what}]: {reason}" for step, what, reason in self.failed[:10]]
        if len(self.failed) > 10:
            lines.append(f"    ... and {len(self.failed) - 10} more (Store.failures() lists them all)")
        lines += [f"  note: step {s} has weights identical to step {t}" for s, t in self.duplicates]
        if self.reused:
            lines.append(f"  reused:    {len(self.reused)} result(s) of {len({s for s, _ in self.reused})} "
                         "checkpoint(s) from the published store, not recomputed")  # fmt: skip
        if self.suspect:
            left_out = " (left out of this sweep)" if self.excluded else ""
            lines.append(f"  suspect:   {len(self.suspect)} checkpoint(s) by the integrity audit{left_out}")
            lines += [f"    step {step}: {why}" for step, why in list(self.suspect.items())[:10]]
        return "\n".join(lines)

    def _per_checkpoint(self) -> str:
        later = list(self.step_seconds.values())[1:]  # the first step also built the model
        return f", {statistics.median(later):.2f} s each (median after the first)" if later else ""


def sweep(
    source: CheckpointSource | str,
    out: str | Path,
    *,
    steps: str | Sequence[int] | None = None,
    analyses: str | Sequence[str] | None = None,
    device: str = "cpu",
    backend: str = "auto",
    processed: bool = False,
    dtype: str = "float32",
    eval_batch: EvalBatch | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    prefetch: bool = True,
    recompute: str | Sequence[str] | None = None,
    audit: bool = True,
    exclude_suspect: bool = False,
    reuse: str | Path | Store | None = None,
    executor: str = "local",
    address: str | None = None,
    threads_per_worker: int | None = None,
) -> SweepSummary:
    """Run `analyses` (default: all registered) on the selected `steps` of `source`, into store `out`.

    `chunk_size` runs the evaluation batch that many sequences at a time (default: all at once);
    results do not depend on it. `backend`, `processed`, `device`, `dtype` are `LoadOptions`. `prefetch`
    reads the next checkpoint in a background thread while the current one is analysed (results do not
    depend on it).

    A store never mixes results computed in different ways: if it already holds results of an analysis
    computed with other load options, another version of the analysis, other reference checkpoints or
    another evaluation batch, the sweep refuses before writing anything (`StoreMismatchError`, saying what
    differs). `recompute` (analysis names) recomputes those analyses at every step they are stored at and
    at the selected steps, replacing what is there.

    `audit` runs the checkpoint integrity audit (docs/audit.md) on the selected steps, sharing the sweep's
    reads, and writes its `audit` rows; the summary names the suspect checkpoints. `exclude_suspect` leaves
    them out of the sweep: their verdicts are needed before the first analysis, so the audit then runs as
    a pre-pass (every selected checkpoint is read once for it and once more for the analyses).

    `reuse` (a published store `ORG/NAME` or `hf://datasets/ORG/NAME`, read through the Hugging Face
    cache, or a store folder) supplies results instead of computing them, for exactly the (step,
    analysis) whose stored checkpoint content hash equals this checkpoint's and whose provenance (analysis
    version, load options, reference checkpoints, evaluation batch) equals what this sweep would record.
    Each checkpoint is still read and hashed; it is installed and analysed only for what is left.

    `executor="ray"` spreads the checkpoints over the workers of a Ray cluster (`address`, default: the
    running one, or a local one started here), `threads_per_worker` torch threads each (default 1); every
    other option means what it means locally, and the store holds the same results (docs/scale.md).
    """
    started = time.perf_counter()
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of sequences, got {chunk_size}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if executor == "ray" and reuse is not None:
        raise ValueError("reuse= is not supported with executor='ray': reuse the published results in a local "
                         "sweep first (it reads each checkpoint once), then sweep what is left on Ray")  # fmt: skip
    if threads_per_worker is not None and (executor != "ray" or threads_per_worker < 1):
        raise ValueError(f"threads_per_worker is a positive number of threads for executor='ray', got "
                         f"{threads_per_worker!r} with executor={executor!r}")  # fmt: skip
    source = open_source(source)
    selected = source.select(steps)
    chosen = _resolve_analyses(analyses)
    recomputed = _resolve_analyses(recompute) if recompute else []
    chosen += [a for a in recomputed if a not in chosen]
    source.preflight(selected)  # an unreadable source is refused before anything is written
    loader = CheckpointLoader(source, LoadOptions(backend=backend, device=device, processed=processed, dtype=dtype))
    expected = {a.name: _expected_provenance(a, loader, source) for a in chosen}
    existing = Store(out).results(source.name) if is_store(out) else []
    _refuse_mixing(out, source.name, existing, expected, {a.name for a in recomputed})

    store = Store(out, create=True)
    summary = SweepSummary(source.name, store.path, [a.name for a in chosen])
    auditor = _start_audit(loader, selected) if audit or exclude_suspect else None
    if exclude_suspect:
        _finish_audit(auditor, store, summary)
        auditor, summary.excluded = None, list(summary.suspect)
        selected = [step for step in selected if step not in summary.suspect]
    done = store.completed(source.name)
    todo = {step: [a for a in chosen if (step, a.name) not in done or a in recomputed] for step in selected}
    for analysis in recomputed:  # also where it is stored but not selected, so no old result stays behind
        for info in existing:
            if info.analysis == analysis.name and info.step in source.steps and analysis not in todo.setdefault(info.step, []):
                todo[info.step].append(analysis)
    todo = {step: todo[step] for step in source.steps if step in todo}  # training order
    summary.skipped = [step for step, work in todo.items() if not work]
    pending = {step: work for step, work in todo.items() if work}
    if not pending:
        _finish_audit(auditor, store, summary)
        summary.seconds = time.perf_counter() - started
        return summary

    needs_batch = any(a.streaming for work in pending.values() for a in work)
    if needs_batch and eval_batch is None:
        eval_batch = _recorded_eval_batch(store, source.name) or make_eval_batch(source)
    references = None
    if any(a.references for work in pending.values() for a in work):
        try:
            references = _reference_weights(loader, source)
        except Exception as error:  # the analyses that need them fail, with this reason; the rest go on
            log.warning("reference checkpoints of %s could not be loaded: %s", source.name, error)
    provenance = {}
    for analysis in chosen:
        provenance[analysis.name] = {"package_version": __version__, **expected[analysis.name]}
        if analysis.references and references is not None:
            provenance[analysis.name]["references"] = references["provenance"]
        if analysis.streaming and eval_batch is not None:
            provenance[analysis.name]["eval_batch"] = eval_batch_digest(eval_batch)
    # Checked again now that the reference checkpoints' content and the evaluation batch are known.
    _refuse_mixing(out, source.name, existing, provenance, {a.name for a in recomputed})
    _record_source(store, source, loader.options, eval_batch)

    context = StepContext(store, source.name, loader, eval_batch, chunk_size, references, provenance, device, prefetch)
    if executor == "ray":
        from pythia_dynamics.ray_executor import sweep_on_ray

        sweep_on_ray(source, out, context, pending, auditor, summary, recomputed={a.name for a in recomputed},
                     address=address, threads_per_worker=threads_per_worker, progress=progress)  # fmt: skip
    else:
        published = _Published(reuse, source.name) if reuse is not None else None
        with tqdm(total=len(pending), desc=source.name, unit="ckpt", disable=not progress) as bar:
            run_steps(context, pending, auditor, published, summary, bar)
    _finish_audit(auditor, store, summary)
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class StepContext:
    """What every checkpoint of a sweep is analysed with, on the machine that analyses it."""

    store: Store
    model: str
    loader: CheckpointLoader
    eval_batch: EvalBatch | None
    chunk_size: int | None
    references: dict | None
    provenance: dict[str, dict]
    device: str
    prefetch: bool = True


def run_steps(context: StepContext, pending: dict, auditor, published, summary: SweepSummary, bar: tqdm | None = None) -> None:
    """Read, install and analyse each checkpoint of `pending` (step -> analyses, in training order), writing
    each result as it exists; `bar` advances one per checkpoint. Used by local sweeps and by each Ray worker."""
    bar = bar if bar is not None else tqdm(disable=True)
    previous: list[weakref.ref] = []  # weak: it must never keep a replaced model alive
    # The next checkpoint is read in the background while this one is analysed.
    with context.loader.prefetch(list(pending) if context.prefetch else []) as prefetcher:
        for step, work in pending.items():
            step_started = time.perf_counter()
            if _sweep_step(context, prefetcher, step, work, auditor, published, summary, bar, previous):
                summary.step_seconds[step] = time.perf_counter() - step_started
            bar.update(1)


def _sweep_step(context: StepContext, prefetcher, step, work, auditor, published, summary, bar, previous) -> bool:
    """One checkpoint of `run_steps`; False where it could not be read (recorded as failures)."""
    store, loader, model_name = context.store, context.loader, context.model
    bar.set_postfix_str(f"step {step}: loading")
    try:
        staged = prefetcher.take(step)
        if auditor is not None:
            auditor.observe(staged)  # the audit shares this read and its hashes
        if published is not None:
            work = published.adopt(store, step, staged.content_hash, work, context.provenance, summary)
        checkpoint = loader.install(staged) if work else None
        del staged
    except Exception as error:  # a missing or corrupt checkpoint: record it, go on with the rest
        if auditor is not None:
            auditor.failed(step, error)
        reason = f"{type(error).__name__}: {error}"
        log.warning("step %d of %s could not be loaded: %s", step, model_name, reason)
        for analysis in work:
            store.write_failure(model_name, step, analysis.name, f"load failed: {reason}")
        summary.failed.append((step, "load", reason))
        return False
    if checkpoint is None:  # every result of this checkpoint was taken from the published store
        return True
    if checkpoint.id.duplicate_of is not None:
        summary.duplicates.append((step, checkpoint.id.duplicate_of))
    result_provenance = {a.name: context.provenance[a.name] | {"content_hash": checkpoint.id.content_hash} for a in work}
    _run_step(store, model_name, step, checkpoint.model, work, context.eval_batch, context.chunk_size,
              context.references, result_provenance, bar, summary)  # fmt: skip
    summary.done.append(step)
    replaced = not previous or previous[0]() is not checkpoint.model
    previous[:] = [weakref.ref(checkpoint.model)]
    del checkpoint
    _free_memory(context.device, full=replaced)
    return True

def _start_audit(loader: CheckpointLoader, steps: list[int]):
    from pythia_dynamics.audit import Auditor

    auditor = Auditor(loader, steps)
    auditor.references()  # read (and kept for the loader) before the prefetcher starts reading the same steps
    return auditor


def _finish_audit(auditor, store: Store, summary: SweepSummary) -> None:
    """Judge what the audit observed (reading the selected checkpoints the sweep did not), write its rows."""
    if auditor is None:
        return
    report = auditor.finish(store)
    summary.suspect = {step: "; ".join(str(r) for r in report.verdicts[step].reasons) for step in report.suspect_steps}
    if summary.suspect:
        log.warning("%s: the integrity audit finds %d suspect checkpoint(s): %s", summary.model, len(summary.suspect),
                    ", ".join(map(str, summary.suspect)))  # fmt: skip


class _Published:
    """A published store whose results a sweep takes where they are exactly what it would compute."""

    def __init__(self, reuse: str | Path | Store, model: str):
        from pythia_dynamics.share import published_store

        if isinstance(reuse, Store):
            self.store = reuse
        elif Path(reuse).is_dir() or (is_url(reuse) and not str(reuse).startswith("hf://")):  # a folder or a URL store
            self.store = Store(reuse)
        else:
            self.store = published_store(str(reuse))
        self.model = model
        self.results = {(i.step, i.analysis): i for i in self.store.results(model) if i.problem is None and i.provenance}
        log.info("%s: %d published result(s) of %s may be reused", self.store.path, len(self.results), model)

    def adopt(self, store: Store, step: int, content_hash: str, work: list, provenance: dict, summary) -> list:
        """Copy the matching published results of this checkpoint into `store`; returns the analyses left to run."""
        left = []
        for analysis in work:
            info = self.results.get((step, analysis.name))
            wanted = provenance[analysis.name]
            matches = (
                info is not None
                and info.provenance.get("content_hash") == content_hash
                and all(key in info.provenance for key in CONSISTENT_PROVENANCE if key in wanted)
                and not _differences(info.provenance, wanted)
            )
            if matches:
                store.adopt(self.store, self.model, step, analysis.name)
                summary.reused.append((step, analysis.name))
            else:
                left.append(analysis)
        return left


class StoreMismatchError(ValueError):
    """The store holds results of an analysis computed differently from what this sweep would compute."""

    def __init__(self, message: str, analyses: list[str]):
        super().__init__(message)
        self.analyses = analyses  # the analyses whose stored results differ: what `recompute=` would take


def _expected_provenance(analysis, loader: CheckpointLoader, source: CheckpointSource) -> dict:
    """What every result of `analysis` in a store must share, as far as it is known before any checkpoint is read."""
    options = loader.options
    expected = {
        "analysis_version": analysis.version,
        "load_options": {"backend": loader.backend, "processed": options.processed, "dtype": options.dtype},
    }
    if analysis.references:
        expected["references"] = {"initial": {"step": source.steps[0]}, "final": {"step": source.steps[-1]}}
    return expected


def _differences(stored: dict, wanted: dict) -> list[str]:
    """How a stored result's provenance differs from the wanted one, on the keys both record."""
    found = []
    for key in CONSISTENT_PROVENANCE:
        if key not in stored or key not in wanted:
            continue
        have, want = stored[key], wanted[key]
        if key == "references":  # a content hash is compared only where both sides know it
            have = {n: {k: v for k, v in r.items() if k in want.get(n, {})} for n, r in have.items()}
            want = {n: {k: v for k, v in r.items() if k in have.get(n, {})} for n, r in want.items()}
        elif key == "load_options":  # a result written before provenance may lack some (see _legacy_provenance)
            want = {k: v for k, v in want.items() if k in have}
        if have == want:
            continue
        if key == "eval_batch":
            found.append(f"computed on a different evaluation batch (fingerprint {have}, this sweep's {want})")
        else:
            found.append(f"{key}: stored {_plain(have)}, this sweep {_plain(want)}")
    return found


def _plain(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) + "}"
    return str(value)


def _refuse_mixing(out, model: str, existing: list[ResultInfo], wanted: dict[str, dict], recomputed: set[str]) -> None:
    """Raise StoreMismatchError if any stored result of an analysis this sweep computes was computed differently."""
    legacy = _legacy_provenance(Store(out).source_meta(model) if existing else None)
    conflicts: dict[tuple[str, str], list[int]] = {}
    for info in existing:
        if info.problem or info.analysis not in wanted or info.analysis in recomputed:
            continue
        for difference in _differences(info.provenance or legacy, wanted[info.analysis]):
            conflicts.setdefault((info.analysis, difference), []).append(info.step)
    if not conflicts:
        return
    lines = [f"  {analysis} ({describe_steps(steps)}): {difference}" for (analysis, difference), steps in conflicts.items()]
    analyses = sorted({analysis for analysis, _ in conflicts})
    names = ",".join(analyses)
    raise StoreMismatchError(
        f"the store {out} already holds results for {model} computed differently from this sweep; mixing "
        "them would make its checkpoints incomparable:\n" + "\n".join(lines) + "\nWhat to do: sweep into "
        "another store (--out), or with the options the store was swept with, or replace those results with "
        f"--recompute {names} (recomputed at every step they are stored at). No result was written.",
        analyses,
    )


def _legacy_provenance(meta: dict | None) -> dict:
    """What a result written before provenance was recorded is taken to be: version 1 of its analysis, with
    the load options the model's source record holds (the last sweep's)."""
    legacy: dict = {"analysis_version": 1}
    recorded = (meta or {}).get("load_options")
    if recorded:
        # The record kept the backend as asked for: "auto" does not say which one ran, so it is not compared.
        keys = ["processed", "dtype"] + (["backend"] if recorded.get("backend") != "auto" else [])
        legacy["load_options"] = {key: recorded.get(key) for key in keys}
    return legacy


def eval_batch_digest(batch: EvalBatch) -> str:
    """A short fingerprint of an evaluation batch's token ids (and shape), recorded with each result."""
    tokens = batch.tokens.to("cpu", torch.int64).contiguous()
    digest = hashlib.sha256(repr(tuple(tokens.shape)).encode())
    digest.update(tokens.numpy().tobytes())
    return digest.hexdigest()[:16]


def _run_step(store, model_name, step, model, work, eval_batch, chunk_size, references, provenance, bar, summary) -> None:
    def failed(analysis, error):
        reason = f"{type(error).__name__}: {error}"
        log.warning("%s failed at step %d: %s", analysis.name, step, reason)
        store.write_failure(model_name, step, analysis.name, reason)
        summary.failed.append((step, analysis.name, reason))

    # Each result is written as soon as it exists, so a later failure at this step loses nothing.
    for analysis in (a for a in work if not a.streaming):
        bar.set_postfix_str(f"step {step}: {analysis.name}")
        try:
            extra = {"references": references["weights"]} if analysis.references else {}
            records = analysis.fn(model, **extra)
            store.write_result(model_name, step, analysis.name, records.scalars, records.arrays, provenance[analysis.name])
        except Exception as error:
            failed(analysis, error)
    streaming = [a for a in work if a.streaming]
    if streaming:
        backward = any(a.needs == "backward" for a in streaming)
        bar.set_postfix_str(f"step {step}: forward{' + backward' if backward else ''} pass")
        accumulators = {}
        for analysis in streaming:
            try:
                accumulators[analysis] = analysis.fn(model)
            except Exception as error:
                failed(analysis, error)

        def feed(chunk):
            for analysis, accumulator in list(accumulators.items()):
                try:
                    accumulator.update(chunk)
                except Exception as error:  # drop it, keep the others going
                    failed(analysis, error)
                    del accumulators[analysis]

        hooks = [h for acc in accumulators.values() for h in acc.hooks]
        try:
            totals = run_chunked_passes(model, eval_batch.tokens, hooks=hooks, backward=backward,
                                        chunk_size=chunk_size, on_chunk=feed)  # fmt: skip
        except Exception as error:  # e.g. out of memory: every analysis waiting on the pass fails, the sweep goes on
            for analysis in list(accumulators):
                failed(analysis, error)
            return
        for analysis, accumulator in accumulators.items():
            try:
                records = accumulator.finish(totals)
                store.write_result(model_name, step, analysis.name, records.scalars, records.arrays, provenance[analysis.name])
            except Exception as error:
                failed(analysis, error)


def _resolve_analyses(analyses: str | Sequence[str] | None):
    if analyses is None:
        return list(registered_analyses().values())
    names = analyses.split(",") if isinstance(analyses, str) else list(analyses)
    return [get_analysis(name.strip()) for name in names if name.strip()]


def _record_source(store: Store, source: CheckpointSource, options: LoadOptions, eval_batch: EvalBatch | None):
    meta = store.source_meta(source.name) or {}
    if eval_batch is not None and "eval_batch" in meta and meta["eval_batch"]["tokens"] != eval_batch.tokens.tolist():
        raise ValueError(
            f"the store already holds results for {source.name} computed on a different evaluation batch; "
            "results would not be comparable across checkpoints. Use a new store, or the same batch "
            f"(recorded in {store.path}/sources)."
        )
    meta |= {
        "model": source.name,
        "source": repr(source),
        "schedule": source.steps,
        "metadata": source.metadata(),
        "load_options": options.to_dict(),
        "package_version": __version__,
    }
    if eval_batch is not None:
        meta["eval_batch"] = eval_batch.to_dict()
    store.write_source_meta(source.name, meta)


def _reference_weights(loader: CheckpointLoader, source: CheckpointSource) -> dict:
    """The first and final checkpoints: `weights` keyed like `component_weights`, for analyses that compare
    against them, and `provenance` (their steps and content hashes). Raw weights are read as views of the
    stored (memory-mapped) tensors, so holding them costs page cache rather than two more copies of the
    model; processed ones are loaded and copied."""
    config = source.hf_config()
    weights, provenance = {}, {}
    for name, step in (("initial", source.steps[0]), ("final", source.steps[-1])):
        if loader.options.processed:
            checkpoint = loader.load(step)
            weights[name] = {key: w.detach().to("cpu", copy=True) for key, w in component_weights(checkpoint.model).items()}
            digest = checkpoint.id.content_hash
        else:
            staged = loader.read(step)
            loader.keep(staged)  # the sweep's own read of this step takes it, rather than reading it again
            weights[name] = ComponentViews(loader.family, staged.state_dict, ModelShape.of(config))
            digest = staged.content_hash
        provenance[name] = {"step": step, "content_hash": digest}
    return {"weights": weights, "provenance": provenance}


def _recorded_eval_batch(store: Store, model: str) -> EvalBatch | None:
    # A resumed sweep reuses the batch its first run chose, even if the default would now differ.
    recorded = (store.source_meta(model) or {}).get("eval_batch")
    if recorded is None:
        return None
    return EvalBatch(torch.tensor(recorded["tokens"], dtype=torch.long), recorded["origin"])


def _free_memory(device: str, full: bool) -> None:
    """Free what this checkpoint left in reference cycles. A full collection walks every live object (a
    quarter of a second with pythia-70m loaded): worth it when a model was replaced (processed bridges are
    booted anew per checkpoint), while a refilled model's per-checkpoint garbage is young (generations 0, 1)."""
    gc.collect() if full else gc.collect(1)
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()

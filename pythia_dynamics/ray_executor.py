"""Sweeps on a Ray cluster: the selected checkpoints split among workers, each writing into the one store.

`sweep(..., executor="ray")` plans as a local sweep does (what the store lacks, provenance, the evaluation
batch, refusing to mix), then hands each worker a contiguous run of checkpoints in training order. A worker
(`_sweep_chunk`, one Ray task) opens the source, builds its model once and refills it for each of its
checkpoints with the local sweep's own loop (`sweeps.run_steps`: the in-place switch and the prefetch
thread stay), writing each result to the store as it exists. So:

- resuming is what it is locally: a later sweep computes what the store lacks;
- a worker lost mid-task (process killed, node gone) is retried by Ray (`MAX_RETRIES`); the retry skips
  every result already complete in the store, so nothing is lost and nothing computed twice (analyses
  named in `recompute` excepted: a retry writes those again, with the same values);
- each task asks for `threads_per_worker` CPUs, a GPU when the sweep's device is CUDA, and the memory a
  worker needs for the model's size (`worker_memory`), so a cluster never runs more copies than fit;
- one progress bar for the whole sweep, counted from the store (every few seconds, and as each task ends).

The integrity audit runs on the workers' reads (each worker observes its own checkpoints against the
schedule's first and final ones) and is judged once, here. Duplicate checkpoints are noted within a worker's
run only; identical checkpoints anywhere in the schedule are the audit's to find.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["MAX_RETRIES", "split_steps", "sweep_on_ray", "worker_memory"]

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # Ray retries a task whose worker process died this many times
POLL_SECONDS = 0.5  # how often the driver checks for finished tasks
COUNT_SECONDS = 5.0  # how often the progress bar counts the store's completed results (a listing of the store)
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def worker_memory(config, dtype: str = "float32") -> int:
    """Bytes one worker needs for a model of this config (a Hugging Face config): the model in `dtype`, the
    checkpoint being installed and the next one being read (each in its stored 16-bit precision, at most),
    and 1 GiB for the evaluation pass, the analyses and the interpreter. A scheduling estimate, not a limit."""
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    d_mlp = getattr(config, "intermediate_size", 4 * d)
    parameters = 2 * vocab * d + layers * (4 * d * d + 2 * d * d_mlp)
    return int(parameters * (_BYTES.get(dtype, 4) + 2 * 2) + (1 << 30))


def split_steps(pending: dict, workers: int) -> list[dict]:
    """`pending` (step -> analyses, in training order) cut into `workers` contiguous runs of near-equal length."""
    items = list(pending.items())
    workers = max(1, min(workers, len(items)))
    size = math.ceil(len(items) / workers)
    return [dict(items[i : i + size]) for i in range(0, len(items), size)]


def sweep_on_ray(source, out, context, pending: dict, auditor, summary, *, recomputed: set[str] = frozenset(),
                 address: str | None = None, threads_per_worker: int | None = None, progress: bool = True) -> None:  # fmt: skip
    """Run `pending` on a Ray cluster's workers and merge what they did into `summary` (and `auditor`)."""
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs Ray: pip install 'pythia-dynamics[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    threads = threads_per_worker or 1
    options = context.loader.options
    gpus = 1 if options.device.startswith("cuda") else 0
    memory = worker_memory(source.hf_config(), options.dtype)
    _check_fits(ray, source.name, options, threads, gpus, memory)
    cpus = ray.cluster_resources().get("CPU", 1)
    chunks = split_steps(pending, max(1, int(cpus // threads)))
    task = ray.remote(_sweep_chunk).options(num_cpus=threads, num_gpus=gpus, memory=memory, max_retries=MAX_RETRIES)
    plan = {
        "source": source, "out": str(out), "load_options": asdict(options), "eval_batch": context.eval_batch,
        "chunk_size": context.chunk_size, "provenance": context.provenance, "prefetch": context.prefetch,
        "audit_steps": auditor.steps if auditor is not None else None, "threads": threads,
        "recomputed": sorted(recomputed),
    }  # fmt: skip
    log.info("%s: %d checkpoint(s) on %d Ray worker(s), %d thread(s) each", source.name, len(pending), len(chunks), threads)
    running = {task.remote(plan, {step: [a.name for a in work] for step, work in chunk.items()}): chunk for chunk in chunks}
    counted = 0.0
    with tqdm(total=len(pending), desc=f"{source.name} (ray)", unit="ckpt", disable=not progress) as bar:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                chunk = running.pop(ref)
                try:
                    _merge(ray.get(ref), summary, auditor)
                except Exception as error:  # retries exhausted: the chunk's unfinished steps are failures
                    _lost(context.store, source.name, chunk, error, summary)
            if progress and (ready or time.monotonic() - counted > COUNT_SECONDS):
                bar.n, counted = _finished(context.store, source.name, pending), time.monotonic()
                bar.refresh()


def _check_fits(ray, model: str, options, threads: int, gpus: int, memory: int) -> None:
    """Refuse, before any task is queued, a sweep no node can run (Ray would leave its tasks pending forever)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    needs = {"CPU": threads, "GPU": gpus, "memory": memory}
    if any(all(node.get(key, 0) >= amount for key, amount in needs.items() if amount) for node in nodes):
        return
    largest = {key: max((node.get(key, 0) for node in nodes), default=0) for key in needs}
    raise ValueError(
        f"no node of the Ray cluster can run a worker for {model}: one needs {threads} CPU(s)"
        f"{', 1 GPU' if gpus else ''} and {memory / 2**30:.1f} GiB with the model in {options.dtype}; the largest "
        f"node offers {largest['CPU']:g} CPU(s), {largest['GPU']:g} GPU(s) and {largest['memory'] / 2**30:.1f} GiB. "
        "Use fewer --threads-per-worker, --dtype float16 (half the model's memory), or bigger nodes."
    )


def _sweep_chunk(plan: dict, steps: dict[int, list[str]]) -> dict:
    """One worker's run: what `sweeps.run_steps` does locally, for the checkpoints `steps` (step -> analysis names)."""
    import torch

    from pythia_dynamics.analyses import get_analysis
    from pythia_dynamics.loading import CheckpointLoader, LoadOptions
    from pythia_dynamics.store import Store
    from pythia_dynamics.sweeps import StepContext, SweepSummary, _reference_weights, _start_audit, run_steps

    torch.set_num_threads(plan["threads"])
    source, store = plan["source"], Store(plan["out"])
    done = store.completed(source.name)  # a retried task skips what its earlier attempt wrote
    recomputed = set(plan["recomputed"])
    work = {step: [get_analysis(n) for n in names if (step, n) not in done or n in recomputed] for step, names in steps.items()}
    work = {step: analyses for step, analyses in work.items() if analyses}
    # The driver queued only checkpoints missing from the store: one complete now was computed by an earlier
    # attempt of this task (killed after writing it), so it counts as done by this sweep.
    summary = SweepSummary(source.name, store.path, [], done=[step for step in steps if step not in work])
    loader = CheckpointLoader(source, LoadOptions(**plan["load_options"]))
    audit_steps = [s for s in steps if plan["audit_steps"] is not None and s in plan["audit_steps"]]
    auditor = _start_audit(loader, audit_steps) if audit_steps else None
    references = None
    if any(a.references for analyses in work.values() for a in analyses):
        try:
            references = _reference_weights(loader, source)
        except Exception as error:  # as locally: the analyses that need them fail, with this reason
            log.warning("reference checkpoints of %s could not be loaded: %s", source.name, error)
    context = StepContext(store, source.name, loader, plan["eval_batch"], plan["chunk_size"], references,
                          plan["provenance"], plan["load_options"]["device"], plan["prefetch"])  # fmt: skip
    started = time.perf_counter()
    run_steps(context, work, auditor, None, summary)
    return {
        "done": summary.done, "failed": summary.failed, "duplicates": summary.duplicates,
        "step_seconds": summary.step_seconds, "seconds": time.perf_counter() - started,
        "observations": {s: o.to_json() for s, o in (auditor.observations if auditor else {}).items()},
        "unreadable": dict(auditor.unreadable) if auditor else {},
    }  # fmt: skip


def _merge(result: dict, summary, auditor) -> None:
    summary.done += result["done"]
    summary.failed += [tuple(f) for f in result["failed"]]
    summary.duplicates += [tuple(d) for d in result["duplicates"]]
    summary.step_seconds.update({int(s): t for s, t in result["step_seconds"].items()})
    if auditor is not None:
        from pythia_dynamics.audit import Observation

        auditor.observations.update({int(s): Observation.from_json(o) for s, o in result["observations"].items()})
        auditor.unreadable.update({int(s): why for s, why in result["unreadable"].items()})


def _lost(store, model: str, chunk: dict, error: BaseException, summary) -> None:
    """A chunk whose retries ran out: each of its results not in the store is recorded as a failure, so that
    the report and a resumed sweep see exactly what is missing."""
    done = store.completed(model)
    reason = f"Ray worker lost after {MAX_RETRIES} retries: {type(error).__name__}: {error}".splitlines()[0]
    for step, work in chunk.items():
        missing = [a for a in work if (step, a.name) not in done]
        for analysis in missing:
            store.write_failure(model, step, analysis.name, reason)
        if missing:
            summary.failed.append((step, "worker", reason))
    log.warning("%s: a Ray task failed: %s", model, reason)


def _finished(store, model: str, pending: dict) -> int:
    """Checkpoints of `pending` whose every analysis is complete in the store."""
    done = store.completed(model)
    return sum(all((step, a.name) in done for a in work) for step, work in pending.items())

"""Benchmark: checkpoint switching, weight analyses, prefetching and memory, against the naive alternatives.

    python benchmarks/bench.py                       # CPU: pythia 70m, 160m, 410m shapes (about 15 min on 2 cores)
    python benchmarks/bench.py --sizes 70m --parts load,analyses
    python benchmarks/bench.py --device cuda         # GPU: the 1.4b shape (one short run)
    python benchmarks/bench.py --markdown docs/performance-run.md

Everything is built here, offline: random-weight checkpoints with the real Pythia shapes, stored in
float16 as Pythia's are, in the local-suite layout and in a Hugging Face Hub-style cache (which the
naive TransformerLens `from_pretrained` path reads). Every figure is measured in the same run as the
alternative it is compared with, on this machine; ratios, not absolute times, are the claims.

Parts:
- load: the raw safetensors read vs the naive loop (TransformerLens 3.x `HookedTransformer.
  from_pretrained_no_processing(..., checkpoint_value=step)`; on 4.x, `GPTNeoXForCausalLM.from_pretrained`
  + booting a TransformerBridge) vs `CheckpointLoader` switching an already built model; logits compared.
- analyses: every registered weight analysis on one checkpoint; scipy's generic `fit` of the four
  families on the same fixed-seed samples (the naive alternative), and how far its parameters are.
- passes: the shared forward (and backward) pass on the default evaluation batch (8 sequences of 128
  random tokens) with every streaming analysis, against the naive way: one `run_with_cache` per
  analysis (with `incl_bwd=True` for backward ones), the analysis reading that cache; and what each
  streaming analysis adds to the shared pass (the pass with it, less the bare pass timed in turn with it).
- sweep: a sweep of the weight analyses with and without prefetching, from local disk and from a
  simulated download (`--bandwidth` MB/s), against load + analyse and max(load, analyse).
- audit: the integrity audit standalone (every checkpoint read, hashed per tensor, observed) against the
  raw read of the same checkpoints (touched), and what it adds to a sweep's read of a checkpoint (the
  per-tensor hashes next to the content hash, and the observation) against that read with the content
  hash alone; and its false-positive rate on clean trained mini suites (every checkpoint a verdict).
- memory: a sweep in a child process, RSS sampled every 20 ms: peak and growth over the sweep,
  against the size of one checkpoint in memory (float32 parameters).
- startup: commands that build no model (`pythia-dynamics --help`, `analyses`, `models`, `steps
  pythia-70m`), each in a fresh interpreter, best of `--startup-repeats`, against `import transformer_lens`
  (what they cost when the package imported it up front) and an empty interpreter.
- events: `pythia_dynamics.events` over a planted demo-sized store (`--events-series` series x the mini
  suite's 37 checkpoints, ~160,000 scalar rows): the whole call, and its change-point search (ruptures'
  compiled `KernelCPD`) against the naive per-series loop with ruptures' pure-Python `Pelt` (same cost,
  same penalty, the same change points), and whether the planted events come out ranked first. Best of 3
  (the naive loop: one run). Then the trajectory models of every series (`timeline.trajectories`: four
  families, held-out validation) against `scipy.optimize.curve_fit` per series and family, timed on 100
  series and scaled to all.
- report: a synthetic store of `--report-shape` (default Pythia's 154 checkpoints x 24 layers x 16 heads,
  every analysis of `--report-template`, the demo store, with its row and array shapes extended to that
  model), `build_report` on it (each section reads what it draws) against the old read of everything
  (a lower bound: one analysis at a time), the page's size and the time headless Chromium takes to open it
  (loaded, the first screen's figures drawn: figures are drawn as they scroll into view) against drawing
  every figure at load (the page's #draw-all, the old way). `--report-store` reuses a store written before.
- ray: the embedded mini suite swept with every analysis locally and on a local Ray cluster of this
  machine's cores (`sweep(..., executor="ray")`, one worker per core, one thread each), Ray's start-up
  apart (`--ray-tiny`: the tiny test suite instead). Not in the default parts' sizes loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PARTS = ("load", "families", "analyses", "passes", "sweep", "audit", "memory", "startup", "events", "ray", "report")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated Pythia sizes (default: 70m,160m,410m; 1.4b on cuda)")
    parser.add_argument("--families-tiny", action="store_true",
                        help="the families part on two-layer toy shapes instead of ~100M parameters (for the test)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch and BLAS threads (default 2)")
    parser.add_argument("--checkpoints", type=int, default=3, help="distinct checkpoints written per size (default 3)")
    parser.add_argument("--sweep-length", type=int, default=8, help="checkpoints per sweep in the sweep/memory parts")
    parser.add_argument("--bandwidth", type=float, default=50.0, help="simulated download speed in MB/s for the sweep part")
    parser.add_argument("--naive-fit-sizes", default="70m", help="sizes on which scipy's generic fits are timed")
    parser.add_argument("--naive-fit-matrices", type=int, default=None, help="time scipy on only this many matrices (a smoke test)")
    parser.add_argument("--events-series", type=int, default=4320, help="planted series in the events part (x 37 checkpoints)")
    parser.add_argument("--startup-repeats", type=int, default=5, help="fresh interpreters per command in the startup part")
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated suites (default: a temp folder)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-dtypes", default="float32",
                        help="memory part: the model dtypes to sweep with, comma-separated (float16 holds the model in "
                             "Pythia's stored precision)")  # fmt: skip
    parser.add_argument("--memory-dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--ray-tiny", action="store_true", help="ray part: the tiny test suite instead of the embedded default")
    parser.add_argument("--report-shape", default="154x24x16", help="report part: checkpoints x layers x heads of the synthetic store")
    parser.add_argument("--report-template", type=Path, default=Path("runs/demo/store"),
                        help="report part: the store whose per-analysis structure is replicated (default the demo's; "
                             "when missing, `pythia-dynamics demo --tiny` makes one)")  # fmt: skip
    parser.add_argument("--report-store", type=Path, default=None,
                        help="report part: build from this synthetic store (written by an earlier run, under its --work) "
                             "instead of writing one")  # fmt: skip
    parser.add_argument("--report-width-scale", type=int, default=16,
                        help="report part: widen the template's width-long arrays (spectra, dim_max_abs) by this "
                             "(16: the demo's d_model 128 to Pythia-1.4B's 2048)")  # fmt: skip
    args = parser.parse_args(argv)
    default_sizes = "1.4b" if args.device.startswith("cuda") else "70m,160m,410m"
    args.sizes = [s for s in (args.sizes or default_sizes).split(",") if s]
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; valid: {', '.join(PARTS)}")
    return args


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
WORK = ARGS.work or Path(tempfile.mkdtemp(prefix="pythia-dynamics-bench-"))
WORK.mkdir(parents=True, exist_ok=True)
os.environ["HF_HUB_CACHE"] = str(WORK / "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from pythia_dynamics import compat, sweep  # noqa: E402
from pythia_dynamics.analyses import registered_analyses  # noqa: E402
from pythia_dynamics.installers import bridge as bridge_installer  # noqa: E402
from pythia_dynamics.loading import CheckpointLoader, IdenticalCheckpointWarning, hash_checkpoint  # noqa: E402
from pythia_dynamics.sources import HubSource, LocalSuite, write_hub_cache  # noqa: E402
from pythia_dynamics.store import Store  # noqa: E402
from pythia_dynamics.sweeps import _reference_weights  # noqa: E402
from pythia_dynamics.synthetic import pythia_shaped_config, write_shaped_checkpoint  # noqa: E402

torch.set_num_threads(ARGS.threads)
warnings.simplefilter("ignore", IdenticalCheckpointWarning)
STEPS = [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 11000, 12000]


def synchronize():
    if ARGS.device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, *args, **kwargs):
    synchronize()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    synchronize()
    return time.perf_counter() - start, result


_EVICTION: list[torch.Tensor] = []


def cold(fn, *args, **kwargs):
    """`timed(fn)` with the CPU caches emptied first (a 1 GiB read). This machine's last-level cache holds
    hundreds of MB, a good part of a checkpoint: a read timed right after another touched the same file would
    be partly served from it. Every comparison against the raw read times both sides cold, as a sweep reads
    each checkpoint."""
    if ARGS.device == "cpu":
        if not _EVICTION:
            _EVICTION.append(torch.ones(1 << 28, dtype=torch.float32))
        float(_EVICTION[0].sum())
    return timed(fn, *args, **kwargs)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def tokenizer():
    """A small stand-in: the naive path wants a tokenizer object, the benchmark never tokenizes."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(16)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), unk_token="t0")


# ---------------------------------------------------------------------------------------------------
# Suites


def build_suites(size: str) -> dict:
    """`checkpoints` distinct float16 checkpoints; a long local suite of `sweep_length` steps (symlinks
    to them, cycling); the same checkpoints in the Hub-style cache as EleutherAI/pythia-<size>."""
    config = pythia_shaped_config(size)
    root = WORK / size
    distinct = root / "suite"
    steps = STEPS[: ARGS.checkpoints]
    for i, step in enumerate(steps):
        folder = distinct / f"step{step}"
        if not (folder / "model.safetensors").exists():
            write_shaped_checkpoint(folder, config, seed=i)
    (distinct / "suite.json").write_text(json.dumps({"name": f"bench-{size}", "checkpoint_steps": steps}))
    long = root / "long"
    long_steps = STEPS[: ARGS.sweep_length]
    long.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(long_steps):
        link = long / f"step{step}"
        if not link.exists():
            link.symlink_to(distinct / f"step{steps[i % len(steps)]}", target_is_directory=True)
    (long / "suite.json").write_text(json.dumps({"name": f"bench-{size}-long", "checkpoint_steps": long_steps}))
    repo = f"EleutherAI/pythia-{size}"
    if not (WORK / "hub" / f"models--{repo.replace('/', '--')}").exists():
        write_hub_cache(WORK / "hub", repo, {f"step{s}": distinct / f"step{s}" for s in steps})
    stored = sum((distinct / f"step{s}" / "model.safetensors").stat().st_size for s in steps) / len(steps)
    n_params = sum(t.numel() for t in load_file(distinct / f"step{steps[0]}" / "model.safetensors").values())
    return {"size": size, "distinct": distinct, "long": long, "steps": steps, "long_steps": long_steps,
            "stored_bytes": stored, "n_params": n_params, "model_bytes": 4 * n_params}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Load


def naive_load(suite: dict, step: int):
    if compat.has_hooked_transformer():
        from transformer_lens import HookedTransformer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HookedTransformer.from_pretrained_no_processing(
                f"pythia-{suite['size']}", checkpoint_value=step, tokenizer=tokenizer(),
                dtype=torch.float32, device=ARGS.device,
            )  # fmt: skip
    from transformers import GPTNeoXForCausalLM

    folder = suite["distinct"] / f"step{step}"
    hf_model = GPTNeoXForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    return bridge_installer.boot(hf_model, tokenizer(), str(folder), processed=False, device=ARGS.device, dtype=torch.float32)


def touched_read(path: Path) -> list[float]:
    """The raw read every switch is compared with: the safetensors file loaded and every tensor summed."""
    return [float(t.sum()) for t in load_file(path).values()]


def raw_reads(path: Path, cold_caches: bool = True) -> dict:
    """The raw read three ways (best of 3): memory-mapped only, every tensor touched, converted to float32."""
    time_it = cold if cold_caches else timed
    lazy = min(time_it(load_file, path)[0] for _ in range(3))

    def as_float32():
        return {k: v.float() for k, v in load_file(path).items()}

    return {"lazy": lazy, "touched": min(time_it(touched_read, path)[0] for _ in range(3)),
            "float32": min(time_it(as_float32)[0] for _ in range(3))}  # fmt: skip


def bench_load(suite: dict) -> dict:
    steps = suite["steps"]
    raw = raw_reads(suite["distinct"] / f"step{steps[1]}" / "model.safetensors")
    naive_times, naive_model = [], None
    for step in steps[1:] + steps[:1]:
        naive_model = None  # the naive loop drops the previous model first
        seconds, naive_model = timed(naive_load, suite, step)
        naive_times.append(seconds)
    results = {"raw": raw, "naive": min(naive_times), "naive_median": statistics.median(naive_times)}
    for label, source in (("local", LocalSuite(suite["distinct"])), ("hub", HubSource(f"pythia-{suite['size']}"))):
        loader = CheckpointLoader(source, device=ARGS.device)
        first, _ = timed(loader.load, steps[0])
        raws, reads, installs = [], [], []
        for _ in range(2):
            for step in steps[1:] + steps[:1]:
                # paired as in bench_families: a raw read of the same checkpoint right before each switch
                raws.append(cold(touched_read, suite["distinct"] / f"step{step}" / "model.safetensors")[0])
                read_s, staged = cold(loader.read, step)
                install_s, loaded = timed(loader.install, staged)
                reads.append(read_s)
                installs.append(install_s)
        switches = [r + i for r, i in zip(reads, installs, strict=True)]
        results[label] = {"first": first, "read": statistics.median(reads), "install": statistics.median(installs),
                          "switch": statistics.median(switches),
                          "ratio": statistics.median(s / r for s, r in zip(switches, raws, strict=True)),
                          "install_ratio": statistics.median(i / r for i, r in zip(installs, raws, strict=True))}  # fmt: skip
    # Same numbers as the naive path: the last naive model holds steps[0], as does the loader now.
    tokens = torch.randint(0, 50304, (2, 64), generator=torch.Generator().manual_seed(0)).to(ARGS.device)
    with torch.no_grad():
        results["logits_max_abs_diff"] = float((loaded.model(tokens) - naive_model(tokens)).abs().max())
    results["backend"] = loaded.backend
    return results


def bench_families() -> dict:
    """Per architecture family at a ~100M-parameter shape (fp16 on disk): read + install against the raw read
    of the same checkpoint (touched), on every backend that can hold the family. Each switch is paired with a
    raw read timed right before it, and the ratio is the median of the pairs' ratios, so that a machine whose
    load changes during the run moves both sides of a ratio alike. The raw read and the read each start with
    cold CPU caches (`cold`); the install follows its read at once, as in `CheckpointLoader.load`."""
    from pythia_dynamics.architectures import FAMILIES
    from pythia_dynamics.installers import choose_backend
    from pythia_dynamics.synthetic import FAMILY_BENCH_SHAPE, tiny_family_config, write_shaped_checkpoint

    def floors(path) -> dict:
        """What any switch must do, timed alone: convert the stored tensors into preallocated float32 memory
        (what an install writes), and hash them (what a read computes); each as a ratio to the raw read."""
        stored = load_file(path)
        into = {name: torch.empty(t.shape, dtype=torch.float32) for name, t in stored.items()}

        def convert():
            for name, t in stored.items():
                into[name].copy_(t)

        raw = statistics.median(cold(touched_read, path)[0] for _ in range(5))
        return {"convert": statistics.median(cold(convert)[0] for _ in range(5)) / raw,
                "hash": statistics.median(cold(hash_checkpoint, stored)[0] for _ in range(5)) / raw}  # fmt: skip

    results = {}
    for model_type, shape in FAMILY_BENCH_SHAPE.items():
        root = WORK / ("families-tiny" if ARGS.families_tiny else "families") / model_type
        config = tiny_family_config(model_type, **({} if ARGS.families_tiny else shape))
        for step in (0, 1):
            if not (root / f"step{step}" / "model.safetensors").exists():
                write_shaped_checkpoint(root / f"step{step}", config, seed=step)
        n_params = sum(t.numel() for t in load_file(root / "step1" / "model.safetensors").values())
        rows = {}
        for backend in compat.available_backends():
            try:
                choose_backend(backend, FAMILIES[model_type])
            except ValueError:
                continue
            loader = CheckpointLoader(LocalSuite(root), device=ARGS.device, backend=backend)
            first, _ = timed(loader.load, 0)
            raws, reads, installs = [], [], []
            for step in (1, 0) * 5:
                raws.append(cold(touched_read, root / f"step{step}" / "model.safetensors")[0])
                read_s, staged = cold(loader.read, step)
                install_s, _ = timed(loader.install, staged)
                reads.append(read_s)
                installs.append(install_s)
            switches = [r + i for r, i in zip(reads, installs, strict=True)]
            rows[backend] = {"first": first, "raw": statistics.median(raws), "read": statistics.median(reads),
                             "install": statistics.median(installs), "switch": statistics.median(switches),
                             "ratio": statistics.median(s / r for s, r in zip(switches, raws, strict=True)),
                             "install_ratio": statistics.median(i / r for i, r in zip(installs, raws, strict=True))}  # fmt: skip
            del loader
        results[model_type] = {"n_params": n_params, "backends": rows, "floors": floors(root / "step1" / "model.safetensors")}
    return results


# ---------------------------------------------------------------------------------------------------
# Analyses


def weight_analyses():
    return [a for a in registered_analyses().values() if not a.streaming]


def bench_analyses(suite: dict) -> dict:
    loader = CheckpointLoader(LocalSuite(suite["distinct"]), device=ARGS.device)
    references = _reference_weights(loader, loader.source)["weights"]
    model = loader.load(suite["steps"][1]).model
    times = {}
    for analysis in weight_analyses():
        extra = {"references": references} if analysis.references else {}
        analysis.run(model, **extra)  # warm-up: caches, lazy imports
        times[analysis.name] = min(timed(analysis.run, model, **extra)[0] for _ in range(2))

    def all_in_turn():
        for analysis in weight_analyses():
            analysis.run(model, **({"references": references} if analysis.references else {}))

    # What a sweep spends per checkpoint: every analysis in turn, timed as a whole (not a sum of best cases).
    results = {"times": times, "total": min(timed(all_in_turn)[0] for _ in range(3)), "sum": sum(times.values())}
    if suite["size"] in ARGS.naive_fit_sizes.split(","):
        results["naive_fits"] = naive_fits(model)
    return results


def naive_fits(model) -> dict:
    """scipy's generic maximum-likelihood `fit` of each family on each matrix's fixed-seed sample, timed,
    and the largest differences from this package's fits of the same samples."""
    from scipy import stats

    from pythia_dynamics.fits import DEFAULT_MAX_SAMPLES, fit_distributions, subsample
    from pythia_dynamics.weights import component_weights

    families = {"gaussian": stats.norm, "logistic": stats.logistic, "student_t": stats.t, "gennorm": stats.gennorm}
    seconds = {f: 0.0 for f in families}
    worst = {"loc_in_scales": 0.0, "scale_relative": 0.0, "shape_relative": 0.0}
    n_matrices = 0
    for (component, _layer), tensor in component_weights(model).items():
        if not component.startswith("W_") or tensor.numel() < 1000:
            continue
        if ARGS.naive_fit_matrices is not None and n_matrices >= ARGS.naive_fit_matrices:
            break
        n_matrices += 1
        sample = subsample(tensor, DEFAULT_MAX_SAMPLES, 0)
        ours = fit_distributions(sample, max_samples=len(sample)).families
        for family, dist in families.items():
            elapsed, params = timed(dist.fit, sample)
            seconds[family] += elapsed
            *shape, loc, scale = params
            mine = ours[family].params
            worst["loc_in_scales"] = max(worst["loc_in_scales"], abs(loc - mine["loc"]) / scale)
            worst["scale_relative"] = max(worst["scale_relative"], abs(scale / mine["scale"] - 1))
            if shape and (family != "student_t" or max(shape[0], mine["nu"]) < 100):  # nu beyond 100 is Gaussian
                ours_shape = mine["nu" if family == "student_t" else "beta"]
                worst["shape_relative"] = max(worst["shape_relative"], abs(shape[0] / ours_shape - 1))
    return {"seconds": seconds, "total": sum(seconds.values()), "n_matrices": n_matrices, "worst": worst}


# ---------------------------------------------------------------------------------------------------
# Sweep overlap


class SlowLocalSuite(LocalSuite):
    """A local suite that takes as long to read as a download at `bandwidth` MB/s would."""

    def __init__(self, root, bandwidth_mb_s: float):
        super().__init__(root)
        self.bandwidth = bandwidth_mb_s * 1e6

    def read_state_dict(self, step):
        start = time.perf_counter()
        state_dict = super().read_state_dict(step)
        size = (self.step_dir(step) / "model.safetensors").stat().st_size
        time.sleep(max(0.0, size / self.bandwidth - (time.perf_counter() - start)))
        return state_dict


EVAL_SHAPE = (8, 128)  # make_eval_batch's default: sequences, tokens


def streaming_analyses():
    return [a for a in registered_analyses().values() if a.streaming]


def shared_pass(model, tokens, analyses) -> None:
    """What a sweep does per checkpoint for its streaming analyses: one chunked pass feeding them all."""
    from pythia_dynamics.passes import run_chunked_passes

    accumulators = [a.fn(model) for a in analyses]
    hooks = [h for acc in accumulators for h in acc.hooks]

    def feed(chunk):
        for acc in accumulators:
            acc.update(chunk)

    backward = any(a.needs == "backward" for a in analyses)
    totals = run_chunked_passes(model, tokens, hooks=hooks, backward=backward, on_chunk=feed)
    for acc in accumulators:
        acc.finish(totals)


def naive_pass(model, tokens, analysis) -> None:
    """The naive way: `run_with_cache` (every hook point cached; gradients too for a backward analysis),
    then the analysis reads its activations from the cache."""
    from pythia_dynamics.passes import BatchTotals, ChunkPasses, per_token_loss

    acc = analysis.fn(model)
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    backward = analysis.needs == "backward"
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(backward):
        if backward:
            loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
            logits = token_loss = None
        else:
            logits, cache = model.run_with_cache(tokens)
            token_loss = per_token_loss(logits, tokens)
            loss = token_loss.sum() / n
    grads = {h: cache[h + "_grad"] for h in acc.hooks} if backward else None
    chunk = ChunkPasses(tokens, logits, token_loss, loss.item() * n, n, {h: cache[h] for h in acc.hooks}, grads)
    acc.update(chunk)
    param_grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None} if backward else None
    acc.finish(BatchTotals(loss.item(), n, param_grads))
    model.zero_grad(set_to_none=True)


def bench_passes(suite: dict) -> dict:
    from pythia_dynamics.passes import run_chunked_passes

    model = CheckpointLoader(LocalSuite(suite["distinct"]), device=ARGS.device).load(suite["steps"][1]).model
    tokens = torch.randint(0, model.cfg.d_vocab, EVAL_SHAPE, generator=torch.Generator().manual_seed(0)).to(ARGS.device)
    analyses = streaming_analyses()

    def paired(fn, *a, repeats: int = 3) -> tuple[float, float]:
        """(best time of fn, best time of the bare pass it needs), the two run in turn so that both see the
        same load: on a machine shared with other work a baseline taken once, at another moment, is
        off by more than the cheap analyses cost."""
        backward = any(x.needs == "backward" for x in (a[-1] if a else []))
        with_it, bare = [], []
        for _ in range(repeats):
            bare.append(timed(run_chunked_passes, model, tokens, backward=backward)[0])
            with_it.append(timed(fn, *a)[0])
        return min(with_it), min(bare)

    shared_pass(model, tokens, analyses)  # warm-up
    results = {"adds": {}, "naive": {}, "alone": {}}
    results["shared_all"], results["forward_backward"] = paired(shared_pass, model, tokens, analyses)
    # the other model pass of a checkpoint: the repeated-token batch head_scores and in_context_learning share
    from pythia_dynamics.passes import repeated_pass

    results["repeated_pass"] = min(timed(repeated_pass, model)[0] for _ in range(3))
    for analysis in analyses:
        alone, bare = paired(shared_pass, model, tokens, [analysis])
        results["alone"][analysis.name], results["adds"][analysis.name] = alone, alone - bare
        try:
            naive_pass(model, tokens, analysis)  # warm-up
            results["naive"][analysis.name] = min(timed(naive_pass, model, tokens, analysis)[0] for _ in range(2))
        except Exception as error:  # e.g. a backend whose cache names backward hooks otherwise
            results["naive"][analysis.name] = None
            print(f"naive {analysis.name}: {type(error).__name__}: {error}", file=sys.stderr)
    circuits = [a for a in analyses if a.name in ("head_scores", "massive_activations")]
    with_circuits, results["forward"] = paired(shared_pass, model, tokens, circuits, repeats=5)
    if circuits:
        results["circuits_adds"] = with_circuits - results["forward"]
    return results


def bench_sweep(suite: dict) -> dict:
    names = [a.name for a in weight_analyses()]
    results = {}
    for label, make_source in (("local disk", lambda: LocalSuite(suite["long"])),
                               (f"download at {ARGS.bandwidth:g} MB/s", lambda: SlowLocalSuite(suite["long"], ARGS.bandwidth))):  # fmt: skip
        loader = CheckpointLoader(make_source(), device=ARGS.device)
        steps = suite["long_steps"]
        loader.load(steps[0])
        load = statistics.median(timed(loader.load, s)[0] for s in steps[1:4])
        row = {"load": load}
        for prefetch in (False, True):
            with tempfile.TemporaryDirectory(dir=WORK) as out:
                seconds, summary = timed(sweep, make_source(), out, analyses=names, device=ARGS.device,
                                         progress=False, prefetch=prefetch)  # fmt: skip
            assert not summary.failed, summary
            # Per checkpoint after the first (which also builds the model); the sweep's start-up is apart.
            row["prefetch" if prefetch else "sequential"] = statistics.median(list(summary.step_seconds.values())[1:])
            row["total_prefetch" if prefetch else "total_sequential"] = seconds
        # Analysis (and writing results) per checkpoint: the sequential sweep's checkpoint minus its loading.
        row["analyse"] = row["sequential"] - load
        results[label] = row
    return results


# ---------------------------------------------------------------------------------------------------
# Audit

# Clean trained mini suites the audit must find nothing in: (seed, total steps); 9 and 25 checkpoints.
CLEAN_SUITES = [(0, 40), (1, 40), (2, 40), (3, 200), (4, 200)]


def content_hash_alone(state_dict) -> str:
    """The content hash as computed before the audit: one digest, no per-tensor hashes (the baseline)."""
    import xxhash

    from pythia_dynamics.architectures import is_non_weight

    digest = xxhash.xxh3_128()
    for name in sorted(state_dict):
        if not is_non_weight(name):
            tensor = state_dict[name].contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def bench_audit(suite: dict) -> dict:
    from pythia_dynamics.audit import Auditor, audit
    from pythia_dynamics.loading import StagedCheckpoint, hash_checkpoint

    source = LocalSuite(suite["distinct"])
    paths = [suite["distinct"] / f"step{s}" / "model.safetensors" for s in suite["steps"]]
    raw = sum(raw_reads(p, cold_caches=False)["touched"] for p in paths)  # as the audit's figures were measured
    standalone = min(timed(audit, source, progress=False)[0] for _ in range(3))
    loader = CheckpointLoader(source)
    auditor = Auditor(loader, suite["steps"])
    auditor.references()
    plain, shared, observing, staged = {}, {}, {}, None
    for repeat in range(5):  # best of five, the two reads in alternating order (the machine may be busy)
        for step, path in zip(suite["steps"], paths, strict=True):
            def alone():
                return content_hash_alone(load_file(path))

            def with_tensor_hashes():
                state_dict = load_file(path)
                return StagedCheckpoint(step, state_dict, *hash_checkpoint(state_dict))

            for fn, times in ((alone, plain), (with_tensor_hashes, shared))[:: 1 if repeat % 2 else -1]:
                seconds, result = timed(fn)
                times[step] = min(times.get(step, seconds), seconds)
                staged = result if fn is with_tensor_hashes else staged
            auditor.observations.pop(step, None)
            seconds, _ = timed(auditor.observe, staged)
            observing[step] = min(observing.get(step, seconds), seconds)
    read, with_hashes, observe = (statistics.median(t.values()) for t in (plain, shared, observing))
    # A whole sweep (weight_norms, the quickest analysis, so the audit's share is at its largest), with and
    # without the audit: wall time per checkpoint after the first, best of two, and the audit's final judging.
    per_step = {}
    for audited in (False, True, False, True):
        with tempfile.TemporaryDirectory(dir=WORK) as out:
            start = time.perf_counter()
            summary = sweep(LocalSuite(suite["long"]), out, analyses="weight_norms", audit=audited, progress=False)
            total = (time.perf_counter() - start) / len(summary.done)
        per_step[audited] = min(per_step.get(audited, total), total)
    return {"raw_touched": raw, "standalone": standalone, "checkpoints": len(paths), "read": read,
            "read_with_tensor_hashes": with_hashes, "observe": observe,
            "added": (with_hashes - read + observe) / read, "sweep_plain": per_step[False],
            "sweep_audited": per_step[True], "clean": audit_clean_suites()}  # fmt: skip


def audit_clean_suites() -> dict:
    """Train the clean mini suites (once per work folder) and audit them: scored checkpoints, verdicts, and
    the largest |robust z| and |jump| any clean checkpoint reached (the margin below the thresholds)."""
    from pythia_dynamics.audit import Auditor
    from pythia_dynamics.audit.judge import MIN_JUMP, Z_THRESHOLD, _scores
    from pythia_dynamics.train import tiny_test_config, train_suite

    scored = flagged = 0
    largest_z = largest_jump = 0.0
    for seed, total in CLEAN_SUITES:
        root = train_suite(tiny_test_config(seed=seed, total_steps=total, n_evenly_spaced=min(total // 10, 20)),
                           WORK / "clean" / f"seed{seed}-{total}", progress=False)  # fmt: skip
        loader = CheckpointLoader(str(root))
        auditor = Auditor(loader, loader.source.steps)
        report = auditor.finish()
        flagged += len(report.suspect_steps)
        steps = sorted(auditor.observations)
        names = sorted(auditor.observations[steps[0]].features)
        values = np.array([[[auditor.observations[s].features[n][k] for s in steps] for n in names] for k in range(3)])
        with np.errstate(divide="ignore"):
            logs = np.where(values > 0, np.log(np.where(values > 0, values, 1)), np.nan)
        x = np.log1p(np.array(steps, dtype=np.float64))
        for k in range(3):
            z, jump = _scores(logs[k], x)
            finite = ~np.isnan(z)
            scored += int(finite.sum()) if k == 0 else 0
            largest_z = max(largest_z, float(np.nanmax(np.abs(z))))
            largest_jump = max(largest_jump, float(np.nanmax(np.abs(jump))))
    return {"suites": len(CLEAN_SUITES), "scored": scored, "flagged": flagged, "largest_z": largest_z,
            "largest_jump": largest_jump, "z_threshold": Z_THRESHOLD, "min_jump": MIN_JUMP}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Memory


def memory_child(size: str) -> None:
    """Run in a child process: sweep the long suite, sampling RSS; print one JSON line."""
    suite = build_suites(size)
    process = psutil.Process()
    samples: list[tuple[float, int, int]] = []  # time, RSS, RSS less file-backed pages (mapped checkpoints)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            info = process.memory_info()
            samples.append((time.perf_counter(), info.rss, info.rss - info.shared))
            time.sleep(0.02)

    before = process.memory_info()
    baseline, baseline_private = before.rss, before.rss - before.shared
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=WORK) as out:
        sweep(LocalSuite(suite["long"]), out, analyses=[a.name for a in weight_analyses()], device=ARGS.device,
              dtype=ARGS.memory_dtype, progress=False)  # fmt: skip
    end = time.perf_counter()
    stop.set()
    thread.join()
    rss = np.array([r for _, r, _ in samples])
    private = np.array([p for _, _, p in samples])
    t = np.array([s for s, _, _ in samples]) - start
    half = (end - start) / 2
    print(json.dumps({
        "baseline": baseline, "peak": int(rss.max()), "peak_private": int(private.max()), "baseline_private": baseline_private,
        "peak_first_half": int(rss[t < half].max()), "peak_second_half": int(rss[t >= half].max()),
        "end": int(rss[-1]), "model_bytes": suite["model_bytes"], "stored_bytes": suite["stored_bytes"],
        "cuda_peak": torch.cuda.max_memory_allocated() if ARGS.device.startswith("cuda") else None,
    }))  # fmt: skip


def bench_memory(size: str, dtype: str = "float32") -> dict:
    command = [sys.executable, __file__, "--memory-child", size, "--memory-dtype", dtype, "--work", str(WORK), "--device", ARGS.device,
               "--threads", str(ARGS.threads), "--checkpoints", str(ARGS.checkpoints),
               "--sweep-length", str(ARGS.sweep_length)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"dtype": dtype}


# ---------------------------------------------------------------------------------------------------
# Start-up


STARTUP_COMMANDS = {
    "pythia-dynamics --help": ["--help"],
    "pythia-dynamics analyses": ["analyses"],
    "pythia-dynamics models": ["models"],
    "pythia-dynamics steps pythia-70m": ["steps", "pythia-70m"],
}


def best_run(command: list[str]) -> float:
    """Wall time of the fastest of `startup_repeats` runs of a command, each a fresh process."""
    times = []
    for _ in range(ARGS.startup_repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_events() -> dict:
    import ruptures

    from pythia_dynamics.timeline import events, trajectories
    from pythia_dynamics.timeline.changepoints import detect, normalised_increments, penalty_for
    from pythia_dynamics.timeline.planted import PlantedEvent, write_planted_store
    from pythia_dynamics.timeline.series import read_series
    from pythia_dynamics.train.config import SuiteConfig

    steps = SuiteConfig().checkpoint_steps
    planted = [PlantedEvent(9, share=0.5), PlantedEvent(25, share=0.3, analyses=("weight_norms", "gradients"))]
    truth = write_planted_store(WORK / "events-store", steps, planted, n_series=ARGS.events_series, seed=0)
    def best_of_3(fn, *args):
        runs = [timed(fn, *args) for _ in range(3)]
        return min(r[0] for r in runs), runs[-1][1]

    total, result = best_of_3(events, WORK / "events-store")
    read, series = best_of_3(read_series, WORK / "events-store")
    values, steps = series[0].values, series[0].steps
    pen = penalty_for(len(steps))
    ours, found = best_of_3(lambda: [list(detect(steps, y).index) for y in values])

    def naive():
        out = []
        for y in values:
            z = normalised_increments(steps, y)
            ends = ruptures.Pelt(model="l2", min_size=1, jump=1).fit(z.reshape(-1, 1)).predict(pen=pen) if z.any() else [len(z)]
            out.append(ends[:-1])
        return out

    naive_seconds, naive_found = timed(naive)
    top = result.events.head(2)["step"].tolist()
    fit_seconds, fitted = best_of_3(trajectories, WORK / "events-store")
    sample = values[:: max(1, len(values) // NAIVE_FIT_SERIES)]
    naive_fit_seconds, _ = timed(lambda: [naive_held_out(steps, y) for y in sample])
    return {"rows": truth["rows"], "series": len(values), "total": total, "read": read, "ours": ours,
            "naive": naive_seconds, "same": found == naive_found, "n_changepoints": len(result.changepoints),
            "planted_first": top == [steps[9], steps[25]], "events": len(result.events), "fit": fit_seconds,
            "fitted_series": int(fitted["series"].nunique()), "naive_fit": naive_fit_seconds * len(values) / len(sample),
            "naive_fit_sample": len(sample)}  # fmt: skip


NAIVE_FIT_SERIES = 100  # series the naive per-series fitting is timed on (scaled up to every series)


def naive_held_out(steps, y, train_fraction: float = 0.7) -> dict:
    """The naive trajectory fit: per series and family, `scipy.optimize.curve_fit` from one start (the middle
    of the family's grid), on the first 70% of checkpoints, then the held-out error."""
    import math
    import warnings

    import numpy as np
    from scipy.optimize import curve_fit

    from pythia_dynamics.timeline.curves import FAMILIES

    n_train = math.ceil(train_fraction * len(steps))
    errors = {}
    for name, spec in FAMILIES.items():
        x = np.asarray(steps, float) / (1.0 if spec.in_steps else float(steps[n_train - 1]))
        start = [y[0], (y[n_train - 1] - y[0]) or 1.0, *spec.grid[len(spec.grid) // 2]]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(spec.fn, x[:n_train], y[:n_train], p0=np.clip(start, spec.lower, spec.upper),
                                      bounds=(spec.lower, spec.upper), maxfev=1000)  # fmt: skip
        except (RuntimeError, ValueError):
            continue
        errors[name] = float(np.sqrt(np.mean((spec.fn(x[n_train:], *params) - y[n_train:]) ** 2)))
    return errors


def bench_ray() -> dict:
    """The embedded mini suite swept with every analysis locally (one process, `--threads` threads) and on a
    local Ray cluster of this machine's cores (one worker per core, one thread each), each into a new store;
    Ray's start-up is timed apart (a cluster is started once and serves many sweeps)."""
    import logging

    import ray

    from pythia_dynamics.train import ensure_default_suite

    suite = ensure_default_suite(progress=False) if not ARGS.ray_tiny else _tiny_suite()
    with tempfile.TemporaryDirectory(dir=WORK) as out:
        local, summary = timed(sweep, LocalSuite(suite), Path(out) / "local", progress=False)
        cores = os.cpu_count() or 1
        start, _ = timed(ray.init, num_cpus=cores, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
        try:
            remote, ray_summary = timed(sweep, LocalSuite(suite), Path(out) / "ray", executor="ray", threads_per_worker=1, progress=False)
        finally:
            ray.shutdown()
        same = Store(Path(out) / "local").scalars().shape == Store(Path(out) / "ray").scalars().shape
    return {"checkpoints": len(summary.done), "local": local, "ray": remote, "ray_start": start, "workers": cores,
            "same_rows": same, "ray_failed": len(ray_summary.failed)}  # fmt: skip


def _tiny_suite() -> Path:
    from pythia_dynamics.train import tiny_test_config, train_suite

    return train_suite(tiny_test_config(), WORK / "tiny-suite", progress=False)


PYTHIA_STEPS = [0, *(2**i for i in range(10)), *range(1000, 143001, 1000)]  # Pythia's 154 checkpoints
# Arrays whose length is the model width (d_model, or d_head per head) in the analyses: stretched to the
# target width so the synthetic store has the real analyses' shapes at that model shape.
WIDTH_ARRAYS = {("spectra", "singular_values"), ("residual_outliers", "dim_max_abs")}


def _expand_rows(df, n_layers: int, n_heads: int, demo_layers: int, demo_heads: int):
    """The template's rows for a model of `n_layers` x `n_heads`: a component present at every template
    layer (head) is repeated for every new one, copying template layer l % demo_layers (head h % demo_heads)."""
    import pandas as pd

    out = []
    for component, rows in df.groupby("component", sort=False, dropna=False):
        layers = set(rows["layer"].dropna().astype(int))
        if layers and len(layers) == demo_layers:
            rows = pd.concat([rows[rows["layer"] == l % demo_layers].assign(layer=l) for l in range(n_layers)])
        heads = set(rows["head"].dropna().astype(int))
        if heads and len(heads) == demo_heads:
            rows = pd.concat([rows[rows["head"].isna()]] + [rows[rows["head"] == h % demo_heads].assign(head=h) for h in range(n_heads)])
        out.append(rows)
    return pd.concat(out, ignore_index=True) if out else df


def _stretch(values, shape, analysis: str, name: str, width_scale: int, n_heads: int, demo_heads: int):
    """A template array at the target model's shape: widened (WIDTH_ARRAYS) or repeated over heads."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64).reshape(shape)
    if (analysis, name) in WIDTH_ARRAYS and values.ndim == 1 and width_scale > 1:
        grid = np.linspace(0, values.size - 1, values.size * width_scale)
        values = np.interp(grid, np.arange(values.size), values)
    elif analysis == "head_scores" and name == "view_pattern" and values.shape[0] == demo_heads:
        values = values[np.arange(n_heads) % demo_heads]
    return values


def write_scaled_store(template, out, n_steps: int, n_layers: int, n_heads: int, width_scale: int, seed: int = 0) -> dict:
    """A synthetic store of every analysis `template` holds, at `n_steps` of Pythia's checkpoints (log-spaced
    when fewer than 154) and a model of `n_layers` x `n_heads`: each analysis's rows and array shapes are its
    last template checkpoint's, extended over layers and heads (and width, for the arrays in WIDTH_ARRAYS),
    with every non-integer value perturbed per checkpoint (a smooth drift plus 2% noise; one factor per array,
    so sorted arrays stay sorted; histogram bin edges and integers (counts, token ids) are kept)."""
    import numpy as np

    from pythia_dynamics.figures.sections import animation_steps
    from pythia_dynamics.store import Store

    source = Store(template)
    store = Store.create(out, fsync=False)
    model = source.models()[0]
    steps = animation_steps(PYTHIA_STEPS, n_steps)
    rng = np.random.default_rng(seed)
    all_scalars = source.scalars(model=model)
    demo_layers = int(all_scalars["layer"].max()) + 1
    demo_heads = int(all_scalars["head"].max()) + 1
    name = f"synthetic-{n_layers}x{n_heads}"
    meta = source.source_meta(model) or {}
    store.write_source_meta(name, meta)
    counts = {"scalar_rows": 0, "array_rows": 0, "array_values": 0}
    for analysis in source.analyses(model):
        last = source.steps(model, analysis)[-1]
        scalars = _expand_rows(source.scalars(model=model, analysis=analysis, steps=[last]), n_layers, n_heads, demo_layers, demo_heads)
        scalars = scalars.drop(columns=["model", "step", "analysis"])
        arrays = source.arrays(model=model, analysis=analysis, steps=[last])
        arrays = _expand_rows(arrays, n_layers, n_heads, demo_layers, demo_heads).drop(columns=["model", "step", "analysis"])
        numeric = [
            None if v is None else _stretch(v, s, analysis, n, width_scale, n_heads, demo_heads)
            for v, s, n in zip(arrays["values"], arrays["shape"], arrays["name"])
        ]
        float_value = ~np.isclose(scalars["value"].astype(float), np.rint(scalars["value"].astype(float)))
        for i, step in enumerate(steps):
            drift = 1 + 0.3 * np.log1p(step) / np.log1p(PYTHIA_STEPS[-1])
            s = scalars.copy()
            noise = 1 + 0.02 * rng.standard_normal(len(s))
            s.loc[float_value, "value"] = (s["value"].astype(float) * drift * noise)[float_value]
            a = arrays.copy()
            values, shapes = [], []
            for v, name_ in zip(numeric, arrays["name"]):
                if v is None:
                    values.append(None)
                    shapes.append(None)
                    continue
                if not np.array_equal(v, np.rint(v)) and name_ != "histogram_edges":
                    v = v * (drift * (1 + 0.02 * rng.standard_normal()))  # one factor a row keeps sorted arrays sorted
                values.append(v.ravel())
                shapes.append(list(v.shape))
            a["values"] = values
            a["shape"] = [sh if sh is not None else list(old) for sh, old in zip(shapes, arrays["shape"])]
            store.write_result(name, step, analysis, s, a if len(a) else None)
        counts["scalar_rows"] += len(scalars) * len(steps)
        counts["array_rows"] += len(arrays) * len(steps)
        counts["array_values"] += sum(0 if v is None else v.size for v in numeric) * len(steps)
    return {"model": name, "steps": len(steps), "layers": n_layers, "heads": n_heads, **counts}


def naive_report_read(path: Path) -> float:
    """The reads the report made before each section read its own: every scalar and every array of the store.
    Timed one analysis at a time (the same bytes decoded; all at once they do not fit in this machine's memory
    at the full size), so this is a lower bound on the old report's read."""
    from pythia_dynamics.store import Store

    store = Store(path)
    seconds = 0.0
    for analysis in store.analyses():
        start = time.perf_counter()
        store.scalars(analysis=analysis)
        store.arrays(analysis=analysis)
        seconds += time.perf_counter() - start
    return seconds


# The first screen of the measured page (and of tests/test_report_browser.py): a 1280 x 1024 window.
CHROMIUM_WINDOW = "1280,1024"


def chromium_load(page: Path, repeats: int = 2) -> dict:
    """Seconds for headless Chromium (the flags of tests/conftest.py's render_in_chromium, a CHROMIUM_WINDOW
    window) to open `page`, best of `repeats`, less the same for an empty page. "Opens" = the page is loaded,
    its scripts have run and the figures in (or within the loader's margin of) the first screen are drawn;
    figures further down are drawn when scrolled to. Also the time with every figure drawn at load (the
    page's #draw-all, which is how the report drew before figures were drawn lazily), and how many plots
    each drew."""
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        return {}

    def load(uri: str) -> tuple[float, str]:
        with tempfile.TemporaryDirectory(dir=WORK) as profile:
            command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                       "--disable-background-networking", "--disable-component-update", "--disable-sync",
                       f"--user-data-dir={profile}", "--virtual-time-budget=5000", f"--window-size={CHROMIUM_WINDOW}",
                       "--dump-dom", uri]  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
            return time.perf_counter() - start, done.stdout

    blank = WORK / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    empty = min(load(blank.resolve().as_uri())[0] for _ in range(repeats))
    runs = [load(page.resolve().as_uri()) for _ in range(repeats)]
    every = load(page.resolve().as_uri() + "#draw-all")  # once: it is the slow one
    dom, every_dom = runs[-1][1], every[1]
    return {"load": min(r[0] for r in runs), "empty": empty, "plots": dom.count('class="plotly-graph-div'),
            "drawn": dom.count('data-drawn="drawn"'), "svg": dom.count('class="main-svg"'),
            "load_all": every[0], "drawn_all": every_dom.count('data-drawn="drawn"')}  # fmt: skip


def bench_report() -> dict:
    """A synthetic store of `--report-shape` (checkpoints x layers x heads) written from a template store's
    per-analysis structure, then `build_report` on it against the old read of everything, the page's size
    and Chromium's load time."""
    import shutil

    from pythia_dynamics.report import build_report

    n_steps, n_layers, n_heads = (int(v) for v in ARGS.report_shape.split("x"))
    template = ARGS.report_template
    if template is None or not Path(template).is_dir():
        template = WORK / "report-template"
        if not (template / "store").is_dir():  # the tiny demo suite's store: every analysis, in seconds
            subprocess.run([sys.executable, "-m", "pythia_dynamics.cli", "demo", "--tiny", "--out", str(template)],
                           check=True, capture_output=True)  # fmt: skip
        template = template / "store"
    if ARGS.report_store is not None:  # a store an earlier run wrote: its shape as written then
        store, write_seconds = ARGS.report_store, float("nan")
        shape = json.loads(store.with_name(store.name + ".shape.json").read_text())
    else:
        store = WORK / f"report-store-{ARGS.report_shape}"
        if store.exists():
            shutil.rmtree(store)
        write_seconds, shape = timed(write_scaled_store, template, store, n_steps, n_layers, n_heads, ARGS.report_width_scale)
        store.with_name(store.name + ".shape.json").write_text(json.dumps(shape))  # for --report-store
    page = WORK / "report.html"
    cpu = time.process_time()
    ours, _ = timed(build_report, [store], page)
    cpu = time.process_time() - cpu
    naive = naive_report_read(store)
    stored = sum(f.stat().st_size for f in store.rglob("*.parquet"))
    return {**shape, "template": str(template), "write": write_seconds, "stored_bytes": stored, "ours": ours, "ours_cpu": cpu,
            "naive_read": naive, "html_bytes": page.stat().st_size, "load_avg": os.getloadavg()[0], **chromium_load(page)}  # fmt: skip


def bench_startup() -> dict:
    cli = [sys.executable, "-m", "pythia_dynamics.cli"]
    results = {label: best_run([*cli, *argv]) for label, argv in STARTUP_COMMANDS.items()}
    results["python -c pass"] = best_run([sys.executable, "-c", "pass"])
    results["python -c 'import transformer_lens'"] = best_run([sys.executable, "-c", "import transformer_lens"])
    return results


# ---------------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if ARGS.device.startswith("cuda") else ""
    return (f"{cpu}, {os.cpu_count()} cores ({ARGS.threads} threads used), {psutil.virtual_memory().total / 2**30:.0f} GiB"
            f"{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"TransformerLens {compat.TL_VERSION}, device {ARGS.device}")  # fmt: skip


def table_head(title: str, columns: list[str]) -> list[str]:
    """A markdown section heading and table header, the separator row sized to the columns."""
    return [f"### {title}", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def report(results: dict) -> str:
    lines = [f"Machine: {machine()}", ""]
    sizes = [s for s in ARGS.sizes if s in results]
    if any("load" in results[s] for s in sizes):
        lines += table_head("Checkpoint switching", [
            "shape", "stored (fp16)", "raw read: lazy / touched / to fp32", "naive load", "ours: read + install = switch",
            "switch vs raw (touched; median of paired runs)", "install vs raw (touched): the switch in a prefetching sweep",
            "naive / ours", "ours via Hub cache", "logits max diff"])  # fmt: skip
        for s in sizes:
            r = results[s].get("load")
            if not r:
                continue
            raw, local = r["raw"], r["local"]
            lines.append(
                f"| {s} | {results[s]['stored_bytes'] / 1e6:.0f} MB | {ms(raw['lazy'])} / {ms(raw['touched'])} / {ms(raw['float32'])} "
                f"| {ms(r['naive'])} | {ms(local['read'])} + {ms(local['install'])} = {ms(local['switch'])} "
                f"| {local['ratio']:.1f}x | {local['install_ratio']:.1f}x "
                f"| {r['naive'] / local['switch']:.0f}x | {ms(r['hub']['switch'])} "
                f"| {r['logits_max_abs_diff']:.1e} |"
            )  # fmt: skip
        lines.append("")
    if "families" in results:
        lines += table_head(f"Checkpoint switching per architecture family ({'toy shapes' if ARGS.families_tiny else '~100M parameters'}, fp16 on disk)", [
            "family", "parameters", "backend", "raw read (touched)", "read + install = switch",
            "switch vs raw (median of paired runs)", "install vs raw: the switch in a prefetching sweep",
            "floor: fp16 -> fp32 conversion alone + hash alone, vs raw"])  # fmt: skip
        for family, r in results["families"].items():
            f = r["floors"]
            for backend, b in r["backends"].items():
                lines.append(f"| {family} | {r['n_params'] / 1e6:.0f}M | {backend} | {ms(b['raw'])} "
                             f"| {ms(b['read'])} + {ms(b['install'])} = {ms(b['switch'])} | **{b['ratio']:.1f}x** | {b['install_ratio']:.1f}x "
                             f"| {f['convert']:.1f}x + {f['hash']:.1f}x = {f['convert'] + f['hash']:.1f}x |")  # fmt: skip
        lines.append("")
    if any("analyses" in results[s] for s in sizes):
        names = [a.name for a in weight_analyses()]
        lines += table_head("Weight analyses, one checkpoint", ["shape", *names, "sum", "all, one after another"])
        for s in sizes:
            r = results[s].get("analyses")
            if r:
                lines.append(f"| {s} | " + " | ".join(ms(r["times"][n]) for n in names)
                             + f" | {ms(r['sum'])} | **{ms(r['total'])}** |")  # fmt: skip
        for s in sizes:
            naive = (results[s].get("analyses") or {}).get("naive_fits")
            if naive:
                w = naive["worst"]
                lines += ["", f"Naive fits ({s}): scipy's generic `fit` of the four families on the same "
                          f"fixed-seed samples of {naive['n_matrices']} matrices takes {ms(naive['total'])} "
                          f"({', '.join(f'{f} {ms(t)}' for f, t in naive['seconds'].items())}); all weight analyses "
                          f"take {ms(results[s]['analyses']['total'])}, **{naive['total'] / results[s]['analyses']['total']:.0f}x** less. "
                          f"Largest differences from scipy's parameters: loc {w['loc_in_scales']:.1e} scales, "
                          f"scale {w['scale_relative']:.1e} relative, shape (nu < 100, beta) {w['shape_relative']:.1e} relative."]  # fmt: skip
        lines.append("")
    if any("passes" in results[s] for s in sizes):
        names = [a.name for a in streaming_analyses()]
        lines += table_head(f"Shared forward/backward pass: streaming analyses on one checkpoint ({EVAL_SHAPE[0]} x {EVAL_SHAPE[1]} tokens)",
                            ["shape", "analysis", "needs", "adds to the shared pass", "alone (own pass)",
                             "naive: its own run_with_cache", "naive / alone"])  # fmt: skip
        for s in sizes:
            r = results[s].get("passes")
            if not r:
                continue
            needs = {a.name: a.needs for a in streaming_analyses()}
            for n in names:
                naive = r["naive"].get(n)
                lines.append(f"| {s} | {n} | {needs[n]} | {ms(r['adds'][n])} | {ms(r['alone'][n])} | "
                             + (f"{ms(naive)} | {naive / r['alone'][n]:.1f}x |" if naive else "n/a | |"))  # fmt: skip
            naive_total = sum(v for v in r["naive"].values() if v)
            lines.append(f"| {s} | **all, one shared pass** | | | **{ms(r['shared_all'])}** | {ms(naive_total)} "
                         f"| **{naive_total / r['shared_all']:.1f}x** |")  # fmt: skip
            lines += ["", f"{s}: the pass alone takes {ms(r['forward'])} forward, {ms(r['forward_backward'])} forward + "
                      f"backward: {r['forward_backward'] / r['shared_all']:.0%} of the shared pass with every streaming analysis; "
                      f"with the repeated-token forward pass the circuit analyses share ({ms(r['repeated_pass'])}), the model's "
                      f"passes are {(r['forward_backward'] + r['repeated_pass']) / r['shared_all']:.0%} of it. "
                      + (f"head_scores + massive_activations add **{ms(r['circuits_adds'])}** to the forward pass." if "circuits_adds" in r else ""), ""]  # fmt: skip
        lines.append("")
    if any("sweep" in results[s] for s in sizes):
        lines += table_head("Sweeps: loading overlapped with analysing (per checkpoint, after the first)", [
            "shape", "checkpoints from", "load", "analyse", "load + analyse", "max", "sequential sweep",
            "prefetching sweep"])  # fmt: skip
        for s in sizes:
            for label, r in (results[s].get("sweep") or {}).items():
                lines.append(f"| {s} | {label} | {ms(r['load'])} | {ms(r['analyse'])} | {ms(r['load'] + r['analyse'])} "
                             f"| {ms(max(r['load'], r['analyse']))} | {ms(r['sequential'])} | **{ms(r['prefetch'])}** |")  # fmt: skip
        lines.append("")
    if any("audit" in results[s] for s in sizes):
        lines += table_head("Integrity audit (per checkpoint)", [
            "shape", "raw read (touched)", "audit standalone", "audit / raw read", "sweep's read (content hash)",
            "+ per-tensor hashes", "+ observation", "the audit adds to the sweep's read"])  # fmt: skip
        for s in sizes:
            r = results[s].get("audit")
            if not r:
                continue
            n = r["checkpoints"]
            lines.append(f"| {s} | {ms(r['raw_touched'] / n)} | {ms(r['standalone'] / n)} | **{r['standalone'] / r['raw_touched']:.2f}x** "
                         f"| {ms(r['read'])} | {ms(r['read_with_tensor_hashes'] - r['read'])} | {ms(r['observe'])} "
                         f"| **{100 * r['added']:.1f}%** |")  # fmt: skip
            c = r["clean"]
            lines += ["", f"A sweep of weight_norms over {ARGS.sweep_length} checkpoints: {ms(r['sweep_plain'])} per checkpoint "
                      f"without the audit, {ms(r['sweep_audited'])} with it (**{r['sweep_audited'] / r['sweep_plain']:.2f}x**; "
                      "the reads run in the background, overlapped with the analyses).", ""]  # fmt: skip
            lines += [f"False positives on {c['suites']} clean trained mini suites: {c['flagged']} of {c['scored']} scored "
                      f"checkpoints flagged; the largest |robust z| a clean checkpoint reached was {c['largest_z']:.1f} "
                      f"(threshold {c['z_threshold']:g}) and the largest jump {c['largest_jump']:.2f} in log units "
                      f"(threshold {c['min_jump']:.2f}, a factor of 2)."]  # fmt: skip
        lines.append("")
    if any("memory" in results[s] for s in sizes):
        lines += table_head("Memory over a sweep of the weight analyses", [
            "shape", "model dtype", "checkpoint in memory (fp32)", "RSS before", "peak RSS", "(peak - before) / checkpoint",
            "peak RSS less file-backed pages", "(that - the same before) / checkpoint",
            "peak, first half / second half of the sweep"])  # fmt: skip
        for s in sizes:
            for r in (v for k, v in results[s].items() if k == "memory" or k.startswith("memory_")):
                mb = 1e6
                lines.append(f"| {s} | {r.get('dtype', 'float32')} | {r['model_bytes'] / mb:.0f} MB | {r['baseline'] / mb:.0f} MB | {r['peak'] / mb:.0f} MB "
                             f"| {(r['peak'] - r['baseline']) / r['model_bytes']:.2f} | {r['peak_private'] / mb:.0f} MB "
                             f"| {(r['peak_private'] - r['baseline_private']) / r['model_bytes']:.2f} "
                             f"| {r['peak_first_half'] / mb:.0f} MB / {r['peak_second_half'] / mb:.0f} MB |")  # fmt: skip
        lines.append("")
    if "events" in results:
        r = results["events"]
        lines += table_head("Events over a planted demo-sized store", [
            "scalar rows", "series", "events() in all", "of which reading the store", "change points: naive Pelt loop",
            "change points: ours", "naive / ours", "same change points", "planted events ranked 1 and 2"])  # fmt: skip
        lines.append(f"| {r['rows']:,} | {r['series']:,} | **{ms(r['total'])}** ({r['rows'] / r['total']:,.0f} rows/s) "
                     f"| {ms(r['read'])} | {ms(r['naive'])} | {ms(r['ours'])} | {r['naive'] / r['ours']:.0f}x "
                     f"| {r['same']} | {r['planted_first']} |")  # fmt: skip
        lines.append("")
        lines += table_head("Trajectory models of every series of the same store (held-out validation, four families)", [
            "series", "`trajectories(store)`", f"naive: curve_fit per series and family (timed on {r['naive_fit_sample']} series, scaled)",
            "naive / ours"])  # fmt: skip
        lines.append(f"| {r['fitted_series']:,} | **{ms(r['fit'])}** | {ms(r['naive_fit'])} | {r['naive_fit'] / r['fit']:.0f}x |")
        lines.append("")
    if "ray" in results:
        r = results["ray"]
        lines += table_head("Sweeps on Ray: the embedded mini suite, every analysis", [
            "checkpoints", "local sweep", f"Ray sweep ({r['workers']} workers x 1 thread)", "Ray / local",
            "Ray start-up (once per cluster)", "same rows", "failed on Ray"])  # fmt: skip
        lines.append(f"| {r['checkpoints']} | {r['local']:.1f} s | {r['ray']:.1f} s | **{r['ray'] / r['local']:.2f}x** "
                     f"| {r['ray_start']:.1f} s | {r['same_rows']} | {r['ray_failed']} |")  # fmt: skip
        lines.append("")
    if "report" in results:
        r = results["report"]
        lines += table_head(f"Report of a full-size store ({r['steps']} checkpoints x {r['layers']} layers x {r['heads']} heads, "
                            "every analysis)", [
            "stored (Parquet)", "scalar rows / array values", "`build_report`", "naive: the old read of everything alone",
            "naive read / our whole build", "HTML", "Chromium opens it (less an empty page)", "plots drawn at open",
            "every plot drawn at load (#draw-all) / opens", "load average"])  # fmt: skip
        load = f"{r['load'] - r['empty']:.1f} s" if "load" in r else "no chromium"
        every = (f"{r['load_all'] - r['empty']:.1f} s ({r['drawn_all']} plots): {(r['load_all'] - r['empty']) / (r['load'] - r['empty']):.1f}x"
                 if "load_all" in r else "")  # fmt: skip
        lines.append(f"| {r['stored_bytes'] / 1e9:.2f} GB | {r['scalar_rows']:,} / {r['array_values']:,} | **{r['ours']:.1f} s** "
                     f"({r.get('ours_cpu', float('nan')):.0f} s CPU) | {r['naive_read']:.1f} s | {r['naive_read'] / r['ours']:.2f}x "
                     f"| **{r['html_bytes'] / 1e6:.1f} MB** | **{load}** | {r.get('drawn', 0)} of {r.get('plots', 0)} | {every} "
                     f"| {r['load_avg']:.1f} |")  # fmt: skip
        lines.append("")
    if "startup" in results:
        startup = results["startup"]
        naive = startup["python -c 'import transformer_lens'"]
        lines += table_head(f"Start-up: commands that build no model (fresh interpreter, best of {ARGS.startup_repeats})",
                            ["command", "time", "`import transformer_lens` / this"])  # fmt: skip
        lines += [f"| `{label}` | {ms(seconds)} | {naive / seconds:.0f}x |" for label, seconds in startup.items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if ARGS.memory_child:
        memory_child(ARGS.memory_child)
        return
    results = {}
    if "startup" in ARGS.parts:
        print("startup ...", file=sys.stderr, flush=True)
        results["startup"] = bench_startup()
    if "events" in ARGS.parts:
        print("events ...", file=sys.stderr, flush=True)
        results["events"] = bench_events()
    if "report" in ARGS.parts:
        print("report ...", file=sys.stderr, flush=True)
        results["report"] = bench_report()
    if "ray" in ARGS.parts:
        print("ray ...", file=sys.stderr, flush=True)
        results["ray"] = bench_ray()
    if "families" in ARGS.parts:
        print("families ...", file=sys.stderr, flush=True)
        results["families"] = bench_families()
    sized_parts = set(ARGS.parts) - {"startup", "events", "ray", "report", "families"}
    for size in ARGS.sizes if sized_parts else []:
        print(f"[{size}] writing suites in {WORK} ...", file=sys.stderr, flush=True)
        suite = build_suites(size)
        results[size] = {"stored_bytes": suite["stored_bytes"], "n_params": suite["n_params"]}
        for part, run in (("load", bench_load), ("analyses", bench_analyses), ("passes", bench_passes), ("sweep", bench_sweep),
                          ("audit", bench_audit)):  # fmt: skip
            if part in ARGS.parts and (part not in ("sweep", "audit") or size == ARGS.sizes[0]):
                print(f"[{size}] {part} ...", file=sys.stderr, flush=True)
                results[size][part] = run(suite)
        if "memory" in ARGS.parts:
            print(f"[{size}] memory ...", file=sys.stderr, flush=True)
            for dtype in ARGS.memory_dtypes.split(","):
                results[size]["memory" if dtype == "float32" else f"memory_{dtype}"] = bench_memory(size, dtype)
    text = report(results)
    print(text)
    if ARGS.markdown:
        ARGS.markdown.write_text(text + "\n")
    (WORK / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()

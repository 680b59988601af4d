import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file

import pythia_dynamics.sweeps as sweep_module
from pythia_dynamics.analyses import UnknownAnalysisError
from pythia_dynamics.analyses.registry import _REGISTRY, register
from pythia_dynamics.evalbatch import EvalBatch
from pythia_dynamics.records import RecordBuilder
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep

SCALAR_COLUMNS = ["model", "step", "analysis", "component", "layer", "head", "stat", "value"]


@pytest.fixture
def probe_analyses():
    """Two forward analyses and one backward analysis that count their calls; removed afterwards."""
    calls = {"forward_a": 0, "forward_b": 0, "backward": 0}

    def make(name, needs):
        class Probe:
            hooks = ["blocks.0.hook_resid_post"]

            def __init__(self, model):
                calls[name] += 1
                self.chunks = 0

            def update(self, chunk):
                assert chunk.activations["blocks.0.hook_resid_post"].shape[0] == chunk.tokens.shape[0]
                self.chunks += 1

            def finish(self, totals):
                records = RecordBuilder()
                records.scalar("model", "loss", totals.loss)
                records.scalar("model", "chunks", self.chunks)
                if needs == "backward":
                    records.scalar("model", "grad_norm", torch.sqrt(sum((g**2).sum() for g in totals.grads.values())))
                return records.build()

        register(f"probe_{name}", needs=needs)(Probe)

    make("forward_a", "forward")
    make("forward_b", "forward")
    make("backward", "backward")
    yield calls
    for name in calls:
        _REGISTRY.pop(f"probe_{name}", None)


def test_sweep_writes_the_documented_tables(tiny_suite, tmp_path, backend):
    summary = sweep(tiny_suite, tmp_path / "store", analyses="weight_norms,eval_loss", backend=backend, progress=False)
    assert summary.failed == [] and summary.done == [0, 1, 2, 4, 8, 10, 20, 30, 40]
    assert list(summary.step_seconds) == summary.done and 0 < sum(summary.step_seconds.values()) <= summary.seconds
    assert "s each (median after the first)" in str(summary)
    scalars = Store(tmp_path / "store").scalars()
    assert list(scalars.columns) == SCALAR_COLUMNS
    assert set(scalars["analysis"]) == {"weight_norms", "eval_loss", "audit"}  # and the integrity audit's rows
    assert set(scalars["model"]) == {"tiny-test"}
    # Norms equal a direct numpy computation on the checkpoint file (W_out is dense_4h_to_h, transposed).
    stored = load_file(tiny_suite / "step20" / "model.safetensors")
    w_out = stored["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"].astype(np.float64)
    row = scalars.query("step == 20 and component == 'W_out' and layer == 1 and stat == 'frobenius_norm'")
    assert row["value"].item() == pytest.approx(np.linalg.norm(w_out), rel=1e-6)
    w_e = stored["gpt_neox.embed_in.weight"].astype(np.float64)
    row = scalars.query("step == 20 and component == 'W_E' and stat == 'std'")
    assert row["value"].item() == pytest.approx(w_e.std(), rel=1e-6) and row["layer"].isna().all()
    loss = scalars.query("analysis == 'eval_loss'").set_index("step")["value"]
    assert loss[40] < loss[0] - 0.5
    meta = Store(tmp_path / "store").source_meta("tiny-test")
    assert meta["eval_batch"]["origin"]["kind"] == "suite-heldout" and meta["schedule"] == summary.done


def test_rerun_computes_nothing_and_new_analyses_only_themselves(tiny_suite, tmp_path, probe_analyses):
    store = tmp_path / "store"
    sweep(tiny_suite, store, steps="0,40", analyses="probe_forward_a", progress=False)
    assert probe_analyses["forward_a"] == 2
    again = sweep(tiny_suite, store, steps="0,40", analyses="probe_forward_a", progress=False)
    assert again.done == [] and again.skipped == [0, 40] and probe_analyses["forward_a"] == 2
    sweep(tiny_suite, store, steps="0,40", analyses="probe_forward_a,probe_forward_b", progress=False)
    assert probe_analyses == {"forward_a": 2, "forward_b": 2, "backward": 0}


def test_analyses_share_one_forward_and_backward_pass(tiny_suite, tmp_path, probe_analyses, monkeypatch):
    passes_run = []
    real = sweep_module.run_chunked_passes

    def counting(model, tokens, **kwargs):
        passes_run.append(kwargs["backward"])
        return real(model, tokens, **kwargs)

    monkeypatch.setattr(sweep_module, "run_chunked_passes", counting)
    sweep(tiny_suite, tmp_path / "s", steps="first:3", analyses="probe_forward_a,probe_forward_b,probe_backward,weight_norms",
          chunk_size=3, progress=False)  # fmt: skip
    assert passes_run == [True, True, True]
    assert set(Store(tmp_path / "s").scalars(stat="chunks")["value"]) == {3.0}  # 8 sequences in chunks of 3
    passes_run.clear()
    sweep(tiny_suite, tmp_path / "t", steps="first:3", analyses="weight_norms", progress=False)
    assert passes_run == []  # weights-only analyses need no pass at all
    grad_norms = Store(tmp_path / "s").scalars(stat="grad_norm")["value"]
    assert len(grad_norms) == 3 and (grad_norms > 0).all()


def test_unknown_analysis_is_named(tiny_suite, tmp_path):
    with pytest.raises(UnknownAnalysisError, match="Did you mean weight_norms"):
        sweep(tiny_suite, tmp_path / "s", analyses="weight_norm", progress=False)
    assert not (tmp_path / "s").exists() or not Store(tmp_path / "s").models()


def test_missing_or_corrupt_checkpoint_is_reported_and_the_sweep_goes_on(tiny_suite, tmp_path):
    root = shutil.copytree(tiny_suite, tmp_path / "damaged")
    good = (root / "step10" / "model.safetensors").read_bytes()
    (root / "step10" / "model.safetensors").write_bytes(good[: len(good) // 3])
    shutil.rmtree(root / "step20")
    summary = sweep(root, tmp_path / "store", analyses="weight_norms,eval_loss", progress=False)
    assert [(s, what) for s, what, _ in summary.failed] == [(10, "load"), (20, "load")]
    assert summary.done == [0, 1, 2, 4, 8, 30, 40]
    failures = Store(tmp_path / "store").failures()
    assert set(zip(failures["step"], failures["analysis"])) == {(s, a) for s in (10, 20) for a in ("weight_norms", "eval_loss")}
    assert "summary" not in str(summary) and "step 10 [load]" in str(summary)
    (root / "step10" / "model.safetensors").write_bytes(good)
    resumed = sweep(root, tmp_path / "store", analyses="weight_norms,eval_loss", progress=False)
    assert resumed.done == [10] and [s for s, _, _ in resumed.failed] == [20]


def test_a_different_eval_batch_is_refused(tiny_suite, tmp_path):
    sweep(tiny_suite, tmp_path / "s", steps="0", analyses="eval_loss", progress=False)
    other = EvalBatch(torch.zeros(2, 8, dtype=torch.long), {"kind": "token-ids"})
    with pytest.raises(ValueError, match="different evaluation batch"):
        sweep(tiny_suite, tmp_path / "s", steps="40", analyses="eval_loss", eval_batch=other, progress=False)
    assert Store(tmp_path / "s").steps("tiny-test") == [0]


SWEEP_SCRIPT = """
import sys, time
from pythia_dynamics.analyses.registry import register
from pythia_dynamics.records import RecordBuilder
from pythia_dynamics import sweep

@register("slow_probe", needs="weights")
def slow_probe(model, passes=None):
    time.sleep(float(sys.argv[3]))
    records = RecordBuilder()
    records.scalar("W_E", "sum", float(model.W_E.sum()))
    return records.build()

sweep(sys.argv[1], sys.argv[2], analyses=sys.argv[4].split(","), progress=False)
"""


def run_sweep_process(suite, store, delay, analyses="weight_norms,slow_probe,eval_loss"):
    return subprocess.Popen([sys.executable, "-c", SWEEP_SCRIPT, str(suite), str(store), str(delay), analyses])


def sorted_scalars(path) -> pd.DataFrame:
    return Store(path).scalars().sort_values(SCALAR_COLUMNS[:7]).reset_index(drop=True)


def test_a_killed_sweep_resumes_to_identical_results(tiny_suite, tmp_path):
    clean = run_sweep_process(tiny_suite, tmp_path / "clean", 0)
    killed_store = tmp_path / "killed"
    victim = run_sweep_process(tiny_suite, killed_store, 0.4)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        results = list(killed_store.glob("results/*/*/*.scalars.parquet")) if killed_store.exists() else []
        if len(results) >= 4:
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    partial = len(list(killed_store.glob("results/*/*/*.scalars.parquet")))
    assert 4 <= partial < 27, "the kill should land part-way through the sweep"
    assert run_sweep_process(tiny_suite, killed_store, 0).wait() == 0
    assert clean.wait() == 0
    pd.testing.assert_frame_equal(sorted_scalars(killed_store), sorted_scalars(tmp_path / "clean"))
    assert len(sorted_scalars(killed_store).query("analysis == 'slow_probe'")) == 9


def test_two_sweeps_into_one_store_do_not_corrupt_it(tiny_suite, tmp_path):
    store = tmp_path / "shared"
    first = run_sweep_process(tiny_suite, store, 0.05, "weight_norms,slow_probe")
    second = run_sweep_process(tiny_suite, store, 0.05, "slow_probe,eval_loss")
    assert first.wait() == 0 and second.wait() == 0
    assert Store(store).verify() == []
    scalars = Store(store).scalars()
    counts = scalars.groupby("analysis")["step"].nunique().to_dict()
    assert counts == {"weight_norms": 9, "slow_probe": 9, "eval_loss": 9, "audit": 9}
    assert not scalars.duplicated(SCALAR_COLUMNS[:7]).any()


def test_a_failed_shared_pass_keeps_the_weight_results_and_goes_on(tiny_suite, tmp_path):
    class NeedsMissingHook:
        hooks = ["blocks.0.hook_resid_mid"]  # Pythia's parallel blocks have none: the shared pass fails

        def __init__(self, model):
            pass

        def update(self, chunk):
            pass

        def finish(self, totals):
            return RecordBuilder().build()

    register("probe_broken_pass", needs="forward")(NeedsMissingHook)
    try:
        summary = sweep(tiny_suite, tmp_path / "s", steps="0,40", analyses="weight_norms,probe_broken_pass,eval_loss", progress=False)
    finally:
        _REGISTRY.pop("probe_broken_pass", None)
    assert summary.done == [0, 40]
    assert sorted((s, a) for s, a, _ in summary.failed) == [(0, "eval_loss"), (0, "probe_broken_pass"), (40, "eval_loss"), (40, "probe_broken_pass")]
    assert Store(tmp_path / "s").steps("tiny-test", "weight_norms") == [0, 40]


def test_a_bad_chunk_size_is_refused_before_any_work(tiny_suite, tmp_path):
    with pytest.raises(ValueError, match="chunk_size must be a positive number"):
        sweep(tiny_suite, tmp_path / "s", analyses="eval_loss", chunk_size=0, progress=False)
    assert not (tmp_path / "s").exists()


def test_each_checkpoint_is_read_once_even_the_reference_ones(random_suite, tmp_path, monkeypatch):
    from pythia_dynamics.sources import LocalSuite

    reads = []
    original = LocalSuite.read_state_dict
    monkeypatch.setattr(LocalSuite, "read_state_dict", lambda self, step: reads.append(step) or original(self, step))
    with pytest.warns(UserWarning):  # step 1 is identical to step 0
        summary = sweep(random_suite, tmp_path / "store", analyses=["weight_distances", "weight_norms"], progress=False)
    assert not summary.failed
    assert sorted(reads) == [0, 1, 2, 4, 8]


def test_prefetching_does_not_change_results(random_suite, tmp_path):
    tables = []
    for prefetch in (True, False):
        with pytest.warns(UserWarning):  # step 1 is identical to step 0
            sweep(random_suite, tmp_path / str(prefetch), analyses=["weight_norms", "spectra"], progress=False,
                  prefetch=prefetch)  # fmt: skip
        scalars = Store(tmp_path / str(prefetch)).scalars()
        tables.append(scalars.sort_values(list(scalars.columns[:-1])).reset_index(drop=True))
    assert len(tables[0]) > 0
    pd.testing.assert_frame_equal(tables[0], tables[1])


@pytest.mark.parametrize("processed", [False, True])
def test_a_replaced_model_is_freed_and_a_refilled_one_costs_no_full_collection(
    random_suite, tmp_path, monkeypatch, processed
):
    # A full gc walks every live object (a quarter of a second with pythia-70m loaded): only worth it
    # when a model was replaced, as processed bridges are at every checkpoint, and then it must free it.
    import gc
    import weakref

    from pythia_dynamics.loading import CheckpointLoader

    models, full_collections, earlier_alive = [], [], []
    install = CheckpointLoader.install

    def remembering_install(self, staged):
        checkpoint = install(self, staged)
        earlier_alive.extend(ref() is not None and ref() is not checkpoint.model for ref in models)
        models.append(weakref.ref(checkpoint.model))
        return checkpoint

    free = sweep_module._free_memory
    monkeypatch.setattr(CheckpointLoader, "install", remembering_install)
    monkeypatch.setattr(sweep_module, "_free_memory", lambda device, full: full_collections.append(full) or free(device, full))
    gc.disable()  # only the sweep's own collections may free a model caught in reference cycles
    try:
        sweep(random_suite, tmp_path / "store", steps=[0, 2, 4], analyses=["weight_norms"], backend="bridge",
              processed=processed, progress=False)  # fmt: skip
        alive = [ref() is not None for ref in models]
    finally:
        gc.enable()
    assert len(models) == 3
    if processed:  # a new bridge per checkpoint: each replaced one is gone, even while the next is analysed
        assert full_collections == [True, True, True] and alive[:2] == [False, False] and not any(earlier_alive)
    else:  # one bridge, refilled: one full collection after the first checkpoint, young ones after
        assert full_collections == [True, False, False]

"""The hypothesis lab (docs/hypotheses.md): trainer factors do what they say, every preset runs end to end on tiny
suites, and every verdict comes from the store: planted stores with a known difference give the expected verdict,
the opposite plant the opposite one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pythia_dynamics.lab import PRESETS, run_experiment
from pythia_dynamics.lab.measures import LN_GAINS, MATRICES, measure
from pythia_dynamics.lab.runner import measure_store, read_experiment
from pythia_dynamics.lab.verdicts import Comparison, Threshold, effects, judge, judge_threshold
from pythia_dynamics.store import Store
from pythia_dynamics.train.config import LAB_FIELDS, LATER_FIELDS, SuiteConfig

SEEDS = 2


# ---------------------------------------------------------------- trainer factors


def test_defaults_keep_the_config_and_its_cache_key():
    from pythia_dynamics.train.suite import config_hash

    default = SuiteConfig()
    assert not set(LAB_FIELDS) & set(default.to_dict())  # so the default suite's hash and folder are unchanged
    repeats = SuiteConfig(repeat_fraction=0.25)
    assert set(LATER_FIELDS) <= set(repeats.to_dict()) and not set(LAB_FIELDS) & set(repeats.to_dict())
    changed = SuiteConfig(optimizer="sgd")
    assert set(LAB_FIELDS) <= set(changed.to_dict())
    assert SuiteConfig.from_dict(json.loads(json.dumps(changed.to_dict()))) == changed
    assert config_hash(changed) != config_hash(default)
    with pytest.raises(ValueError, match="token_stream"):
        SuiteConfig(token_stream="zipff")
    with pytest.raises(ValueError, match="init_from"):
        SuiteConfig(init="final-permuted")


def test_zipf_stream_follows_the_law():
    from pythia_dynamics.train.loop import stream_probabilities, synthetic_tokens

    vocab, eos = 300, 299
    # a planted corpus whose frequency ranking is known: id i appears (300 - i) times, EOS a lot
    corpus = np.concatenate([np.full(300 - i, i) for i in range(vocab - 1)] + [np.full(5000, eos)]).astype(np.int64)
    config = SuiteConfig(token_stream="zipf", zipf_exponent=1.2, seed=3)
    p = stream_probabilities(config, corpus, vocab, eos)
    assert p[eos] == 0 and p.sum() == pytest.approx(1.0)
    tokens = synthetic_tokens(config, corpus, vocab, eos, 400_000)
    counts = np.bincount(tokens, minlength=vocab)
    assert counts[eos] == 0
    ranks = np.arange(1, 21)  # ids 0..19 are ranks 1..20; the log-log slope of their counts is -exponent
    slope = np.polyfit(np.log(ranks), np.log(counts[:20]), 1)[0]
    assert slope == pytest.approx(-1.2, abs=0.05)
    assert counts[:20] / len(tokens) == pytest.approx(p[:20], rel=0.05)
    uniform = synthetic_tokens(config.replace(token_stream="uniform"), corpus, vocab, eos, 400_000)
    share = np.bincount(uniform, minlength=vocab)[:eos] / len(uniform)
    assert share == pytest.approx(np.full(eos, 1 / eos), rel=0.15) and not (uniform == eos).any()


def test_sgd_is_heavy_ball_sgd_with_decoupled_decay():
    import torch

    from pythia_dynamics.train.recipe import DecoupledSGD, build_optimizer, lr_at

    config = SuiteConfig(optimizer="sgd", sgd_peak_lr=0.1, sgd_momentum=0.9, weight_decay=0.5, total_steps=300)
    assert lr_at(config.warmup_steps, config) == pytest.approx(0.1)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, DecoupledSGD) and isinstance(optimizer, torch.optim.SGD)
    w0 = model.weight.detach().clone()
    velocity, w = torch.zeros_like(w0), w0.clone()
    for g in (torch.ones_like(w0), 2 * torch.ones_like(w0)):
        for group in optimizer.param_groups:
            group["lr"] = 0.1
        model.weight.grad, model.bias.grad = g.clone(), torch.zeros(2)
        optimizer.step()
        w = w * (1 - 0.1 * 0.5)  # decoupled decay first, as AdamW
        velocity = 0.9 * velocity + g if velocity.abs().sum() else g  # torch's heavy ball: first step v = g
        w = w - 0.1 * velocity
    torch.testing.assert_close(model.weight.detach(), w)
    assert config.effective_weight_decay == 0.5


def test_decay_vectors_and_frozen_gains_reach_the_optimizer():
    import torch

    from pythia_dynamics.train.recipe import build_model, build_optimizer, layer_norm_gains

    config = SuiteConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=300, seq_len=8)
    model = build_model(config, 300, 299)
    default = build_optimizer(model, config)
    assert all(p.ndim >= 2 for p in default.param_groups[0]["params"])
    assert any(p.ndim < 2 for p in default.param_groups[1]["params"])
    decayed = build_optimizer(model, config.replace(decay_vectors=True))
    assert len(decayed.param_groups[1]["params"]) == 0
    frozen = build_model(config, 300, 299)
    optimizer = build_optimizer(frozen, config.replace(train_norm_gains=False))
    gains = {id(g) for g in layer_norm_gains(frozen)}
    assert len(gains) == 3 and not gains & {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert isinstance(optimizer, torch.optim.AdamW)


# ---------------------------------------------------------------- every preset end to end (tiny)


@pytest.fixture(scope="module")
def lab_runs(tmp_path_factory):
    """Every preset run once with --tiny and 2 seeds; heavy-tails also writes its report. One torch thread: these
    models are too small to gain from two, and a second thread only competes with other work on a shared CPU."""
    import torch

    out, threads = tmp_path_factory.mktemp("lab"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, {name: run_experiment(name, seeds=SEEDS, tiny=True, out=out, report=name == "heavy-tails",
                                          progress=False) for name in PRESETS}  # fmt: skip
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_end_to_end(lab_runs, name):
    out, results = lab_runs
    result = results[name]
    preset = PRESETS[name]
    store = Store(result.folder / "store")
    assert len(store.models()) == len(preset.levels) * SEEDS
    assert set(store.analyses()) == set(preset.analyses)
    assert len(result.measurements) == len(preset.levels) * SEEDS * len(preset.measures)
    assert len(result.verdicts) == len(preset.comparisons) + len(preset.thresholds) + len(preset.levels) * len(preset.robust)
    assert set(result.verdicts["verdict"]) <= {"supported", "contradicted", "no effect beyond seed noise", "undecided"}
    # the verdicts come from the store: reading the folder back recomputes the same table
    again = read_experiment(result.folder)
    pd.testing.assert_frame_equal(again.verdicts, result.verdicts)
    text = (result.folder / "verdicts.md").read_text()
    assert "TINY smoke check, not an answer" in text and preset.question in text
    assert (result.folder / "report.html").exists() == (name == "heavy-tails")


@pytest.mark.slow
def test_demo_recipe_measures_every_level(lab_runs):
    out, results = lab_runs
    table = results["demo-recipe"].measurements.set_index(["level", "seed", "metric"])["value"]
    for level in PRESETS["demo-recipe"].levels:
        config = level.config(SuiteConfig(n_layers=2), "demo-recipe", 0)  # LAB_TINY has 2 layers: no middle block
        for seed in range(SEEDS):
            assert 0 <= table[level.name, seed, "unembed_norm_decline"] < 1
            depth, ratio = table[level.name, seed, "outlier_peak_depth"], table[level.name, seed, "outlier_mid_ratio"]
            if config.n_layers >= 3:
                assert depth in {b / (config.n_layers - 1) for b in range(config.n_layers)} and ratio > 0
                assert (0 < depth < 1) == (ratio > 1)
            else:
                assert np.isnan(depth) and np.isnan(ratio)


@pytest.mark.slow
def test_early_event_presets_read_their_new_events(lab_runs):
    """warmup-induction trains the induction recipe (not LAB_TINY) with the level's warm-up, and reports per seed
    whether a head formed, its step NaN exactly when none did; warmup-events' SVD settling is a stored step."""
    from pythia_dynamics.train.suite import TINY_INDUCTION_CONFIG

    out, results = lab_runs
    result = results["warmup-induction"]
    for level, warmup in (("warmup-1%", TINY_INDUCTION_CONFIG.warmup_fraction), ("warmup-20%", 0.2)):
        suite = json.loads((result.folder / "suites" / f"lab-induction-tiny-warmup-induction-{level}-s0" / "suite.json").read_text())
        config = SuiteConfig.from_dict(suite["config"])
        assert config == TINY_INDUCTION_CONFIG.replace(name=config.name, seed=0, warmup_fraction=warmup)
    table = result.measurements.pivot_table(index=["level", "seed"], columns="metric", values="value", dropna=False)
    assert set(table["induction_formed"]) <= {0.0, 1.0} and len(table) == 2 * SEEDS
    assert (table["induction_formation_step"].isna() == (table["induction_formed"] == 0)).all()
    events = results["warmup-events"]
    settle = events.measurements[events.measurements["metric"] == "svd_settle_step"]["value"]
    steps = set(Store(events.folder / "store").steps(events.measurements["model"].iloc[0]))
    assert len(settle) == 2 * SEEDS and set(settle) <= steps


@pytest.mark.slow
def test_fixed_gains_stay_one_and_trained_gains_move(lab_runs):
    from safetensors.torch import load_file

    out, results = lab_runs
    suites = results["outliers-adam"].folder / "suites"
    final = max(json.loads((suites / "lab-tiny-outliers-adam-adamw-s0" / "suite.json").read_text())["checkpoint_steps"])

    def gains(level):
        weights = load_file(suites / f"lab-tiny-outliers-adam-{level}-s0" / f"step{final}" / "model.safetensors")
        return [w for name, w in weights.items() if "layernorm" in name.replace("_", "") and name.endswith("weight")]

    assert len(gains("adamw-fixed-ln")) == 5 and all((g == 1).all() for g in gains("adamw-fixed-ln"))
    assert not all((g == 1).all() for g in gains("adamw"))


@pytest.mark.slow
def test_final_inits_come_from_the_source_checkpoint(lab_runs):
    from safetensors.torch import load_file

    out, results = lab_runs
    suites = results["reinit-from-end"].folder / "suites"
    final = max(json.loads((suites / "lab-tiny-reinit-from-end-standard-s0" / "suite.json").read_text())["checkpoint_steps"])
    source = load_file(suites / "lab-tiny-reinit-from-end-standard-s0" / f"step{final}" / "model.safetensors")
    for seed in range(SEEDS):
        permuted = load_file(suites / f"lab-tiny-reinit-from-end-final-permuted-s{seed}" / "step0" / "model.safetensors")
        fitted = load_file(suites / f"lab-tiny-reinit-from-end-final-fitted-s{seed}" / "step0" / "model.safetensors")
        matrices = [name for name, w in source.items() if w.ndim >= 2]
        assert matrices
        for name in matrices:
            a, b = source[name].flatten().sort().values, permuted[name].flatten().sort().values
            assert np.array_equal(a.numpy(), b.numpy())  # the same multiset of entries
            assert not np.array_equal(source[name].numpy(), permuted[name].numpy())  # in another order
            assert fitted[name].std().item() == pytest.approx(source[name].std().item(), rel=0.25)


@pytest.mark.slow
def test_cli_experiment_lists_and_reruns_from_the_trained_suites(lab_runs, capsys):
    from pythia_dynamics.cli import main

    out, results = lab_runs
    assert main(["experiment", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in PRESETS)
    assert main(["experiment", "norm-decline", "--tiny", "--seeds", str(SEEDS), "--out", str(out), "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "| statement | metric |" in printed and "norm-decline" in printed
    run = json.loads((results["norm-decline"].folder / "run.json").read_text())
    assert run["cold_seconds"] == results["norm-decline"].run["seconds"]  # a rerun keeps the training run's time
    assert main(["experiment"]) == 2 and "name a preset" in capsys.readouterr().err
    assert main(["experiment", "no-such-preset", "--tiny"]) == 2
    assert "Presets:" in capsys.readouterr().err


@pytest.mark.slow
def test_update_docs_writes_measured_runs_only(lab_runs, tmp_path):
    from pythia_dynamics.lab.docs import END, START, update_docs

    out, results = lab_runs
    # a tiny run relabelled as a full one stands in for a full-size run (the doc machinery is what is tested)
    shutil.copytree(results["norm-decline"].folder, tmp_path / "norm-decline")
    run = json.loads((tmp_path / "norm-decline" / "run.json").read_text())
    (tmp_path / "norm-decline" / "run.json").write_text(json.dumps({**run, "tiny": False}))
    doc = tmp_path / "hypotheses.md"
    doc.write_text(f"intro\n{START}\nold text\n{END}\noutro\n")
    update_docs(tmp_path, doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{END}\noutro\n") and "old text" not in text
    assert "### norm-decline (full size; 2 seeds" in text
    assert "### heavy-tails\n\nNot measured at full size" in text
    svg = (tmp_path / "images" / "lab-norm-decline.svg").read_text()
    assert "](images/lab-norm-decline.svg)" in text and svg.startswith("<svg") and svg.count("<circle") == 3 * SEEDS * 3
    assert not (tmp_path / "images" / "lab-heavy-tails.svg").exists()
    with pytest.raises(ValueError, match="marker"):
        update_docs(tmp_path, tmp_path / "norm-decline" / "verdicts.md")


# ---------------------------------------------------------------- verdicts from planted stores

STEPS = [0, 30, 90, 150, 210, 300]  # few: every planted store is written 3 times per comparison
TOTAL = 300
BASE = {"eval_loss_mean": 5.0, "eval_loss_early": 5.0, "eval_loss_final": 5.0, "weight_kurtosis_final": 1.0,
        "student_t_nu_final": 10.0, "massive_ratio_final": 10.0, "outlier_ratio_final": 3.0,
        "outlier_crest_step": 150, "matrix_norm_peak_step": 90, "matrix_norm_decline": 0.2,
        "matrix_norm_growth": 1.6, "ln_gain_growth": 1.5, "unembed_norm_decline": 0.2,
        "outlier_mid_ratio": 0.9}  # fmt: skip


def _rows(component, stat, value, layers=(0, 1)):
    return [{"component": component, "layer": layer, "head": None, "stat": stat, "value": float(value)} for layer in layers]


ALL_ANALYSES = ("eval_loss", "weight_distributions", "massive_activations", "residual_outliers", "weight_norms")


def plant(store: Store, model: str, values: dict, analyses=ALL_ANALYSES) -> None:
    """Write scalars of `analyses` from which each measure of `values` (missing ones: BASE) reads back exactly
    that value."""
    v = {**BASE, **values}
    write = store.write_result

    def write_result(model, step, analysis, table):
        if analysis in analyses:
            write(model, step, analysis, table)

    early = min(STEPS[1:], key=lambda s: abs(s - 0.1 * TOTAL))
    decline = v["matrix_norm_decline"]
    peak = v["matrix_norm_growth"] / (1 - decline)  # M(0) = 1, M(final) = peak * (1 - decline)
    for step in STEPS:
        loss = 8.0 if step == 0 else v["eval_loss_early"] if step == early else v["eval_loss_final"] if step == TOTAL else None
        if loss is None:  # the other steps fill in so that the mean over steps after 0 is eval_loss_mean
            others = [s for s in STEPS[1:] if s not in (early, TOTAL)]
            loss = (v["eval_loss_mean"] * (len(STEPS) - 1) - v["eval_loss_early"] - v["eval_loss_final"]) / len(others)
        write_result(model, step, "eval_loss", pd.DataFrame([{"component": "model", "layer": None, "head": None, "stat": "loss", "value": loss}]))
        dist = []
        for matrix in MATRICES:
            dist += _rows(matrix, "excess_kurtosis", v["weight_kurtosis_final"]) + _rows(matrix, "student_t_nu", v["student_t_nu_final"])
        write_result(model, step, "weight_distributions", pd.DataFrame(dist))
        write_result(model, step, "massive_activations", pd.DataFrame(_rows("hook_resid_post", "top1_ratio", v["massive_ratio_final"])))
        # three blocks, equal but at the crest step, where the ends reach `crest` and the middle block
        # outlier_mid_ratio x crest (above every final value, so the crest step and the ratio read back)
        crest, blocks = 10.0 + v["outlier_ratio_final"], (0, 1, 2)
        ends = crest if step == v["outlier_crest_step"] else v["outlier_ratio_final"]
        middle = v["outlier_mid_ratio"] * crest if step == v["outlier_crest_step"] else v["outlier_ratio_final"]
        outliers = _rows("hook_resid_post", "max_abs", ends, (0, 2)) + _rows("hook_resid_post", "max_abs", middle, (1,))
        outliers += _rows("hook_resid_post", "mean_token_norm", 1.0, blocks)
        write_result(model, step, "residual_outliers", pd.DataFrame(outliers))
        p = v["matrix_norm_peak_step"]
        norm = 1 + (peak - 1) * step / p if step <= p else peak - peak * decline * (step - p) / (TOTAL - p)
        gain = 1 + (v["ln_gain_growth"] - 1) * step / TOTAL
        # W_U rises to 0.2 at step 150 and ends unembed_norm_decline below that; the other matrices make up
        # M(step) = norm (W_U is small enough that they always can)
        u_peak, u_decline = 0.2, v["unembed_norm_decline"]
        u = 0.1 + 0.1 * step / 150 if step <= 150 else u_peak - u_peak * u_decline * (step - 150) / (TOTAL - 150)
        rest = [m for m in MATRICES if m != "W_U"]
        norms = _rows("W_U", "frobenius_norm", u, (None,))
        norms += [r for m in rest for r in _rows(m, "frobenius_norm", np.sqrt((norm**2 - u**2) / (2 * len(rest))))]
        norms += [r for g in LN_GAINS for r in _rows(g, "frobenius_norm", gain)]
        write_result(model, step, "weight_norms", pd.DataFrame(norms))


def test_planted_measures_read_back(tmp_path):
    store = Store.create(tmp_path / "store", fsync=False)
    planted = {"eval_loss_mean": 4.0, "eval_loss_early": 6.0, "eval_loss_final": 3.5, "weight_kurtosis_final": 2.5,
               "student_t_nu_final": 4.0, "massive_ratio_final": 50.0, "outlier_ratio_final": 7.0,
               "outlier_crest_step": 90, "matrix_norm_peak_step": 150, "matrix_norm_decline": 0.3,
               "matrix_norm_growth": 1.4, "ln_gain_growth": 2.0, "unembed_norm_decline": 0.35,
               "outlier_mid_ratio": 1.3}  # fmt: skip
    plant(store, "m", planted)
    for metric, value in planted.items():
        assert measure(store, "m", metric, TOTAL) == pytest.approx(value), metric
    assert np.isnan(measure(store, "nobody", "eval_loss_final", TOTAL))


def test_unembed_norm_decline_reads_w_u_only(tmp_path):
    """A planted W_U norm series rising 10 -> 40 then falling to 30 (decline 0.25), beside matrices whose norms
    never fall: the measure reads W_U's decline, not the total's."""
    store = Store.create(tmp_path / "store", fsync=False)
    steps, unembed = [0, 10, 20, 40, 80, 120], [10.0, 25.0, 40.0, 36.0, 32.0, 30.0]
    for step, u in zip(steps, unembed):
        rows = _rows("W_U", "frobenius_norm", u, (None,)) + _rows("W_E", "frobenius_norm", 5.0 + step)
        rows += _rows("W_in", "frobenius_norm", 100.0 + step, (0, 1, 2))
        store.write_result("m", step, "weight_norms", pd.DataFrame(rows))
    assert measure(store, "m", "unembed_norm_decline", 120) == pytest.approx(0.25)
    assert measure(store, "m", "matrix_norm_decline", 120) == 0.0  # the total never falls
    assert np.isnan(measure(store, "nobody", "unembed_norm_decline", 120))


def _plant_block_outliers(store: Store, model: str, crests: list[float], crest_steps: list[int]) -> None:
    """hook_resid_post max_abs of block b: 1 at step 0, `crests[b]` at step `crest_steps[b]`, 0.8 x that at the
    other steps but the last, where it is 1 + 0.3 b (growing with depth, so that a reading of the final step alone
    would find the last block); another hook (hook_resid_pre) carries a decoy, largest in the last block."""
    steps = sorted({0, *crest_steps, 200})
    for step in steps:
        rows = []
        for block, (crest, at) in enumerate(zip(crests, crest_steps)):
            value = crest if step == at else 1.0 if step == 0 else 1.0 + 0.3 * block if step == 200 else 0.8 * crest
            rows += _rows("hook_resid_post", "max_abs", value, (block,))
            rows += _rows("hook_resid_pre", "max_abs", 100.0 * (block + 1), (block,))
        store.write_result(model, step, "residual_outliers", pd.DataFrame(rows))


def test_outlier_depth_measures_find_the_planted_peak_block(tmp_path):
    store = Store.create(tmp_path / "store", fsync=False)
    # six blocks, the largest-ever outlier in block 2 (crest 9 at step 40); the last block crests late (step 160)
    # and is the largest at the final step, which a final-step reading would pick
    _plant_block_outliers(store, "middle", [2.0, 5.0, 9.0, 7.0, 4.0, 3.0], [20, 40, 40, 60, 100, 160])
    assert measure(store, "middle", "outlier_peak_depth", 200) == pytest.approx(2 / 5)
    assert measure(store, "middle", "outlier_mid_ratio", 200) == pytest.approx(9.0 / 3.0)
    # growing with depth, as the demo suite: the last block holds it
    _plant_block_outliers(store, "monotone", [1.0, 2.0, 3.0, 4.0], [40, 40, 40, 40])
    assert measure(store, "monotone", "outlier_peak_depth", 200) == 1.0
    assert measure(store, "monotone", "outlier_mid_ratio", 200) == pytest.approx(3.0 / 4.0)
    # the first block holding it is not "in the middle" either
    _plant_block_outliers(store, "first", [6.0, 2.0, 5.0], [40, 40, 40])
    assert measure(store, "first", "outlier_peak_depth", 200) == 0.0
    assert measure(store, "first", "outlier_mid_ratio", 200) == pytest.approx(2.0 / 6.0)  # middle = block 1 only
    # two blocks have no middle
    _plant_block_outliers(store, "shallow", [1.0, 2.0], [40, 40])
    assert np.isnan(measure(store, "shallow", "outlier_peak_depth", 200))
    assert np.isnan(measure(store, "shallow", "outlier_mid_ratio", 200))


def test_event_steps_read_the_planted_event(tmp_path):
    from pythia_dynamics.timeline.planted import PlantedEvent, write_planted_store

    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1500, 2000, 2500, 3000]
    truth = write_planted_store(tmp_path / "store", steps, [PlantedEvent(index=6, share=0.8)], n_series=80, noise=0.05)
    found = measure(Store(tmp_path / "store"), truth["model"], "first_event_step", 3000)
    assert found in (steps[6], steps[7])


def _planted_verdict(tmp_path, preset, comparison, shift):
    """Plant `shift` between the comparison's level and the other levels (small seed noise); only the analysis its
    metric reads is written, which keeps the test quick."""
    store = Store.create(tmp_path / f"{preset.name}-{comparison.metric}-{shift}", fsync=False)
    rng = np.random.default_rng(0)
    models = []
    for level in preset.levels:
        for seed in range(3):
            base = BASE[comparison.metric]
            value = base + (shift if level.name == comparison.level else 0.0)
            if not comparison.metric.endswith("_step"):
                value += rng.normal(0, 0.01 * abs(base))  # seed noise, far below the planted shift
            model = f"{preset.name}-{level.name}-s{seed}"
            plant(store, model, {comparison.metric: value}, [METRIC_ANALYSIS[comparison.metric]])
            models.append((level.name, seed, model))
    measurements = measure_store(preset, store.path, models, TOTAL)
    return preset.verdicts(measurements, TOTAL).set_index(["statement"]).loc[comparison.statement, "verdict"]


METRIC_ANALYSIS = {"eval_loss_mean": "eval_loss", "eval_loss_early": "eval_loss", "eval_loss_final": "eval_loss",
                   "weight_kurtosis_final": "weight_distributions", "student_t_nu_final": "weight_distributions",
                   "massive_ratio_final": "massive_activations", "outlier_ratio_final": "residual_outliers",
                   "outlier_crest_step": "residual_outliers", "matrix_norm_peak_step": "weight_norms",
                   "matrix_norm_decline": "weight_norms", "matrix_norm_growth": "weight_norms",
                   "ln_gain_growth": "weight_norms", "unembed_norm_decline": "weight_norms",
                   "outlier_mid_ratio": "residual_outliers"}  # fmt: skip
PLANTABLE = [(p, c) for p in PRESETS.values() for c in p.comparisons if c.metric in BASE]
SHIFTS = {"_step": 60, "decline": 0.2, "growth": 0.5}


@pytest.mark.parametrize(("preset", "comparison"), PLANTABLE, ids=[f"{p.name}:{c.metric}:{c.level}" for p, c in PLANTABLE])
def test_planted_difference_gives_the_verdict(tmp_path, preset, comparison):
    size = next((s for suffix, s in SHIFTS.items() if comparison.metric.endswith(suffix)), 0.5 * BASE[comparison.metric])
    sign = 1 if comparison.direction == "greater" else -1
    assert _planted_verdict(tmp_path, preset, comparison, sign * size) == "supported"
    assert _planted_verdict(tmp_path, preset, comparison, -sign * size) == "contradicted"
    assert _planted_verdict(tmp_path, preset, comparison, 0.0) == "no effect beyond seed noise"


# ---------------------------------------------------------------- the other early events, planted

SVD_K = 10


def _svd_ids(agreement: float, flipped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top and bottom ids of one direction whose `matched` agreement with the final one (top 0..9, bottom 50..59) is
    `agreement`: that share of the final tokens kept, the rest ids no final direction holds. `flipped`: the sign
    flipped (top and bottom swap), which `matched` forgives and `in_final` does not."""
    kept = round(agreement * SVD_K)
    top = np.array([p if p < kept else 1000 + p for p in range(SVD_K)])[None, :]
    bottom = top + 50 if kept else top + 2000
    return (bottom, top) if flipped else (top, bottom)


def plant_svd(store: Store, model: str, series: dict[int, dict[str, float | str]]) -> None:
    """svd_directions ids per step: component -> agreement (or "flipped": agreement 1 with the sign flipped), for
    W_out (layer 0) and OV (layer 0, heads 0 and 1 alike)."""
    from pythia_dynamics.store import array_record

    no_scalars = pd.DataFrame(columns=["component", "layer", "head", "stat", "value"])
    for step, by_component in series.items():
        rows = []
        for component, agreement in by_component.items():
            top, bottom = _svd_ids(1.0, True) if agreement == "flipped" else _svd_ids(agreement)
            for head in ((0, 1) if component == "OV" else (None,)):
                rows += [array_record(component, 0, head, "top_token_ids", top),
                         array_record(component, 0, head, "bottom_token_ids", bottom)]  # fmt: skip
        store.write_result(model, step, "svd_directions", no_scalars, rows)


# W_out and OV agreement per step; their mean is 0, 0.6, 0.45, 0.5, 0.85, 1: below 0.5 last at step 200, so the
# directions settle at 300. W_out alone would settle at 100 (the mean over components matters); the flipped sign at
# step 400 counts as agreeing (with in_final, 0.35 there, the settle step would be 500).
SVD_SERIES = {0: {"W_out": 0.0, "OV": 0.0}, 100: {"W_out": 0.6, "OV": 0.6}, 200: {"W_out": 0.8, "OV": 0.1},
              300: {"W_out": 0.5, "OV": 0.5}, 400: {"W_out": "flipped", "OV": 0.7}, 500: {"W_out": 1.0, "OV": 1.0}}  # fmt: skip


def test_svd_settle_step_reads_the_planted_agreement(tmp_path):
    from pythia_dynamics.svd_agreement import svd_agreement

    store = Store.create(tmp_path / "store", fsync=False)
    plant_svd(store, "m", SVD_SERIES)
    table = svd_agreement(store, model="m", level="model").groupby("step")["matched"].mean()
    assert table.to_dict() == pytest.approx({0: 0.0, 100: 0.6, 200: 0.45, 300: 0.5, 400: 0.85, 500: 1.0})
    assert measure(store, "m", "svd_settle_step", 500) == 300
    plant_svd(store, "early", {step: {"W_out": 1.0, "OV": 1.0} for step in (0, 100, 500)})
    assert measure(store, "early", "svd_settle_step", 500) == 0  # agreeing from the first stored step
    plant_svd(store, "late", {step: {"W_out": 0.2, "OV": 0.2} for step in (0, 100)} | {500: {"W_out": 1.0, "OV": 1.0}})
    assert measure(store, "late", "svd_settle_step", 500) == 500  # only the final checkpoint agrees with itself
    assert np.isnan(measure(store, "nobody", "svd_settle_step", 500))


INDUCTION_STEPS = list(range(0, 3001, 100))


def plant_induction(store: Store, model: str, center: float | None, final: float = 0.65) -> None:
    """head_scores induction_score of 2 layers x 4 heads: head (1, 2) a sigmoid from 0.05 to `final` centred on step
    `center` (None: it stays at 0.05); a decoy head (1, 0) that rises early (by step 300) to a smaller 0.2; the
    others flat at 0.02."""
    for step in INDUCTION_STEPS:
        rows = []
        for layer in (0, 1):
            for head in range(4):
                value = 0.02
                if (layer, head) == (1, 2):
                    value = 0.05 if center is None else 0.05 + (final - 0.05) / (1 + np.exp(-(step - center) / 100))
                elif (layer, head) == (1, 0):
                    value = 0.2 if step >= 300 else 0.1
                rows.append({"component": "attn", "layer": layer, "head": head, "stat": "induction_score", "value": value})
        rows.append({"component": "attn", "layer": 1, "head": 2, "stat": "prev_token_score", "value": 0.9})  # not read
        store.write_result(model, step, "head_scores", pd.DataFrame(rows))


def test_induction_formation_reads_the_planted_head(tmp_path):
    store = Store.create(tmp_path / "store", fsync=False)
    plant_induction(store, "formed", center=1250)  # half-way (0.35) is first reached at step 1300
    assert measure(store, "formed", "induction_formation_step", 3000) == 1300
    assert measure(store, "formed", "induction_formed", 3000) == 1
    plant_induction(store, "later", center=2050)
    assert measure(store, "later", "induction_formation_step", 3000) == 2100
    plant_induction(store, "weak", center=1250, final=0.25)  # the best head ends below 0.3: no head formed
    assert np.isnan(measure(store, "weak", "induction_formation_step", 3000))
    assert measure(store, "weak", "induction_formed", 3000) == 0
    plant_induction(store, "none", center=None)
    assert np.isnan(measure(store, "none", "induction_formation_step", 3000))
    assert measure(store, "none", "induction_formed", 3000) == 0
    assert np.isnan(measure(store, "nobody", "induction_formed", 3000))


@pytest.mark.parametrize("preset_name", ["warmup-events", "warmup-induction"])
def test_planted_early_event_shift_gives_the_verdict(tmp_path, preset_name):
    """A planted later SVD settling / induction formation at 20% warm-up gives "supported", an earlier one
    "contradicted", none "no effect"; a level whose seeds form no head has NaN steps and induction_formed 0."""
    preset = PRESETS[preset_name]
    metric = "svd_settle_step" if preset_name == "warmup-events" else "induction_formation_step"
    statement = next(c.statement for c in preset.comparisons if c.metric == metric)
    shifted = {100: {"W_out": 0.3, "OV": 0.3}, 200: {"W_out": 0.3, "OV": 0.3}}  # settles at 300, not 100
    for shift, expected in ((1, "supported"), (-1, "contradicted"), (0, "no effect beyond seed noise")):
        store = Store.create(tmp_path / f"store{shift}", fsync=False)
        models = []
        for level in ("warmup-1%", "warmup-20%"):
            later = (level == "warmup-20%") == (shift > 0) and shift != 0
            for seed in range(3):
                model = f"{level}-s{seed}"
                if metric == "svd_settle_step":
                    settled = {s: {"W_out": 0.6, "OV": 0.6} for s in (0, 100, 200, 300, 400)} | {500: {"W_out": 1.0, "OV": 1.0}}
                    plant_svd(store, model, {**SVD_SERIES, **shifted} if later else settled)  # settles at 300 / at 0
                else:
                    plant_induction(store, model, center=(2050 if later else 1250) + 10 * seed)
                models.append((level, seed, model))
        verdicts = preset.verdicts(measure_store(preset, store.path, models, 3000), 3000).set_index("statement")
        assert verdicts.loc[statement, "verdict"] == expected, shift
    store = Store.create(tmp_path / "unformed", fsync=False)
    models = []
    for level, center in (("warmup-1%", 1250), ("warmup-20%", None)):
        for seed in range(3):
            plant_induction(store, f"{level}-s{seed}", center=center)
            models.append((level, seed, f"{level}-s{seed}"))
    table = effects(measure_store(PRESETS["warmup-induction"], store.path, models, 3000)).set_index(["level", "metric"])
    assert table.loc[("warmup-1%", "induction_formed"), "mean"] == 1
    assert table.loc[("warmup-20%", "induction_formed"), "mean"] == 0
    verdicts = PRESETS["warmup-induction"].verdicts(measure_store(PRESETS["warmup-induction"], store.path, models, 3000), 3000)
    assert verdicts.set_index("metric").loc["induction_formation_step", "verdict"] == "undecided"


def test_every_comparison_is_planted_or_reads_events():
    planted_elsewhere = {"svd_settle_step", "induction_formation_step"}  # test_planted_early_event_shift_gives_the_verdict
    for preset in PRESETS.values():
        for c in preset.comparisons:
            assert c.metric in BASE or c.metric in planted_elsewhere or c.metric.endswith("event_step"), c
            assert {c.level, c.baseline} <= {level.name for level in preset.levels}, c


def test_seed_noise_verdict_from_planted_spread(tmp_path):
    preset = PRESETS["seed-noise"]
    for spread, expected in ((0.01, "supported"), (0.5, "contradicted")):
        store = Store.create(tmp_path / f"s{spread}", fsync=False)
        models = []
        for seed in range(3):
            plant(store, f"m{seed}", {"weight_kurtosis_final": 1.0 + spread * (seed - 1)})
            models.append(("default", seed, f"m{seed}"))
        table = preset.verdicts(measure_store(preset, store.path, models, TOTAL), TOTAL).set_index("metric")
        assert table.loc["weight_kurtosis_final", "verdict"] == expected
        assert table.loc["matrix_norm_peak_step", "verdict"] == "supported"  # planted equal in every seed


def test_demo_recipe_thresholds_from_planted_stores(tmp_path):
    """Whether a level shows a phenomenon at all is judged from the store: a planted W_U decline of 0.15 (above
    the bound) is supported, 0 contradicted, the bound itself within seed noise; likewise the outlier ratio."""
    from pythia_dynamics.lab.presets import UNEMBED_DECLINE

    preset = PRESETS["demo-recipe"]
    planted = {"base": (0.0, 0.8), "6-layers": (0.15, 1.4), "wide": (UNEMBED_DECLINE, 1.0)}
    store = Store.create(tmp_path / "store", fsync=False)
    rng, models = np.random.default_rng(1), []
    for level, (decline, ratio) in planted.items():
        for seed in range(3):
            noise = rng.normal(0, 0.005)
            plant(store, f"{level}-s{seed}", {"unembed_norm_decline": decline + abs(noise), "outlier_mid_ratio": ratio + noise},
                  ["weight_norms", "residual_outliers"])  # fmt: skip
            models.append((level, seed, f"{level}-s{seed}"))
    verdicts = preset.verdicts(measure_store(preset, store.path, models, TOTAL), TOTAL).set_index("statement")["verdict"]
    expected = {("base", "contradicted", "contradicted"), ("6-layers", "supported", "supported")}
    for level, unembed, outlier in expected:
        assert verdicts[f"{level}: W_U's norm ends more than 5% below its peak"] == unembed
        assert verdicts[f"{level}: the largest-ever outlier peaks in a middle block"] == outlier
    assert verdicts["wide: the largest-ever outlier peaks in a middle block"] == "no effect beyond seed noise"
    assert verdicts["narrow: W_U's norm ends more than 5% below its peak"] == "undecided"  # not planted
    assert verdicts["6-layers makes W_U's norm fall more after its peak than base"] == "supported"


def test_threshold_verdict_rule():
    table = effects(pd.DataFrame({"level": ["a"] * 3, "seed": [0, 1, 2], "metric": ["x"] * 3, "value": [1.0, 1.1, 0.9]}))
    row = judge_threshold(Threshold("x above 0.5", "x", "a", 0.5), table)
    assert row["verdict"] == "supported" and row["effect"] == pytest.approx(0.5) and row["threshold"] == pytest.approx(0.2)
    assert judge_threshold(Threshold("x below 0.5", "x", "a", 0.5, "less"), table)["verdict"] == "contradicted"
    assert judge_threshold(Threshold("x above 0.9", "x", "a", 0.9), table)["verdict"] == "no effect beyond seed noise"
    assert judge_threshold(Threshold("y above 0", "y", "a", 0.0), table)["verdict"] == "undecided"


def test_judge_needs_two_seeds():
    one = pd.DataFrame({"level": ["a", "b"], "seed": [0, 0], "metric": ["x", "x"], "value": [1.0, 5.0]})
    assert judge(Comparison("s", "x", "b", "a"), effects(one))["verdict"] == "undecided"


def test_experiment_list_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from pythia_dynamics.cli import main; main(['experiment', '--list']); "
            "heavy = [m for m in ('torch', 'transformers', 'transformer_lens') if m in sys.modules]; "
            "assert not heavy, heavy")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)

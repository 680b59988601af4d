"""Formation steps from planted series, and the circuit analyses in real sweeps on both backends."""

import numpy as np
import pandas as pd
import pytest

from pythia_dynamics.circuits import describe, formation, formation_of_series
from pythia_dynamics.schedule import pythia_like_schedule

STEPS = np.array(pythia_like_schedule(143_000, 143))  # Pythia's: 0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000


def sigmoid_series(midpoint: float, width: float = 0.15, low: float = 0.02, high: float = 0.7) -> np.ndarray:
    """A score that forms around `midpoint` steps: a sigmoid in ln(1 + step)."""
    x = (np.log1p(STEPS) - np.log1p(midpoint)) / width
    return low + (high - low) / (1 + np.exp(-x))


@pytest.mark.parametrize("midpoint", [90, 2500, 40500])
def test_formation_steps_of_a_planted_sigmoid(midpoint):
    got = formation_of_series(STEPS, sigmoid_series(midpoint))
    # Half-way is crossed between the checkpoints that bracket the midpoint...
    assert got["half_step_before"] < midpoint <= got["half_step"]
    before, after = STEPS[STEPS < midpoint].max(), STEPS[STEPS >= midpoint].min()
    assert (got["half_step_before"], got["half_step"]) == (before, after)
    # ...and the steepest rise on the log axis is in the interval holding the midpoint (or next to it).
    assert got["steepest_from"] <= midpoint * 2.5 and got["steepest_to"] >= midpoint / 2.5
    assert got["initial"] == pytest.approx(sigmoid_series(midpoint)[0]) and got["change"] > 0


def test_a_falling_series_and_a_flat_one():
    falling = 1.0 - sigmoid_series(2000, high=1.0, low=0.0)
    got = formation_of_series(STEPS, falling)
    assert got["change"] < 0 and got["half_step_before"] < 2000 <= got["half_step"] and got["steepest_slope"] < 0
    flat = formation_of_series(STEPS, np.full(len(STEPS), 0.3))
    assert pd.isna(flat["half_step"]) and pd.isna(flat["steepest_from"])


def test_formation_table_picks_each_series_and_ignores_other_stats():
    rows = []
    for head, midpoint in [(0, 200), (1, 20000)]:
        for step, value in zip(STEPS, sigmoid_series(midpoint)):
            rows.append(dict(model="m", analysis="head_scores", component="attn", layer=1, head=head, stat="induction_score", step=step, value=value))
            rows.append(dict(model="m", analysis="head_scores", component="attn", layer=1, head=head, stat="attention_entropy", step=step, value=1.0))
    table = formation(pd.DataFrame(rows))
    assert list(table["head"]) == [0, 1] and set(table["stat"]) == {"induction_score"}
    assert table["half_step"].tolist() == [256, 20000]  # the first checkpoints at or past each midpoint
    assert "layer 1 head 0 induction_score rose" in describe(table.iloc[0]) and "and 256" in describe(table.iloc[0])


CIRCUITS = ["head_scores", "in_context_learning", "massive_activations"]


def test_circuit_analyses_sweep_on_both_backends_and_formation_reads_the_store(tiny_suite, tmp_path, capsys):
    from pythia_dynamics.cli import main
    from pythia_dynamics import compat
    from pythia_dynamics.store import Store
    from pythia_dynamics.sweeps import sweep

    stores = {}
    for backend in compat.available_backends():
        out = tmp_path / backend
        summary = sweep(tiny_suite, out, steps="first,last", analyses=CIRCUITS + ["eval_loss"], backend=backend, progress=False, chunk_size=3)
        assert not summary.failed, summary.failed
        stores[backend] = Store(out)
    for store in stores.values():
        assert set(CIRCUITS + ["eval_loss"]) <= set(store.analyses())
        table = formation(store)
        assert set(table["analysis"]) == {"head_scores", "massive_activations"}
        assert len(table[table["stat"] == "induction_score"]) > 0 and table["final"].notna().all()
    # The command line prints the same table, one sentence per series.
    assert main(["formation", str(store.path), "--stat", "induction_score", "--top", "0", "--csv", str(tmp_path / "f.csv")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "induction_score" in line]
    induction = table[table["stat"] == "induction_score"]
    assert len(lines) == len(induction) == len(pd.read_csv(tmp_path / "f.csv"))
    Store.create(tmp_path / "empty")
    assert main(["formation", str(tmp_path / "empty")]) == 1  # nothing to time, said plainly
    if len(stores) == 2:  # the two backends compute the same numbers
        a, b = (s.scalars(analysis=CIRCUITS).sort_values(["analysis", "step", "component", "layer", "head", "stat"]) for s in stores.values())
        np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=1e-3, atol=1e-4)

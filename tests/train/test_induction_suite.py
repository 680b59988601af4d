"""The demo's second embedded suite forms an induction head inside its schedule, with a loss bump.

Trains `INDUCTION_SUITE_CONFIG` once into the suite cache (a few minutes on 2 CPU cores; CI's two test runs
share `.ci-cache`, so the second reuses it), sweeps every checkpoint with the circuit analyses and checks
what docs/circuits.md ("The embedded suites") promises: a head of the second layer goes from the uniform
baseline to a clear induction head, half-way somewhere strictly inside the schedule, the second copy of
repeated tokens becomes predictable, and the held-out loss bumps up while the head forms.
"""

import pytest

from pythia_dynamics import sweep
from pythia_dynamics.circuits import formation
from pythia_dynamics.sources import EMBEDDED_INDUCTION_SUITE, open_source
from pythia_dynamics.store import Store
from pythia_dynamics.train import (
    INDUCTION_SUITE_CONFIG,
    SuiteConfig,
    default_suite_dir,
    demo_suite_configs,
    ensure_default_suite,
)

UNIFORM = 0.03  # about what uniform causal attention scores: the mean of 1 / (q + 1) over q = 32..62 is 0.022


@pytest.fixture(scope="module")
def induction_store(tmp_path_factory):
    suite = ensure_default_suite(INDUCTION_SUITE_CONFIG, progress=False)
    source = open_source(EMBEDDED_INDUCTION_SUITE)  # the name a user sweeps it by
    assert source.root == suite == default_suite_dir(INDUCTION_SUITE_CONFIG)
    store = tmp_path_factory.mktemp("induction") / "store"
    summary = sweep(source, store, analyses=["head_scores", "in_context_learning", "eval_loss"], progress=False)
    assert not summary.failed
    return Store(store)


def test_the_demo_trains_the_default_suite_and_the_induction_suite():
    assert demo_suite_configs() == [SuiteConfig(), INDUCTION_SUITE_CONFIG]
    assert [c.name for c in demo_suite_configs(tiny=True)] == ["tiny-test", "tiny-test-induction"]
    assert INDUCTION_SUITE_CONFIG.repeat_len <= (INDUCTION_SUITE_CONFIG.seq_len - 1) // 2 + 1  # the probe's distance


@pytest.mark.slow
def test_a_second_layer_head_becomes_an_induction_head_inside_the_schedule(induction_store):
    table = formation(induction_store, {"head_scores": ("induction_score",)})
    best = table.sort_values("final").iloc[-1]
    last = INDUCTION_SUITE_CONFIG.total_steps
    assert best["layer"] == 1
    assert best["initial"] < 2 * UNIFORM and best["final"] > 0.5
    assert 0 < best["half_step_before"] < best["half_step"] < last  # half-way crossed inside the schedule
    others = table.drop(best.name)
    assert (others[others["layer"] == 0]["final"] < 0.2).all()  # the first layer cannot hold an induction head

    repeat = induction_store.scalars(analysis="in_context_learning", stat="repeat_loss_drop").set_index("step")["value"]
    assert abs(repeat[0]) < 0.1 and repeat[last] > 3.0  # nats: the second copy becomes predictable


@pytest.mark.slow
def test_the_held_out_loss_bumps_while_the_head_forms(induction_store):
    table = formation(induction_store, {"head_scores": ("induction_score",)})
    best = table.sort_values("final").iloc[-1]
    loss = induction_store.scalars(analysis="eval_loss", stat="loss").set_index("step")["value"].sort_index()
    before = loss[int(best["half_step_before"]) - 300]  # on the plateau before the phase change
    during = loss[(loss.index >= best["half_step_before"]) & (loss.index <= best["half_step"] + 600)]
    assert during.max() > before + 0.1  # the bump (Olsson et al. 2022's phase change in the loss curve)
    assert loss[INDUCTION_SUITE_CONFIG.total_steps] < during.max()  # and it comes down again

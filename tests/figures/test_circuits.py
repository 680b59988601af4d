"""The circuits sections draw what the store holds: heatmaps per checkpoint, formation steps, block curves."""

import numpy as np
import pandas as pd

from pythia_dynamics.figures import SectionInputs, render_section
from pythia_dynamics.records import ARRAY_COLUMNS

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
N_LAYERS, N_HEADS = 2, 3
FORMS_AT = 48  # layer 1 head 2 becomes an induction head between steps 32 and 64


def planted_scalars() -> pd.DataFrame:
    rows = []
    for step in STEPS:
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                induction = 0.02 + (0.6 / (1 + np.exp(-(np.log1p(step) - np.log1p(FORMS_AT)) / 0.1)) if (layer, head) == (1, 2) else 0.0)
                for stat, value in [("induction_score", induction), ("prev_token_score", 0.1 * layer + 0.01 * head),
                                    ("duplicate_token_score", 0.02), ("sink_share", 0.1), ("attention_entropy", 2.0)]:  # fmt: skip
                    rows.append(dict(model="m", step=step, analysis="head_scores", component="attn", layer=layer, head=head, stat=stat, value=value))
    return pd.DataFrame(rows)


def inputs(scalars):
    return SectionInputs(scalars, pd.DataFrame(columns=["model", "step", "analysis", *ARRAY_COLUMNS]), {})


def test_head_score_heatmaps_hold_each_checkpoints_scores_and_the_formation_table_names_the_head():
    section = render_section("head_scores", inputs(planted_scalars()))
    heatmaps = [f for f in section.figures if f.layout.sliders]
    assert len(heatmaps) == 5 and "induction score" in heatmaps[0].layout.title.text
    induction = heatmaps[0]
    assert [f.name for f in induction.frames] == [str(s) for s in STEPS]
    for frame, step in zip(induction.frames, STEPS):
        z = np.asarray(frame.data[0].z)
        assert z.shape == (N_LAYERS, N_HEADS) and np.unravel_index(np.argmax(z), z.shape) == (1, 2)
        assert z[1, 2] == planted_scalars().query(f"step == {step} and layer == 1 and head == 2 and stat == 'induction_score'")["value"].item()
    notes = " ".join(section.notes)
    assert "layer 1 head 2 induction_score rose" in notes and "between steps 32 and 64" in notes
    best = next(f for f in section.figures if "top head" in f.layout.title.text)
    assert "induction_score (layer 1 head 2)" in [t.name for t in best.data]


def test_massive_activation_curves_per_block():
    rows = []
    for step in STEPS:
        for component, layer, size in [("hook_resid_pre", 0, 1.0), ("hook_resid_post", 0, 2.0), ("hook_resid_post", 1, 3.0 + step)]:
            for stat, value in [("top1_abs", size), ("top1_ratio", size * 10), ("top1_position", 0), ("top1_dim", 5),
                                ("top1_on_first_token", 1.0), ("median_abs", 0.1)]:  # fmt: skip
                rows.append(dict(model="m", step=step, analysis="massive_activations", component=component, layer=layer, head=None, stat=stat, value=value))
    section = render_section("massive_activations", inputs(pd.DataFrame(rows)))
    largest = section.figures[0]
    assert [t.name for t in largest.data] == ["embeddings", "block 0", "block 1"]
    np.testing.assert_allclose(largest.data[2].y, [3.0 + s for s in STEPS])
    assert section.figures[1].layout.yaxis.type == "log"
    assert "layer 1 top1_abs rose" in " ".join(section.notes)


def test_icl_figure_marks_where_the_second_copy_loss_drop_formed():
    rows = []
    for step in STEPS:
        drop = 4.0 / (1 + np.exp(-(np.log1p(step) - np.log1p(FORMS_AT)) / 0.1))
        for stat, value in [("repeat_first_copy_loss", 8.0), ("repeat_second_copy_loss", 8.0 - drop), ("repeat_loss_drop", drop),
                            ("early_loss", 5.0), ("late_loss", 5.0 - drop / 4), ("icl_score", -drop / 4)]:  # fmt: skip
            rows.append(dict(model="m", step=step, analysis="in_context_learning", component="model", layer=None, head=None, stat=stat, value=value))
    fig = render_section("in_context_learning", inputs(pd.DataFrame(rows))).figures[0]
    (band,) = fig.layout.shapes
    assert (band.x0, band.x1) == (32, 64)


def test_the_loss_curve_marks_where_the_strongest_induction_head_formed(tmp_path):
    import math
    import re

    from pythia_dynamics.report import build_report
    from pythia_dynamics.store import Store

    store = Store.create(tmp_path / "store", fsync=False)
    steps = [0, 10, 30, 100, 300, 1000]
    for step in steps:
        rise = 1 / (1 + math.exp(-4 * (math.log10(1 + step) - 2)))  # planted: crosses half-way by step 100
        heads = pd.DataFrame([
            {"component": "attn", "layer": 1, "head": 0, "stat": "induction_score", "value": 0.05 + 0.6 * rise},
            {"component": "attn", "layer": 1, "head": 1, "stat": "induction_score", "value": 0.05 + 0.1 * rise},
        ])  # fmt: skip
        store.write_result("m", step, "head_scores", heads)
        loss = pd.DataFrame([{"component": "model", "layer": None, "head": None, "stat": "loss", "value": 5 - rise}])
        store.write_result("m", step, "eval_loss", loss)
    page = build_report([store.path], tmp_path / "report.html").read_text()
    loss_section = page[page.index('id="section-eval_loss"') : page.index("</section>", page.index('id="section-eval_loss"'))]
    assert "circuit formed (half-way step)" in loss_section
    assert "m: layer 1 head 0 induction_score rose from 0.0502 to 0.639, crossing half-way between steps 30 and 100" in loss_section
    assert "layer 1 head 1" not in loss_section  # only the head that rose most
    assert not re.search(r"circuit formed", page[page.index('id="section-head_scores"') :])

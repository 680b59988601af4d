"""Write the tutorial notebooks (no outputs) from the cells below: `python tutorials/make_notebooks.py`.

The notebooks are generated so that a review reads plain Python; edit this file, not the .ipynb files.
Every notebook honours PYTHIA_DYNAMICS_TUTORIAL_SOURCE (a checkpoint source: a Hub name, "mini-pythia"
or a local suite folder) and PYTHIA_DYNAMICS_TUTORIAL_STEPS (a step spec), which the tests set to a tiny
trained suite so the notebooks run in seconds.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
COLAB = "https://colab.research.google.com/github/pythia-dynamics/pythia-dynamics/blob/main/tutorials/{name}.ipynb"
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"

INSTALL = """\
import sys

if "google.colab" in sys.modules:
    %pip install -q pythia-dynamics"""

# Where checkpoints come from: Pythia on the Hub when online, else the embedded mini suite (trained on first use).
CHOOSE_SOURCE = """\
import os

ONLINE = os.environ.get("PYTHIA_DYNAMICS_OFFLINE") is None and os.environ.get("HF_HUB_OFFLINE") != "1"
SOURCE = os.environ.get("PYTHIA_DYNAMICS_TUTORIAL_SOURCE") or ("pythia-70m" if ONLINE else "mini-pythia")
STEPS = os.environ.get("PYTHIA_DYNAMICS_TUTORIAL_STEPS") or (
    "0,1000,10000,143000" if SOURCE == "pythia-70m" else "log:8"
)
print(f"source: {SOURCE}, steps: {STEPS}")"""


def header(name: str, title: str, intro: str) -> list:
    return [
        new_markdown_cell(f"# {title}\n\n{BADGE.format(url=COLAB.format(name=name))}\n\n{intro}"),
        new_code_cell(INSTALL),
        new_code_cell(CHOOSE_SOURCE),
    ]


QUICK_START = header(
    "01_quick_start",
    "Quick start: sweep checkpoints, read the store, plot",
    "Sweep a model's training checkpoints with three analyses, read the results as pandas tables and plot "
    "them with plotly. Online this uses `pythia-70m` from the Hugging Face Hub; offline the embedded "
    "`mini-pythia` suite (trained on first use, a few minutes on a CPU).",
) + [
    new_code_cell("""\
import pythia_dynamics as pdyn

summary = pdyn.sweep(SOURCE, "store-quick-start", steps=STEPS, analyses="weight_norms,residual_outliers,eval_loss")
print(summary)"""),
    new_markdown_cell("The store is a folder of Parquet files; `Store.scalars` reads them as one tidy table."),
    new_code_cell("""\
store = pdyn.Store("store-quick-start")
norms = store.scalars(analysis="weight_norms", stat="frobenius_norm", component=["W_in", "W_out"])
norms.pivot_table(index="step", columns=["component", "layer"], values="value")"""),
    new_code_cell("""\
import plotly.express as px

w_out = store.scalars(analysis="weight_norms", stat="frobenius_norm", component="W_out")
w_out = w_out.assign(block=w_out["layer"].astype(int).astype(str))
px.line(w_out, x="step", y="value", color="block", markers=True,
        title="Frobenius norm of W_out per block", labels={"value": "‖W_out‖_F", "step": "training step"})"""),
    new_code_cell("""\
outliers = store.scalars(analysis="residual_outliers", stat="max_abs", component="hook_resid_post")
outliers = outliers.assign(block=outliers["layer"].astype(int).astype(str))
px.line(outliers, x="step", y="value", color="block", markers=True,
        title="Largest |activation| in the residual stream after each block",
        labels={"value": "max |activation|", "step": "training step"})"""),
    new_code_cell("""\
loss = store.scalars(analysis="eval_loss", stat="loss")
px.line(loss, x="step", y="value", markers=True, title="Evaluation loss",
        labels={"value": "cross-entropy (nats/token)", "step": "training step"})"""),
]

DISTRIBUTIONS = header(
    "02_distributions",
    "Weight and activation distributions over training",
    "Fit Gaussian, logistic, Student-t and generalised-normal distributions to every weight matrix and to "
    "the residual stream at each checkpoint. Student-t's ν falls and the generalised normal's β drops "
    "below 2 as distributions grow heavy tails.",
) + [
    new_code_cell("""\
import pythia_dynamics as pdyn

summary = pdyn.sweep(SOURCE, "store-distributions", steps=STEPS,
                     analyses="weight_distributions,residual_distributions")
print(summary)
store = pdyn.Store("store-distributions")"""),
    new_code_cell("""\
import plotly.express as px

fits = store.scalars(analysis="weight_distributions", stat=["student_t_nu", "gennorm_beta"],
                     component=["W_in", "W_out"])
fits = fits.assign(block=fits["layer"].astype(int).astype(str))
fig = px.line(fits, x="step", y="value", color="block", line_dash="component", facet_col="stat", markers=True,
              title="Student-t ν and generalised-normal β of the MLP weights", labels={"step": "training step"})
fig.update_yaxes(matches=None, showticklabels=True)"""),
    new_code_cell("""\
resid = store.scalars(analysis="residual_distributions", stat=["student_t_nu", "gennorm_beta"],
                      component="hook_resid_post")
resid = resid.assign(block=resid["layer"].astype(int).astype(str))
fig = px.line(resid, x="step", y="value", color="block", facet_col="stat", markers=True,
              title="Student-t ν and generalised-normal β of the residual stream after each block",
              labels={"step": "training step"})
fig.update_yaxes(matches=None, showticklabels=True)"""),
    new_markdown_cell("The HTML report has a section per analysis (histograms over training, QQ plots, fit "
                      "comparisons). On Colab, download `report.html` from the file browser to view it."),
    new_code_cell("""\
from IPython.display import IFrame
from pythia_dynamics.report import build_report

report = build_report(["store-distributions"], "report-distributions.html")
IFrame(str(report), width="100%", height=600)"""),
]

SVD = header(
    "03_svd_directions",
    "SVD directions: what a matrix writes, in tokens",
    "Take the top singular directions of an MLP's output matrix, project them through the unembedding and "
    "read the tokens they promote and suppress; then see how those directions settle over training.",
) + [
    new_code_cell("""\
import pythia_dynamics as pdyn
from pythia_dynamics.analyses.svd_directions import directions_table, svd_strings

final_step = pdyn.open_source(SOURCE).select(STEPS)[-1]
model = pdyn.load_checkpoint(SOURCE, final_step).model
LAYER = model.cfg.n_layers - 1
strings = svd_strings(model, LAYER, "mlp_out", k=10, n=10)
directions_table(strings).head()"""),
    new_code_cell("""\
from pythia_dynamics.views import directions_view

directions_view(strings)"""),
    new_markdown_cell("Sweep `svd_directions` over the checkpoints, then compare each checkpoint's direction "
                      "strings with the final checkpoint's (definitions in `pythia_dynamics.svd_agreement`)."),
    new_code_cell("""\
summary = pdyn.sweep(SOURCE, "store-svd", steps=STEPS, analyses="svd_directions")
print(summary)
store = pdyn.Store("store-svd")"""),
    new_code_cell("""\
from pythia_dynamics.svd_agreement import stored_strings
from pythia_dynamics.views import drift_view

drift_view(stored_strings(store, component="W_out", layer=LAYER))"""),
    new_code_cell("""\
import plotly.express as px
from pythia_dynamics.svd_agreement import svd_agreement

agreement = svd_agreement(store, level="block")
agreement = agreement.assign(block=agreement["layer"].astype(int).astype(str))
px.line(agreement, x="step", y="matched", color="block", facet_col="component", markers=True,
        title="Agreement of SVD direction tokens with the final checkpoint",
        labels={"matched": "matched fraction", "step": "training step"})"""),
]

OWN_SUITE = [
    new_markdown_cell(
        "# Your own suite: train, sweep, compare seeds\n\n"
        + BADGE.format(url=COLAB.format(name="04_your_own_suite"))
        + "\n\nTrain two tiny Pythia-recipe suites that differ only in their seed, sweep both and overlay "
        "them in one report. Any folder of `step<N>/` GPT-NeoX checkpoints is a suite (see the README)."
    ),
    new_code_cell(INSTALL),
    new_code_cell("""\
import os

STEPS = os.environ.get("PYTHIA_DYNAMICS_TUTORIAL_STEPS") or "all"
print(f"steps: {STEPS}")"""),
    new_code_cell("""\
from pythia_dynamics.train import tiny_test_config, train_suite

suites = {seed: train_suite(tiny_test_config(seed=seed, name=f"tiny-seed{seed}"), f"suite-seed{seed}", progress=False)
          for seed in (0, 1)}
suites"""),
    new_code_cell("""\
import pythia_dynamics as pdyn

stores = []
for seed, suite in suites.items():
    print(pdyn.sweep(suite, f"store-seed{seed}", steps=STEPS, analyses="weight_norms,eval_loss", progress=False))
    stores.append(f"store-seed{seed}")"""),
    new_code_cell("""\
import plotly.express as px
from pythia_dynamics.store import read_scalars

loss = read_scalars(stores, analysis="eval_loss", stat="loss")
px.line(loss, x="step", y="value", color="model", markers=True, title="Evaluation loss of two seeds",
        labels={"value": "cross-entropy (nats/token)", "step": "training step"})"""),
    new_code_cell("""\
from IPython.display import IFrame
from pythia_dynamics.report import build_report

report = build_report(stores, "report-seeds.html")
IFrame(str(report), width="100%", height=600)"""),
]

CIRCUITS = header(
    "05_circuits",
    "Circuits over training: induction heads, attention sinks, massive activations",
    "Score every attention head at every checkpoint (induction, previous-token, duplicate-token, attention to "
    "the first position), measure in-context learning, find massive residual-stream activations, and read off "
    "when each formed. Definitions: `docs/circuits.md`. Offline this uses `mini-pythia-induction`, the demo's "
    "second embedded suite, in which an induction head forms (the default `mini-pythia` forms none).",
) + [
    new_code_cell("""\
import pythia_dynamics as pdyn

if SOURCE == "mini-pythia":  # offline: the embedded suite where an induction head forms, every 200 steps
    SOURCE, STEPS = "mini-pythia-induction", "0:3000:200"
summary = pdyn.sweep(SOURCE, "store-circuits", steps=STEPS,
                     analyses="head_scores,in_context_learning,massive_activations,eval_loss")
print(summary)
store = pdyn.Store("store-circuits")
MODEL = store.models()[0]"""),
    new_markdown_cell(
        "Induction scores are measured on repeated random tokens `[BOS] r r`: the mean attention from each token "
        "of the second copy to the token after its first occurrence. Uniform attention gives about 0.013."
    ),
    new_code_cell("""\
import plotly.express as px

heads = store.scalars(analysis="head_scores", stat=["induction_score", "prev_token_score"])
final = heads[heads["step"] == heads["step"].max()]
top = final.sort_values("value", ascending=False).groupby("stat").head(3)
top = top.assign(name=top["stat"] + ": layer " + top["layer"].astype(str) + " head " + top["head"].astype(str))
series = heads.merge(top[["stat", "layer", "head", "name"]], on=["stat", "layer", "head"])
px.line(series, x="step", y="value", color="name", markers=True, log_x=True,
        title="The top heads' scores over training", labels={"value": "score", "step": "training step"})"""),
    new_markdown_cell("When did each score form: the step it crossed half-way from its first to its last value, "
                      "and the steepest rise on a log step axis. Read from the store, no model needed."),
    new_code_cell("""\
from pythia_dynamics.circuits import describe, formation

table = formation(store)
induction = table[table["stat"] == "induction_score"].sort_values("final", ascending=False)
for _, row in induction.head(3).iterrows():
    print(describe(row))
induction.head(5)"""),
    new_code_cell("""\
icl = store.scalars(analysis="in_context_learning",
                    stat=["repeat_first_copy_loss", "repeat_second_copy_loss", "icl_score"])
px.line(icl, x="step", y="value", color="stat", markers=True, log_x=True,
        title="Loss on repeated random tokens (first vs second copy) and the in-context-learning score",
        labels={"value": "nats", "step": "training step"})"""),
    new_code_cell("""\
massive = store.scalars(analysis="massive_activations", stat="top1_ratio")
massive = massive.assign(where=massive["component"] + " " + massive["layer"].astype(str))
px.line(massive, x="step", y="value", color="where", markers=True, log_x=True, log_y=True,
        title="Largest residual-stream |activation| / median, per block",
        labels={"value": "ratio to the median", "step": "training step"})"""),
    new_markdown_cell("The top induction head's attention on the first evaluation sequence, at each checkpoint "
                      "(circuitsvis; hover a panel to see it large)."),
    new_code_cell("""\
from pythia_dynamics.views import attention_over_training

best = induction.iloc[0]
attention_over_training(store, model=MODEL, layer=int(best["layer"]), head=int(best["head"]))"""),
]

NOTEBOOKS = {
    "01_quick_start": QUICK_START,
    "02_distributions": DISTRIBUTIONS,
    "03_svd_directions": SVD,
    "04_your_own_suite": OWN_SUITE,
    "05_circuits": CIRCUITS,
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        notebook = new_notebook(cells=cells)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.metadata["language_info"] = {"name": "python"}
        notebook.metadata["colab"] = {"provenance": []}
        for i, cell in enumerate(notebook.cells):
            cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids keep regenerated files diff-free
        nbformat.validate(notebook)
        nbformat.write(notebook, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()

import re

import pandas as pd

from pythia_dynamics.report import build_report
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep


def test_report_has_a_section_per_analysis_and_opens_offline(tiny_suite, tmp_path):
    sweep(tiny_suite, tmp_path / "store", steps="first:2,last", analyses="weight_norms,eval_loss", progress=False)
    # An analysis with no registered figures still gets a section summarising what the store holds.
    Store(tmp_path / "store").write_result(
        "tiny-test", 0, "unplotted", pd.DataFrame({"component": ["W_E"], "layer": [None], "head": [None], "stat": ["x"], "value": [1.0]})
    )
    page = build_report([tmp_path / "store"], tmp_path / "report.html").read_text()
    assert re.findall(r'<section id="section-([\w]+)"', page) == ["audit", "eval_loss", "weight_norms", "unplotted", "events"]
    assert page.count("window.PlotlyConfig") == 1  # plotly.js inlined once
    assert "<script src=" not in page  # nothing to fetch: the file opens offline
    assert "Frobenius norm" in page and "No figures are registered" in page


def test_report_over_two_stores_overlays_models(tiny_suite, tmp_path):
    for name in ("a", "b"):
        sweep(tiny_suite, tmp_path / name, steps="0,40", analyses="eval_loss", progress=False)
    page = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "r.html").read_text()
    assert str(tmp_path / "a") in page and str(tmp_path / "b") in page


def test_report_shows_residual_outliers(tiny_suite, tmp_path):
    sweep(tiny_suite, tmp_path / "store", steps="0,20,40", analyses="residual_outliers", progress=False)
    page = build_report([tmp_path / "store"], tmp_path / "report.html").read_text()
    assert 'id="section-residual_outliers"' in page
    assert "outlier norm (max |activation| of hook_resid_post) per block" in page
    assert "maximum outlier norm ever seen" in page and "Outlier dimensions" in page


def test_report_shows_activation_and_gradient_distributions(tiny_suite, tmp_path):
    sweep(tiny_suite, tmp_path / "store", steps="0,40", analyses="residual_distributions,gradients", progress=False)
    page = build_report([tmp_path / "store"], tmp_path / "report.html").read_text()
    assert 'id="section-residual_distributions"' in page and 'id="section-gradients"' in page
    assert "grad.W_out" in page and "activation x" in page and "gradient g" in page


def test_several_models_are_overlaid_on_a_common_axis(tiny_suite, tmp_path):
    import shutil
    import json

    other = shutil.copytree(tiny_suite, tmp_path / "other")
    meta = json.loads((other / "suite.json").read_text())
    (other / "suite.json").write_text(json.dumps(meta | {"name": "tiny-other"}))
    for suite in (tiny_suite, other):
        sweep(suite, tmp_path / "store", steps="0,20,40", analyses="weight_norms,residual_outliers", progress=False)
    page = build_report([tmp_path / "store"], tmp_path / "r.html").read_text()
    assert "W_out: Frobenius norm averaged over blocks, every model" in page
    assert "Outlier norm (largest max |activation| over blocks), every model" in page
    assert '"name":"tiny-other"' in page and '"name":"tiny-test"' in page


def test_the_evaluation_batch_is_described_for_a_person(tiny_suite, tmp_path):
    sweep(tiny_suite, tmp_path / "store", steps="0", analyses="eval_loss", progress=False)
    page = build_report([tmp_path / "store"], tmp_path / "report.html").read_text()
    [line] = re.findall(r"<li><b>tiny-test</b>: ([^<]*)</li>", page)
    assert re.fullmatch(r"8 sequences × \d+ tokens at random starts \(seed 0\) in [\d,]+ tokens of the suite&#x27;s "
                        r"held-out text \(heldout.txt\)", line), line  # fmt: skip
    assert str(tiny_suite) not in page and "{" not in line


def test_the_report_lists_what_failed_is_damaged_or_missing(tiny_suite, tmp_path):
    store_path = tmp_path / "store"
    sweep(tiny_suite, store_path, steps="0,2,4", analyses="weight_norms", progress=False)
    sweep(tiny_suite, store_path, steps="0", analyses="embeddings", progress=False)
    store = Store(store_path)
    store.write_failure("tiny-test", 8, "weight_norms", "RuntimeError: planted failure")
    victim = next(store_path.rglob("weight_norms/step2.scalars.parquet"))
    victim.write_bytes(victim.read_bytes()[:100])
    page = build_report([store_path], tmp_path / "report.html").read_text()
    coverage = page[page.index('<section id="coverage">') : page.index("</section>", page.index('<section id="coverage">'))]
    rows = re.findall(r"<tr><td>tiny-test</td><td>(\w+)</td><td>(\w+)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", coverage)
    assert [(a, status, steps) for a, status, steps, _ in rows] == [
        ("embeddings", "missing", "steps 2, 4, 8"),
        ("weight_norms", "damaged", "step 2"),
        ("weight_norms", "failed", "step 8"),
    ]
    assert "planted failure" in rows[2][3] and "unreadable scalars file" in rows[1][3]


def test_a_complete_store_says_so(tiny_suite, tmp_path):
    sweep(tiny_suite, tmp_path / "store", steps="0,2", analyses="weight_norms", progress=False)
    page = build_report([tmp_path / "store"], tmp_path / "report.html").read_text()
    assert "Every analysis has a result at every checkpoint swept" in page

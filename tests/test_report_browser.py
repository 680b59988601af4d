import re

from pythia_dynamics.report import SECTION_ORDER, build_report
from pythia_dynamics.sweeps import sweep


def test_the_report_renders_every_section_in_a_real_browser(tiny_suite, tmp_path, render_in_chromium):
    sweep(tiny_suite, tmp_path / "store", steps="first:2,last", progress=False)
    page = build_report([tmp_path / "store"], tmp_path / "report.html").read_text()
    dom, console = render_in_chromium(page, tmp_path)
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    # Every registered analysis in order, then the events computed across them.
    assert re.findall(r'<section id="section-(\w+)"', dom) == [*SECTION_ORDER, "events"]
    n_figures = page.count('class="plotly-graph-div"')
    assert n_figures > 20
    assert dom.count('class="main-svg"') >= n_figures  # plotly drew every figure (each has at least one svg)

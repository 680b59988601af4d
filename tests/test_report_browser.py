"""The report in a real browser (headless Chromium, offline): figures are drawn as they scroll into view,
every one can be drawn at once, and none raises an error. CI runs these; without chromium they fail there."""

import re

import pytest

from pythia_dynamics.report import SECTION_ORDER, build_report
from pythia_dynamics.sweeps import sweep

# Scripts appended to the page before </body>, after the report's own loader.
DRAW_ALL = "<script>pythiaDynamics.drawAll();</script>"
# The first screen of the benchmark's measurement (benchmarks/bench.py, docs/scale.md): a 1280 x 1024 window.
WINDOW = "1280,1024"
SCROLL_TO = '<script>window.addEventListener("load", function () {{ document.getElementById("{}").scrollIntoView(); }});</script>'


@pytest.fixture(scope="module")
def page(tiny_suite, tmp_path_factory):
    store = tmp_path_factory.mktemp("browser") / "store"
    sweep(tiny_suite, store, steps="first:2,last", progress=False)
    return build_report([store], store.parent / "report.html").read_text()


def _with(page: str, script: str) -> str:
    return page.replace("</body>", script + "</body>")


def _figures(dom: str) -> dict[str, bool]:
    """Figure placeholder id -> whether the loader drew it (in page order)."""
    return {m.group(1): 'data-drawn="drawn"' in m.group(2) for m in re.finditer(r'<div id="(figure-\d+)"([^>]*)>', dom)}


def _errors(console: list[str]) -> list[str]:
    return [line for line in console if "Uncaught" in line or "Error" in line]


def test_every_figure_draws_when_all_are_forced(page, tmp_path, render_in_chromium):
    dom, console = render_in_chromium(_with(page, DRAW_ALL), tmp_path)
    assert not _errors(console), console
    # Every registered analysis in order, then the events computed across them.
    assert re.findall(r'<section id="section-(\w+)"', dom) == [*SECTION_ORDER, "events"]
    figures = _figures(dom)
    assert len(figures) > 20 and len(figures) == page.count('class="plotly-graph-div pd-lazy"')
    assert all(figures.values()), [f for f, drawn in figures.items() if not drawn]
    assert dom.count('class="main-svg"') >= len(figures)  # plotly drew every figure (each has at least one svg)


def test_the_page_opens_with_the_first_figures_drawn_and_the_rest_waiting(page, tmp_path, render_in_chromium):
    dom, console = render_in_chromium(page, tmp_path, window_size=WINDOW)
    assert not _errors(console), console
    figures = _figures(dom)
    drawn = [f for f, is_drawn in figures.items() if is_drawn]
    assert drawn and drawn[0] == "figure-0"  # the first screen's figure is drawn at load ...
    assert len(drawn) < 5 < len(figures)  # ... and the figures further down are not, yet
    assert not figures[list(figures)[-1]]
    assert dom.count('class="main-svg"') < 3 * len(figures)


def test_a_figure_draws_once_scrolled_into_view(page, tmp_path, render_in_chromium):
    figures = list(_figures(page))
    last, middle = figures[-1], figures[len(figures) // 2]
    dom, console = render_in_chromium(_with(page, SCROLL_TO.format(last)), tmp_path)
    assert not _errors(console), console
    drawn = _figures(dom)
    assert drawn[last] and not drawn[middle]  # drawn where the reader is, not in between
    tag = re.search(rf'<div id="{last}"[^>]*>.*?class="main-svg"', dom, re.S)
    assert tag is not None  # and plotly's svg is inside it

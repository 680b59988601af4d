import html
import re

import numpy as np
import pandas as pd
import pytest

from pythia_dynamics.views import directions_view, drift_view, offline_html, offline_page

K = 4


def strings_table(steps=(0, 10), heads=(0, 1), n=3) -> pd.DataFrame:
    """A tidy strings table whose tokens say where they belong: 's10h1d2t0' is step 10, head 1, direction 2, top 0.

    Logits are K - rank on top and -(K - rank) at the bottom, so the stored order is also the value order.
    """
    rows = []
    token_id = 0
    for step in steps:
        for head in heads:
            for direction in range(n):
                for side, sign in (("top", 1), ("bottom", -1)):
                    for rank in range(K):
                        rows.append(dict(
                            step=step, component="OV", layer=1, head=head, direction=direction,
                            singular_value=1.0 / (1 + direction), side=side, rank=rank, token_id=token_id,
                            token=f"s{step}h{head}d{direction}{side[0]}{rank}", logit=sign * (K - rank) / 10,
                            escaped=False,
                        ))  # fmt: skip
                        token_id += 1
    return pd.DataFrame(rows).astype({"layer": "Int64", "head": "Int64", "token": "string"})


def first_column_tokens(dom: str, table: int) -> list[str]:
    """The tokens of the first column of the `table`-th TopkTokens table (top rows then bottom rows)."""
    body = dom.split("<tbody>")[table + 1].split("</tbody>")[0]
    tokens = []
    for row in re.findall(r"<tr>(.*?)</tr>", body):
        cells = re.findall(r"<span[^>]*>(.*?)</span>", row)
        if cells:
            tokens.append(html.unescape(cells[0]).replace("\xa0", " "))
    return tokens


def test_views_render_offline_in_a_real_browser(tmp_path, render_in_chromium):
    strings = strings_table()
    views = [directions_view(strings), drift_view(strings[strings["head"] == 1])]
    page = offline_page(*views) + '<p id="after-views">content after the views</p>'
    dom, console = render_in_chromium(page, tmp_path)
    assert console == [], console  # no script errors (nor any other console output)
    assert "content after the views" in dom  # circuitsvis's self-closed <div/> would have swallowed it
    # First view: first sample (step 0, relative), first matrix (head 0), direction 0: top tokens largest
    # first, then the bottom ones with the most negative last (circuitsvis's order).
    expected = [f"s0h0d0t{r}" for r in range(K)] + [f"s0h0d0b{r}" for r in reversed(range(K))]
    assert first_column_tokens(dom, 0) == expected
    # Drift view: first direction rank, first checkpoint column is step 0 of head 1.
    expected = [f"s0h1d0t{r}" for r in range(K)] + [f"s0h1d0b{r}" for r in reversed(range(K))]
    assert first_column_tokens(dom, 1) == expected
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", dom)
    assert "SVD direction" in headers and "Checkpoint" in headers
    assert "step 10, logits" in dom and "block 1 OV head 1" in dom


def test_offline_html_inlines_the_bundle_once_and_closes_each_div():
    strings = strings_table(steps=(0,), heads=(0,))
    views = [directions_view(strings), directions_view(strings), drift_view(strings)]
    fragment = offline_html(*views)
    assert fragment.count("var CircuitsVis=") == 1 and len(fragment) < 1.5e6
    assert re.search(r'<div id="circuits-vis-[^"]*"[^>]*/>', fragment) is None
    assert fragment.count("CircuitsVis.render(") == 3 and "unpkg.com" not in fragment
    alone = views[0].offline_html()
    assert alone.count("var CircuitsVis=") == 1


def test_values_are_relative_or_raw_logits():
    strings = strings_table(steps=(0,), heads=(0,), n=1)
    relative = directions_view(strings, scales=("relative",)).rendered.local_src
    raw = directions_view(strings, scales=("raw",)).rendered.local_src
    # The top token's value: 1 relative to the direction's largest |logit|, 0.4 as a raw logit.
    assert re.search(r'"topkVals": \[\[\[\[1\.0', relative) and re.search(r'"topkVals": \[\[\[\[0\.4', raw)


def test_views_reject_what_they_cannot_show():
    strings = strings_table(steps=(0,), heads=(0,), n=2)
    mixed = pd.concat([strings, strings_table(steps=(0,), heads=(5,), n=3)])
    with pytest.raises(ValueError, match="different numbers of directions"):
        directions_view(mixed)
    assert directions_view(mixed, max_directions=2).caption.count("head") == 2
    with pytest.raises(ValueError, match="drift_view shows one matrix"):
        drift_view(mixed)
    with pytest.raises(ValueError, match="scales must be"):
        directions_view(strings, scales=("log",))
    with pytest.raises(ValueError, match="missing columns"):
        directions_view(strings.drop(columns="logit"))


def test_drift_view_spreads_many_checkpoints_over_its_columns():
    strings = strings_table(steps=tuple(range(0, 100, 5)), heads=(0,), n=1)
    view = drift_view(strings, max_steps=4)
    assert "0 = step 0, 1 = step 30, 2 = step 65, 3 = step 95" in view.caption
    assert np.isclose(len(re.findall(r"step \d+", view.caption)), 4)


def test_attention_over_training_reads_the_store_and_renders_offline(tiny_suite, tmp_path, render_in_chromium):
    from pythia_dynamics.store import Store
    from pythia_dynamics.sweeps import sweep
    from pythia_dynamics.views import attention_over_training, stored_attention

    sweep(tiny_suite, tmp_path / "store", steps="first,last", analyses="head_scores", progress=False)
    store = Store(tmp_path / "store")
    model = store.models()[0]
    patterns, tokens = stored_attention(store, model, layer=1, head=2)
    steps = store.steps(model, "head_scores")
    assert sorted(patterns) == steps and len(tokens) == 32
    for step, pattern in patterns.items():  # the head's causal attention rows, as stored
        assert pattern.shape == (32, 32) and np.allclose(pattern.sum(-1), 1, atol=1e-5) and np.allclose(np.triu(pattern, 1), 0)
        full = store.array(model, step, "head_scores", "attn", "view_pattern", layer=1)
        assert np.array_equal(pattern, full[2])
    view = attention_over_training(store, model=model, layer=1, head=2)
    page = offline_page(view, title="attention over training") + '<p id="after">after the view</p>'
    dom, console = render_in_chromium(page, tmp_path)
    assert console == [], console
    assert "after the view" in dom
    # circuitsvis drew one panel per checkpoint, named by step, in step order (React renders these <h4>s).
    assert re.findall(r"<h4[^>]*>(step \d+)</h4>", dom) == [f"step {s}" for s in steps]
    with pytest.raises(ValueError, match="head 9 out of range"):
        stored_attention(store, model, layer=1, head=9)
    with pytest.raises(ValueError, match="do not match"):
        attention_over_training({0: np.eye(3)}, ["a", "b"])

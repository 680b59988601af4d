"""The benchmark script runs end to end (on the smallest Pythia shape) and reports every part.

Its figures are not checked here: performance claims live in docs/performance.md, measured by the
script itself as ratios in one run. This keeps the script from rotting between measurements.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.mark.slow
def test_benchmark_runs_every_part_and_writes_its_report(tmp_path):
    markdown = tmp_path / "perf.md"
    command = [
        sys.executable, str(BENCH), "--sizes", "14m", "--checkpoints", "2", "--sweep-length", "3",
        "--naive-fit-sizes", "14m", "--naive-fit-matrices", "2", "--bandwidth", "200", "--threads", "1",
        "--startup-repeats", "1", "--events-series", "300", "--ray-tiny", "--families-tiny", "--report-shape", "3x2x2", "--report-width-scale", "1", "--work", str(tmp_path / "work"), "--markdown", str(markdown),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = markdown.read_text()
    for heading in ("### Checkpoint switching", "### Weight analyses", "### Shared forward/backward pass", "### Sweeps", "### Memory", "### Start-up", "### Events",
                    "### Integrity audit", "### Checkpoint switching per architecture family (toy shapes", "### Sweeps on Ray", "### Report of a full-size store (3 checkpoints x 2 layers x 2 heads"):
        assert heading in report
    assert "Naive fits (14m)" in report and "| 14m |" in report
    assert "| `pythia-dynamics steps pythia-70m` |" in report
    families = everything_families = json.loads((tmp_path / "work" / "results.json").read_text())["families"]
    assert set(families) == {"gpt_neox", "gpt2", "llama", "smollm3", "olmo", "olmo2"}
    assert all("bridge" in r["backends"] for r in everything_families.values())
    # the floor of any switch (conversion + hash, timed alone) is measured per family and tabled
    assert all(r["floors"]["convert"] > 0 and r["floors"]["hash"] > 0 for r in everything_families.values())
    assert all(b["install_ratio"] > 0 for r in everything_families.values() for b in r["backends"].values())
    assert "floor: fp16 -> fp32 conversion alone + hash alone, vs raw" in report
    everything = json.loads((tmp_path / "work" / "results.json").read_text())
    assert everything["startup"]["python -c 'import transformer_lens'"] > 0
    results = everything["14m"]
    # The loader's model computes what the naive TransformerLens path computes.
    assert results["load"]["logits_max_abs_diff"] < 1e-3
    memory = results["memory"]
    assert memory["peak"] >= memory["baseline"] > 0

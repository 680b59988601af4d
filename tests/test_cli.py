import pytest

from pythia_dynamics.cli import main
from pythia_dynamics.store import Store


def test_bad_input_exits_2_with_what_is_valid(capsys):
    assert main(["steps", "pythia-70m", "1500"]) == 2
    assert "valid steps: 0, 1, 2, 4, ..., 512, 1000" in capsys.readouterr().err
    assert main(["steps", "pythia-71m"]) == 2
    assert "Did you mean pythia-70m" in capsys.readouterr().err


def test_steps_lists_a_selection(capsys):
    assert main(["steps", "EleutherAI/pythia-160m-v0", "first:2,last"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1000 2000 143000"


def test_train_sweep_report(tmp_path, capsys):
    suite = tmp_path / "suite"
    assert main(["train-suite", str(suite), "--tiny", "--total-steps", "20", "--n-evenly-spaced", "2"]) == 0
    assert sorted(p.name for p in suite.glob("step*")) == ["step0", "step1", "step10", "step2", "step20", "step4", "step8"]
    store = tmp_path / "store"
    assert main(["sweep", str(suite), "--out", str(store), "--steps", "0,20", "--analyses", "weight_norm"]) == 2
    assert "Did you mean weight_norms" in capsys.readouterr().err
    assert main(["sweep", str(suite), "--out", str(store), "--steps", "0,20", "--analyses", "weight_norms"]) == 0
    assert "computed:  2 checkpoint(s)" in capsys.readouterr().out
    assert Store(store).steps("tiny-test") == [0, 20]
    assert main(["report", str(store), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1_000_000


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_everything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHIA_DYNAMICS_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--tiny", "--out", str(tmp_path / "demo")]) == 0
    first = capsys.readouterr().out
    assert "computed:  9 checkpoint(s)" in first and (tmp_path / "demo" / "report.html").exists()
    assert main(["demo", "--tiny", "--out", str(tmp_path / "demo")]) == 0
    assert "skipped:   9 already in the store" in capsys.readouterr().out

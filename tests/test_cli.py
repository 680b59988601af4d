import re

import pytest

from pythia_dynamics.catalog import all_pythia_names, resolve_pythia
from pythia_dynamics.cli import _parser, main
from pythia_dynamics.store import Store


def catalog_names_in(text: str) -> list[str]:
    return [word for word in re.findall(r"pythia-[\w.-]*\w", text) if word in all_pythia_names()]


def test_bad_input_exits_2_with_what_is_valid(capsys):
    assert main(["steps", "pythia-70m", "1500"]) == 2
    assert "valid steps: 0, 1, 2, 4, ..., 512, 1000" in capsys.readouterr().err
    assert main(["steps", "pythia-71m"]) == 2
    err = capsys.readouterr().err
    assert "'pythia-71m' is not an existing folder" in err and "Did you mean pythia-70m" in err
    assert "`pythia-dynamics models` lists" in err
    assert 1 <= len(catalog_names_in(err)) <= 3  # the closest names, not all 79


def test_a_misspelt_embedded_suite_is_suggested(capsys):
    assert main(["steps", "mini-pythai"]) == 2
    assert "Did you mean mini-pythia?" in capsys.readouterr().err


def test_models_lists_every_model_once_under_its_checkpoint_count(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    listed, counts = [], set()
    for block in out.split("\n\n"):
        heading, *rows = block.splitlines()
        if heading.endswith("checkpoints)"):
            count = int(re.search(r"\((\d+) checkpoints\)$", heading)[1])
            names = " ".join(rows).split()
            assert all(len(resolve_pythia(name).steps) == count for name in names), heading
            listed += names
            counts.add(count)
    assert sorted(listed) == sorted(all_pythia_names()) and counts == {154, 143}
    assert "pythia-19m -> pythia-70m-v0" in out and "pythia-2.7b -> pythia-2.8b-v0" in out
    assert "mini-pythia (37 checkpoints)" in out  # the embedded suite (README: 37 checkpoints)


@pytest.mark.parametrize(
    "text, value",
    [("true", True), ("YES", True), ("On", True), ("1", True), ("false", False), ("No", False), ("OFF", False), ("0", False)],
)
def test_boolean_options_read_the_usual_spellings(text, value):
    args = _parser().parse_args(["train-suite", "suite", "--use-parallel-residual", text])
    assert args.use_parallel_residual is value


@pytest.mark.parametrize("text", ["ture", "flase", "2", "", "y es"])
def test_a_boolean_option_refuses_anything_else(text, capsys):
    with pytest.raises(SystemExit) as exit:
        _parser().parse_args(["train-suite", "suite", "--use-parallel-residual", text])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --use-parallel-residual: {text!r} is not a boolean" in err
    assert "true/false, yes/no, on/off or 1/0" in err


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


def test_verify_lists_and_repairs_damaged_results(random_suite, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["sweep", str(random_suite), "--out", str(out), "--steps", "0,2", "--analyses", "weight_norms"]) == 0
    assert main(["verify", str(out)]) == 0
    assert "4 results of 1 model(s) read back" in capsys.readouterr().out  # weight_norms and the audit, 2 steps
    victim = next(out.rglob("weight_norms/step2.scalars.parquet"))
    victim.write_bytes(victim.read_bytes()[:64])
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "random-tiny weight_norms step 2: damaged: unreadable scalars file" in text and "--repair" in text
    assert victim.exists()
    assert main(["verify", str(out), "--repair"]) == 0
    assert "removed 1 damaged result(s)" in capsys.readouterr().out and not victim.exists()
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "is not a pythia_dynamics store" in capsys.readouterr().err


def test_sweep_refuses_other_options_and_recompute_replaces(random_suite, tmp_path, capsys):
    out = str(tmp_path / "store")
    sweep_args = ["sweep", str(random_suite), "--out", out, "--analyses", "weight_norms"]
    assert main([*sweep_args, "--steps", "0,2"]) == 0
    capsys.readouterr()
    assert main([*sweep_args, "--steps", "4", "--processed"]) == 2
    err = capsys.readouterr().err
    assert "computed differently from this sweep" in err and "--recompute weight_norms" in err
    assert Store(out).steps("random-tiny") == [0, 2]
    assert main([*sweep_args, "--steps", "4", "--processed", "--recompute", "weight_norms"]) == 0
    assert {i.provenance["load_options"]["processed"] for i in Store(out).results(analyses="weight_norms")} == {True}
    assert Store(out).steps("random-tiny") == [0, 2, 4]

import pytest

from pythia_dynamics.catalog import UnknownModelError, all_pythia_names, resolve_pythia


@pytest.mark.parametrize(
    "name, repo_id, n_steps",
    [
        ("pythia-70m", "EleutherAI/pythia-70m", 154),
        ("EleutherAI/pythia-70m", "EleutherAI/pythia-70m", 154),
        ("pythia-1.4b-deduped", "EleutherAI/pythia-1.4b-deduped", 154),
        ("pythia-410m-deduped-v0", "EleutherAI/pythia-410m-deduped-v0", 143),
        ("pythia-160m-seed3", "EleutherAI/pythia-160m-seed3", 154),
        ("pythia-14m", "EleutherAI/pythia-14m", 154),
        ("pythia-19m-v0", "EleutherAI/pythia-70m-v0", 143),  # the source study's name for it
        ("pythia-1.3b", "EleutherAI/pythia-1.4b", 154),
    ],
)
def test_resolve(name, repo_id, n_steps):
    model = resolve_pythia(name)
    assert model.repo_id == repo_id
    assert len(model.steps) == n_steps


def test_unknown_model_suggests_and_lists_valid_names():
    with pytest.raises(UnknownModelError, match="Did you mean pythia-70m") as info:
        resolve_pythia("pythia-7m")
    assert "pythia-12b-deduped-v0" in str(info.value)
    with pytest.raises(UnknownModelError):
        resolve_pythia("gpt2")


def test_catalog_covers_the_suite():
    names = set(all_pythia_names())
    sizes = ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
    assert {f"pythia-{s}" for s in sizes} <= names
    assert {f"pythia-{s}-deduped-v0" for s in sizes[2:]} <= names


def test_pythia_learning_rate_schedule():
    model = resolve_pythia("pythia-70m")
    assert model.lr_at(0) == 0.0
    assert model.lr_at(1430) == pytest.approx(1e-3)
    assert model.lr_at(143000) == pytest.approx(1e-4)
    lrs = [model.lr_at(s) for s in range(1430, 143001, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert set(model.lr_schedule()["lr_at_checkpoint"]) == {str(s) for s in model.steps}

import logging
import re

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
        ("pythia-19m-v0", "EleutherAI/pythia-70m-v0", 143),  # TransformerLens's alias for it
    ],
)
def test_resolve(name, repo_id, n_steps):
    model = resolve_pythia(name)
    assert model.repo_id == repo_id
    assert len(model.steps) == n_steps


# The first release's names (November 2022, by non-embedding size) name the weights that became the
# -v0 models when EleutherAI retrained the suite (Pythia README); the plain names are the retrained ones.
FIRST_RELEASE = {
    "pythia-19m": "pythia-70m-v0",
    "pythia-125m": "pythia-160m-v0",
    "pythia-350m": "pythia-410m-v0",
    "pythia-800m": "pythia-1b-v0",
    "pythia-1.3b": "pythia-1.4b-v0",
    "pythia-2.7b": "pythia-2.8b-v0",
    "pythia-6.7b": "pythia-6.9b-v0",
    "pythia-13b": "pythia-12b-v0",
}
FIRST_RELEASE_DEDUPED = {f"{old}-deduped": new.replace("-v0", "-deduped-v0") for old, new in FIRST_RELEASE.items()}


@pytest.mark.parametrize("legacy, v0", [*FIRST_RELEASE.items(), *FIRST_RELEASE_DEDUPED.items()])
def test_first_release_names_are_the_v0_models(legacy, v0, caplog):
    with caplog.at_level(logging.INFO, logger="pythia_dynamics.catalog"):
        model = resolve_pythia(legacy)
    assert model.name == v0 and model.repo_id == f"EleutherAI/{v0}" and len(model.steps) == 143
    assert f"{legacy} is the first release's name for {v0}" in caplog.text
    assert resolve_pythia(f"EleutherAI/{legacy.upper()}") == model
    assert resolve_pythia(f"{legacy}-v0") == model  # TransformerLens's spelling of the same alias


def test_v0_names_and_their_aliases_agree_with_transformer_lens():
    supported = pytest.importorskip("transformer_lens.supported_models")
    official = {name.split("/", 1)[1] for name in supported.OFFICIAL_MODEL_NAMES if name.startswith("EleutherAI/pythia-")}
    assert official <= set(all_pythia_names())
    assert {n for n in official if n.endswith("-v0")} == {n for n in all_pythia_names() if n.endswith("-v0")}
    for name, aliases in supported.MODEL_ALIASES.items():
        if name.startswith("EleutherAI/pythia-") and name.endswith("-v0"):
            for alias in aliases:
                if re.match(r"(EleutherAI/)?pythia-[\d.]+[mb]", alias):  # not its shorthands "pythia-v0" ...
                    assert resolve_pythia(alias).repo_id == name, alias


def test_unknown_model_suggests_the_closest_names_and_the_models_command():
    with pytest.raises(UnknownModelError, match="Did you mean pythia-70m") as info:
        resolve_pythia("pythia-7m")
    message = str(info.value)
    assert "`pythia-dynamics models` lists the known models" in message
    named = {word for word in re.findall(r"pythia-[\w.-]*\w", message)} & set(all_pythia_names())
    assert named == set(info.value.close) and 1 <= len(named) <= 3
    with pytest.raises(UnknownModelError) as info:
        resolve_pythia("gpt2")
    assert info.value.close == () and "Did you mean" not in str(info.value)


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

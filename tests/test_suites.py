"""Suites by name: each suite's real branch names, read from a Hub-style cache with HF_HUB_OFFLINE=1.

Every family's tiny random checkpoints (synthetic.tiny_family_config) are written into a Hub cache under
the suite's real revision names, each revision with different weights, so reading a step proves the
right branch was read. Only the online branch listing is mocked (HfApi.list_repo_refs): it is the one
route with no offline counterpart.
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from pythia_dynamics.catalog import UnknownModelError
from pythia_dynamics.cli import main
from pythia_dynamics.schedule import StepSelectionError
from pythia_dynamics.sources import HubSource, LocalSuite, NoCheckpointBranchesError, open_source, write_hub_cache
from pythia_dynamics.sources.hub import CheckpointsNotCachedError
from pythia_dynamics.suites import KNOWN_PATTERNS, Revision, RevisionPattern, parse_branch, parse_revisions
from pythia_dynamics.synthetic import tiny_family_config, write_random_suite

B = 10**9


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """{model_type: folder of a local suite with steps 0..3, every step's weights drawn afresh}."""
    root = tmp_path_factory.mktemp("families")
    return {
        kind: write_random_suite(root / kind, tiny_family_config(kind), [0, 1, 2, 3])
        for kind in ("gpt_neox", "gpt2", "llama", "olmo", "olmo2")
    }


def cache_of(tmp_path, repo_id, family_root, branches):
    """Write `branches` (a list of names) into a Hub cache, branch i holding the family's step i weights."""
    cache = tmp_path / "hub"
    write_hub_cache(cache, repo_id, {name: family_root / f"step{i}" for i, name in enumerate(branches)})
    return cache


def weights(folder):
    return load_file(folder / "model.safetensors")


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the revision parser, on each suite's real names --------------------------------------------------

@pytest.mark.parametrize(
    "model, branch, expected",
    [
        ("olmo-1b", "step20000-tokens84B", Revision("step20000-tokens84B", 20000, "", 84 * B)),
        ("olmo-2-1b", "stage1-step120000-tokens252B", Revision("stage1-step120000-tokens252B", 120000, "stage1", 252 * B)),
        ("olmo-2-7b", "step150-tokens1B", Revision("step150-tokens1B", 150, "stage1", B)),  # no 'stage1-' prefix
        ("olmo-2-7b", "stage2-ingredient1-step11931-tokens50B",
         Revision("stage2-ingredient1-step11931-tokens50B", 11931, "stage2-ingredient1", 50 * B)),
        ("alias-gpt2-small-x21", "checkpoint-400000", Revision("checkpoint-400000", 400000)),
        ("smollm2-1.7b", "step-125000", Revision("step-125000", 125000)),
        ("smollm3-3b", "stage1-step-40000", Revision("stage1-step-40000", 40000)),
        ("amber", "ckpt_358", Revision("ckpt_358", 358)),
        ("pythia-70m", "step143000", Revision("step143000", 143000)),
    ],
)  # fmt: skip
def test_each_suite_parses_its_real_branch_names(model, branch, expected):
    source = HubSource(model)
    patterns = source.model.patterns
    assert parse_branch(branch, patterns) == expected
    assert parse_branch("main", patterns) is None


def test_fixed_schedules_name_branches_the_way_the_cards_do():
    assert HubSource("amber").revision(5) == "ckpt_005" and len(HubSource("amber").steps) == 360
    crfm = HubSource("stanford-crfm/arwen-gpt2-medium-x21")
    assert len(crfm.steps) == 609 and crfm.steps[:3] == [0, 10, 20] and crfm.revision(400000) == "checkpoint-400000"
    pythia = HubSource("pythia-70m")
    assert pythia.revision(1000) == "step1000" and pythia.tokens_seen()[143000] == 143000 * 2_097_152
    assert HubSource("pythia-70m-v0").tokens_seen() == {}  # the first release's batch sizes are not recorded


def test_branches_without_prefix_bare_numbers_and_order():
    branches = ["main", "200", "1000", "30", "refs/pr/1"]
    revisions = parse_revisions(branches, (RevisionPattern("{step}"),))
    assert [r.step for r in revisions] == [30, 200, 1000]  # training order, not the listing's
    with pytest.raises(ValueError, match="'step1000' and 'step-1000' both hold step 1000"):
        parse_revisions(["step1000", "step-1000"], (RevisionPattern("step{step}"), RevisionPattern("step-{step}")))
    with pytest.raises(ValueError, match=r"must contain \{step\} exactly once"):
        RevisionPattern("ckpt_{n}")
    with pytest.raises(ValueError, match=r"put the unit after \{tokens\}"):
        RevisionPattern("step{step}-tokens{tokens}")


# --- each family in a Hub cache under its suite's names, offline -------------------------------------

def test_olmo_reads_the_branch_it_was_asked_for(families, tmp_path):
    branches = ["step2000-tokens8B", "step0-tokens0B", "step1000-tokens4B"]  # listed out of order
    cache = cache_of(tmp_path, "allenai/OLMo-1B-hf", families["olmo"], branches)
    source = HubSource("olmo-1b", cache_dir=cache)
    assert source.steps == [0, 1000, 2000]
    assert source.revision(1000) == "step1000-tokens4B"
    assert source.tokens_seen() == {0: 0, 1000: 4 * B, 2000: 8 * B}
    assert same(source.read_state_dict(1000), weights(families["olmo"] / "step2"))  # branch 2 was step1000's
    assert not same(source.read_state_dict(2000), weights(families["olmo"] / "step2"))
    assert source.hf_config().model_type == "olmo"
    meta = source.metadata()
    assert meta | {"suite": "olmo", "family": "olmo", "tokens_seen": {"0": 0, "1000": 4 * B, "2000": 8 * B}} == meta
    assert "HF_HUB_OFFLINE" in meta["revisions_listed_from"]


def test_olmo2_series_share_steps_and_stay_apart(families, tmp_path):
    branches = ["stage1-step0-tokens0B", "step150-tokens1B", "stage1-step1000-tokens5B",
                "stage2-ingredient1-step1000-tokens5B"]  # fmt: skip
    cache = cache_of(tmp_path, "allenai/OLMo-2-0425-1B", families["olmo2"], branches)
    main_run = HubSource("olmo-2-1b", cache_dir=cache)
    assert main_run.name == "allenai/OLMo-2-0425-1B" and main_run.steps == [0, 150, 1000]
    stage2 = HubSource("olmo-2-1b:stage2-ingredient1", cache_dir=cache)
    assert stage2.name == "allenai/OLMo-2-0425-1B:stage2-ingredient1" and stage2.steps == [1000]
    assert HubSource("olmo-2-1b", series="stage2-ingredient1", cache_dir=cache).steps == [1000]
    assert same(main_run.read_state_dict(1000), weights(families["olmo2"] / "step2"))
    assert same(stage2.read_state_dict(1000), weights(families["olmo2"] / "step3"))
    assert same(main_run.read_state_dict(150), weights(families["olmo2"] / "step1"))  # the unprefixed branch
    with pytest.raises(NoCheckpointBranchesError, match="series 'stage2-ingredient9'.*'stage1', 'stage2-ingredient1'"):
        HubSource("olmo-2-1b:stage2-ingredient9", cache_dir=cache).steps


@pytest.mark.parametrize(
    "model, repo_id, family, branches, steps, tokens",
    [
        ("alias-gpt2-small-x21", "stanford-crfm/alias-gpt2-small-x21", "gpt2",
         ["checkpoint-0", "checkpoint-10", "checkpoint-400000"], [0, 10, 400000], {}),
        ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints", "llama",
         ["step-240000", "step-480000", "step-720000"], [240000, 480000, 720000],
         {s: s * 1_048_576 for s in (240000, 480000, 720000)}),
        ("smollm3-3b", "HuggingFaceTB/SmolLM3-3B-checkpoints", "llama",  # SmolLM3's own family is smollm3
         ["stage2-step-3480000", "stage1-step-40000", "stage3-step-4240000"], [40000, 3480000, 4240000],
         {s: s * 2_359_296 for s in (40000, 3480000, 4240000)}),
        ("amber", "LLM360/Amber", "llama", ["ckpt_000", "ckpt_001", "ckpt_359"], [0, 1, 359], {}),
        ("hub:someone/run", "someone/run", "gpt_neox", ["100", "20", "main"], [20, 100], {}),
    ],
)  # fmt: skip
def test_every_family_reads_its_revisions_offline(families, tmp_path, model, repo_id, family, branches, steps, tokens):
    named = [b for b in branches if b != "main"]
    cache = cache_of(tmp_path, repo_id, families[family], named)
    source = HubSource(model, cache_dir=cache)
    cached = [s for s in source.steps if source.is_cached(s)]
    assert cached == steps
    for step in steps:  # the branch named for `step` was written with family step named.index(...)'s weights
        expected = weights(families[family] / f"step{named.index(source.revision(step))}")
        assert same(source.read_state_dict(step), expected), step
    assert {s: t for s, t in source.tokens_seen().items() if s in steps} == tokens
    assert source.hf_config().model_type == family


def test_an_uncached_revision_is_named_by_its_real_branch(families, tmp_path):
    cache = cache_of(tmp_path, "stanford-crfm/alias-gpt2-small-x21", families["gpt2"], ["checkpoint-0"])
    source = HubSource("alias-gpt2-small-x21", cache_dir=cache)
    with pytest.raises(CheckpointsNotCachedError, match="stanford-crfm/alias-gpt2-small-x21@checkpoint-20;.*"
                                                        "--revision checkpoint-20"):  # fmt: skip
        source.preflight([0, 20])


def test_a_published_branch_list_file_is_read(families, tmp_path):
    # OLMo publishes revisions.txt: with it cached, uncached branches are known (and named when missing).
    folder = shutil.copytree(families["olmo"] / "step0", tmp_path / "main")
    (folder / "revisions.txt").write_text("step0-tokens0B\nstep1000-tokens4B\nstep2000-tokens8B\n")
    write_hub_cache(tmp_path / "hub", "allenai/OLMo-1B-hf", {"step0-tokens0B": folder})
    source = HubSource("olmo-1b", cache_dir=tmp_path / "hub")
    assert source.steps == [0, 1000, 2000]
    with pytest.raises(CheckpointsNotCachedError, match=r"allenai/OLMo-1B-hf@step2000-tokens8B; .*step0-tokens0B"):
        source.preflight([0, 2000])


def test_revision_patterns_for_any_repo(families, tmp_path):
    cache = cache_of(tmp_path, "org/run", families["llama"], ["ckpt_10", "ckpt_30", "ckpt_20"])
    source = HubSource("hub:org/run", revision_pattern="ckpt_{step}", cache_dir=cache)
    assert source.steps == [10, 20, 30] and source.revision(30) == "ckpt_30"
    assert same(source.read_state_dict(20), weights(families["llama"] / "step2"))
    assert HubSource("hub:org/run", cache_dir=cache).steps == [10, 20, 30]  # ckpt_{step} found among the known ones
    with pytest.raises(NoCheckpointBranchesError, match=r"no branch of org/run is named like run-\{step\}.*ckpt_10"):
        HubSource("hub:org/run", revision_pattern="run-{step}", cache_dir=cache).steps
    with pytest.raises(ValueError, match="hub:ORG/NAME"):
        HubSource("hub:no-slash")


def test_a_pattern_of_ones_own_reads_tokens_and_overrides_a_suites(families, tmp_path):
    cache = cache_of(tmp_path, "org/run", families["olmo2"], ["run-5-tokens2M", "run-1-tokens1M"])
    source = HubSource("hub:org/run", revision_pattern="run-{step}-tokens{tokens}M", cache_dir=cache)
    assert source.steps == [1, 5] and source.tokens_seen() == {1: 10**6, 5: 2 * 10**6}
    assert source.select("tokens:1.5M-") == [5]
    olmo2 = cache_of(tmp_path / "olmo2", "allenai/OLMo-2-0425-1B", families["olmo2"], ["stage1-step7-tokens1B", "ckpt-3"])
    custom = HubSource("olmo-2-1b", revision_pattern="ckpt-{step}", cache_dir=olmo2)
    assert custom.steps == [3] and custom.name == "allenai/OLMo-2-0425-1B"
    assert same(custom.read_state_dict(3), weights(families["olmo2"] / "step1"))
    with pytest.raises(NoCheckpointBranchesError, match=r"series 'stage9'.*'' \(the default\)"):
        HubSource("pythia-70m", series="stage9", cache_dir=cache_of(tmp_path / "p", "EleutherAI/pythia-70m",
                                                                   families["gpt_neox"], ["step0"])).steps


def test_main_only_and_empty_caches_say_what_to_do(families, tmp_path):
    cache = tmp_path / "hub"
    write_hub_cache(cache, "org/single", {"main": families["gpt2"] / "step0"})
    with pytest.raises(NoCheckpointBranchesError, match="only the branch 'main'.*--revision-pattern"):
        HubSource("hub:org/single", cache_dir=cache).steps
    with pytest.raises(NoCheckpointBranchesError, match=r"no branch of allenai/OLMo-1B-hf is known \(branches, from the "
                                                        r"Hugging Face cache .*HF_HUB_OFFLINE.*: none\)"
                                                        r".*hf download allenai/OLMo-1B-hf --revision <branch>"):  # fmt: skip
        HubSource("olmo-1b", cache_dir=tmp_path / "empty").steps


def test_unknown_names_list_near_matches():
    with pytest.raises(UnknownModelError, match="Did you mean olmo-1b") as caught:
        HubSource("olmo-1bb")
    assert "olmo-1b" in caught.value.close and "`pythia-dynamics models`" in str(caught.value)
    with pytest.raises(UnknownModelError, match="Did you mean smollm2-135m"):
        open_source("smollm2-135")
    with pytest.raises(UnknownModelError, match="Did you mean pythia-70m"):
        open_source("pythia-71m")


def test_selecting_by_tokens_seen(families, tmp_path):
    branches = ["step-240000", "step-480000", "step-720000"]
    cache = cache_of(tmp_path, "HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints", families["llama"], branches)
    source = HubSource("smollm2-135m", cache_dir=cache)
    assert source.select("tokens:300B-600B") == [480000]  # 480000 x 1,048,576 = 503B
    assert source.select("tokens:250B") == [240000]  # the first at or past 250B (251.7B)
    assert source.select("tokens:-0.6T,last") == [240000, 480000, 720000]
    assert HubSource("pythia-70m").select("tokens:2B-4.2B") == [1000, 2000]  # 2.10B and 4.19B
    with pytest.raises(StepSelectionError, match="selects no checkpoint: tokens seen run from 252B to 755B"):
        source.select("tokens:1T-2T")
    with pytest.raises(StepSelectionError, match="does not say how many tokens"):
        HubSource("amber").select("tokens:1B-")
    with pytest.raises(StepSelectionError, match="cannot read token count 'ten'"):
        source.select("tokens:ten-")


def test_online_listing_uses_the_hubs_refs(families, tmp_path, monkeypatch):
    # Mocked: the Hub's branch list is the one route that has no offline counterpart.
    from types import SimpleNamespace

    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kw: SimpleNamespace(id=repo_id))
    listed = ["main", "stage1-step2000-tokens9B", "stage1-step1000-tokens5B", "stage2-ingredient2-step5-tokens1B"]
    monkeypatch.setattr(HfApi, "list_repo_refs", lambda self, repo_id, **kw: SimpleNamespace(
        branches=[SimpleNamespace(name=n) for n in listed]))  # fmt: skip
    source = HubSource("olmo-2-1b", cache_dir=tmp_path / "empty")
    assert source.steps == [1000, 2000] and source.listed_from == "the Hub's branch list"
    assert HubSource("olmo-2-1b:stage2-ingredient2", cache_dir=tmp_path / "empty").revision(5) == listed[-1]


# --- local folders named the way the suites name their branches --------------------------------------

def test_local_folders_in_suite_naming(families, tmp_path):
    root = tmp_path / "trainer-output"
    root.mkdir()
    for i, name in enumerate(["checkpoint-500", "step1000-tokens4B", "ckpt_1500", "step2000"]):
        shutil.copytree(families["gpt2"] / f"step{i}", root / name)
    suite = LocalSuite(root)
    assert suite.steps == [500, 1000, 1500, 2000]
    assert suite.tokens_seen() == {1000: 4 * B}
    assert same(suite.read_state_dict(1500), weights(families["gpt2"] / "step2"))
    assert suite.hf_config().model_type == "gpt2"
    shutil.copytree(families["gpt2"] / "step0", root / "checkpoint-2000")
    with pytest.raises(ValueError, match="folders checkpoint-2000 and step2000 both hold step 2000"):
        LocalSuite(root)


# --- the CLI ---------------------------------------------------------------------------------------

def test_steps_command_lists_branches_and_tokens(families, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    cache = cache_of(tmp_path, "allenai/OLMo-1B-hf", families["olmo"], ["step0-tokens0B", "step1000-tokens4B"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert main(["steps", "olmo-1b", "tokens:1B-"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "allenai/OLMo-1B-hf: 1000 (1 checkpoints)"
    assert out[1].split() == ["1000", "step1000-tokens4B", "4B", "tokens"] and out[-1] == "1000"
    olmo2 = cache_of(tmp_path / "olmo2", "allenai/OLMo-2-0425-1B", families["olmo2"],
                     ["stage1-step9-tokens1B", "stage2-ingredient2-step4-tokens1B"])  # fmt: skip
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(olmo2))
    assert main(["steps", "olmo-2-1b", "--series", "stage2-ingredient2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("allenai/OLMo-2-0425-1B:stage2-ingredient2: 4 ")
    assert out[1].split()[:2] == ["4", "stage2-ingredient2-step4-tokens1B"]
    assert main(["steps", "hub:allenai/OLMo-2-0425-1B", "--revision-pattern", "ckpt_{step}"]) == 2
    err = capsys.readouterr().err
    assert "no branch of allenai/OLMo-2-0425-1B is named like ckpt_{step}" in err and "stage1-step9-tokens1B" in err


def test_models_lists_every_suite_with_its_naming(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for text in ("step{N}-tokens{M}B", "stage2-ingredient{K}-step{N}-tokens{M}B", "checkpoint-{N}", "step-{N}",
                 "ckpt_{NNN}", "allenai/OLMo-2-0425-1B", "stanford-crfm/eowyn-gpt2-medium-x777", "LLM360/Amber",
                 "pythia-160m-data-seed3", "hub:ORG/NAME"):  # fmt: skip
        assert text in out, text
    assert all(pattern in KNOWN_PATTERNS for pattern in (RevisionPattern("ckpt_{step}"), RevisionPattern("{step}")))

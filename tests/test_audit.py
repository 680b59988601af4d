"""The checkpoint integrity audit, on suites with planted defects: it finds exactly the planted steps, for
the planted reason, and nothing on a clean trained suite."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import xxhash
from safetensors.torch import load_file, save_file

from pythia_dynamics.audit import audit
from pythia_dynamics.audit.report import AUDIT_VERSION
from pythia_dynamics.audit.observe import FeatureReferences, tensor_features
from pythia_dynamics.audit.hub_hashes import compare_branch_hashes, weight_file_hashes
from pythia_dynamics.catalog import PythiaModel, known_defects
from pythia_dynamics.loading import content_hash, hash_checkpoint
from pythia_dynamics.architectures import is_non_weight
from pythia_dynamics.synthetic import tiny_config, write_random_suite

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]
LISTING = Path(__file__).parent / "data" / "hub_listing_planted.json"
TENSOR = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"


def verdicts(report) -> dict[int, set[str]]:
    """{suspect step: its reason codes}."""
    return {s: set(report.verdicts[s].codes) for s in report.suspect_steps}


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def rewrite(folder: Path, tensors: dict) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def planted_random(tmp_path_factory):
    """Random steps with step1 = step0 (a pair), 16 = 32 = 8 (a run), 64 = the final step 128."""
    return write_random_suite(tmp_path_factory.mktemp("audit") / "planted", tiny_config(), STEPS,
                              identical=[(1, 0), (16, 8), (32, 8), (64, 128)])  # fmt: skip


@pytest.fixture
def trained_copy(tiny_suite, tmp_path):
    """A copy of the trained mini suite to plant defects in."""
    return shutil.copytree(tiny_suite, tmp_path / "suite")


def hashes_by_definition(state_dict) -> tuple[str, dict[str, str]]:
    """The definitions, written out, one tensor after another: each tensor's dtype, shape and bytes; then
    name and tensor hash in name order."""
    digest, expected = xxhash.xxh3_128(), {}
    for name in sorted(state_dict):
        if not is_non_weight(name):
            t = state_dict[name].contiguous()
            expected[name] = xxhash.xxh3_128(f"{t.dtype}|{tuple(t.shape)}|".encode() + t.view(torch.uint8).numpy().tobytes()).hexdigest()
            digest.update(f"{name}|{expected[name]}|".encode())
    return digest.hexdigest(), expected


def test_hash_checkpoint_is_the_content_hash_and_hashes_each_tensor(random_suite):
    state_dict = weights(random_suite / "step2")
    whole, per_tensor = hash_checkpoint(state_dict)
    digest, expected = hashes_by_definition(state_dict)
    assert whole == digest == content_hash(state_dict) and per_tensor == expected
    changed = dict(state_dict, **{TENSOR: state_dict[TENSOR] + 1})
    _, after = hash_checkpoint(changed)
    assert {n for n in per_tensor if per_tensor[n] != after[n]} == {TENSOR}
    assert hash_checkpoint({TENSOR: state_dict[TENSOR].half()})[1][TENSOR] != per_tensor[TENSOR]  # dtype counts


def test_distance_features_estimate_the_exact_norms_and_distances():
    """The sampled, whole-checkpoint features against the exact float64 definition, one matrix at a time:
    within 3% on large matrices (sampled), to float32 rounding on small ones (every entry), exactly 0 for a
    copy of a reference, NaN where a reference is missing, of another shape or the tensor is not floating."""
    generator = torch.Generator().manual_seed(0)

    def draw(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).half()

    shapes = {"big": (2048, 512), "wide": (512, 2048), "small": (24, 40), "tall": (50304, 64)}
    initial = {n: draw(*s) for n, s in shapes.items()}
    final = {n: draw(*s, scale=3.0) for n, s in shapes.items()}
    middle = {n: (0.5 * initial[n].float() + 0.5 * final[n].float()).half() for n in shapes}
    references = FeatureReferences(initial, final)
    found = references.features_of(middle)
    for name, weight in middle.items():
        exact = tensor_features(weight, initial[name], final[name], exact=True)
        tolerance = 1e-5 if weight.numel() <= 1 << 14 else 0.03
        assert found[name] == pytest.approx(exact, rel=tolerance), name
    assert references.features_of(final)["big"][2] == 0.0 and references.features_of(initial)["small"][1] == 0.0
    other = FeatureReferences({"big": initial["big"][:100]}, {}).features_of({"big": middle["big"], "steps": torch.arange(6).view(2, 3)})
    assert math.isnan(other["big"][1]) and math.isnan(other["big"][2]) and other["big"][0] > 0
    assert all(math.isnan(v) for v in other["steps"])


def test_identical_pairs_runs_and_copies_of_the_final(planted_random):
    report = audit(planted_random, progress=False)
    assert verdicts(report) == {1: {"identical"}, 16: {"identical"}, 32: {"identical"}, 64: {"identical"}}
    reasons = {s: " ".join(r.text for r in report.verdicts[s].reasons) for s in report.suspect_steps}
    assert "identical to step 0" in reasons[1]
    assert "identical to step 128" in reasons[64]  # the final checkpoint is the genuine one of its group
    assert "run of 3 identical consecutive checkpoints, steps 8–32" in reasons[16]
    assert sorted(map(sorted, report.groups)) == [[0, 1], [8, 16, 32], [64, 128]]


def test_one_tensor_from_another_step(trained_copy):
    planted = weights(trained_copy / "step4")
    planted[TENSOR] = weights(trained_copy / "step30")[TENSOR]
    rewrite(trained_copy / "step4", planted)
    report = audit(trained_copy, progress=False)
    assert verdicts(report) == {4: {"partial"}}
    assert "1 of its" in report.verdicts[4].reasons[0].text and "step 30" in report.verdicts[4].reasons[0].text


def test_a_shard_of_the_final_checkpoint(planted_random, tmp_path):
    """As pythia-12b step50000 (#206): a sharded checkpoint whose first shard is the final model's."""
    suite = shutil.copytree(planted_random, tmp_path / "sharded", ignore=shutil.ignore_patterns("step1", "step16", "step32", "step64"))
    (suite / "suite.json").write_text(json.dumps({"name": "sharded", "checkpoint_steps": [0, 2, 4, 8, 128]}))
    for step in (0, 2, 4, 8, 128):
        folder = suite / f"step{step}"
        state_dict = weights(folder)
        (folder / "model.safetensors").unlink()
        names = sorted(state_dict)
        shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                  "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
        for shard, keys in shards.items():
            save_file({k: state_dict[k].contiguous() for k in keys}, folder / shard)
        index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(suite / "step128" / "model-00001-of-00002.safetensors", suite / "step4" / "model-00001-of-00002.safetensors")
    report = audit(suite, progress=False)
    assert verdicts(report) == {4: {"partial"}}
    assert "whole shard(s) equal to step 128's: model-00001-of-00002.safetensors" in report.verdicts[4].reasons[0].text


def test_a_middle_step_near_the_final_is_a_trajectory_break(trained_copy):
    """Final-era weights under a middle step's name (as pythia-2.8b, #205), not byte-identical: the
    trajectory check finds it, and only it (not its neighbours, whose lines ran through it)."""
    final = weights(trained_copy / "step40")
    generator = torch.Generator().manual_seed(0)
    rewrite(trained_copy / "step10", {k: v + 1e-4 * torch.randn(v.shape, generator=generator) for k, v in final.items()})
    report = audit(trained_copy, progress=False)
    assert verdicts(report) == {10: {"trajectory"}}
    assert "distance to final" in report.verdicts[10].reasons[0].text
    assert "smaller" in report.verdicts[10].reasons[0].text


def test_a_missing_step_a_config_change_and_a_dtype_change(trained_copy):
    shutil.rmtree(trained_copy / "step8")  # suite.json still lists it
    config = json.loads((trained_copy / "step20" / "config.json").read_text())
    (trained_copy / "step20" / "config.json").write_text(json.dumps(config | {"layer_norm_eps": 1e-3}))
    rewrite(trained_copy / "step2", {k: v.half() for k, v in weights(trained_copy / "step2").items()})
    report = audit(trained_copy, progress=False)
    assert verdicts(report) == {8: {"missing"}, 20: {"config"}, 2: {"layout"}}
    assert "layer_norm_eps: 0.001" in report.verdicts[20].reasons[0].text
    assert "float16" in report.verdicts[2].reasons[0].text


def test_a_clean_trained_suite_gives_no_verdict(tiny_suite, tmp_path):
    report = audit(tiny_suite, store=tmp_path / "store", progress=False)
    assert report.suspect_steps == [] and not report.groups
    assert report.steps == [0, 1, 2, 4, 8, 10, 20, 30, 40]
    assert all(report.observations[s].features for s in report.steps)  # the trajectory was really scored


def test_audit_rows_in_the_store(planted_random, tmp_path):
    from pythia_dynamics.store import Store

    audit(planted_random, store=tmp_path / "store", progress=False)
    store = Store(tmp_path / "store")
    suspect = store.scalars(analysis="audit", stat="suspect")
    assert dict(zip(suspect["step"], suspect["value"])) == {s: float(s in (1, 16, 32, 64)) for s in STEPS}
    identical = store.scalars(analysis="audit", stat="identical")
    assert set(identical[identical["value"] == 1]["step"]) == {1, 16, 32, 64}
    reasons = store.arrays(analysis="audit", name="reasons")
    assert set(reasons["step"]) == {1, 16, 32, 64}
    assert reasons[reasons["step"] == 1]["text"].iloc[0][0].startswith("identical: weights identical to step 0")
    info = {i.step: i.provenance for i in store.results(analyses=["audit"])}
    assert info[1]["analysis_version"] == AUDIT_VERSION and info[1]["content_hash"] == info[0]["content_hash"]


def test_hub_listing_analysis_on_a_recorded_listing():
    recorded = json.loads(LISTING.read_text())
    assert weight_file_hashes(recorded["trees"]["step2"]) == {
        "model-00001-of-00002.safetensors": "2" * 64, "model-00002-of-00002.safetensors": "3" * 64,
    }  # fmt: skip
    schedule = [0, 1, 2, 4, 1000, 2000, 3000, 143000]
    report = compare_branch_hashes(recorded["repo_id"], recorded["trees"], schedule)
    assert {s: {f.code for f in r} for s, r in report.findings.items()} == {1: {"hub"}, 3000: {"hub"}, 2000: {"missing"}}
    assert "same weight files (LFS sha256) as step0" in report.findings[1][0].text
    assert "model-00001-of-00002.safetensors" in report.findings[3000][0].text and "step143000" in report.findings[3000][0].text
    assert report.groups == [[0, 1]] and report.missing == [2000]


def test_known_defects_are_in_the_catalog_with_their_issues():
    issues = {d.issue: d for d in known_defects("EleutherAI/pythia-2.8b")}
    assert set(issues) == {83, 198, 195, 205}
    assert issues[195].affected_steps(PythiaModel("2.8b").steps) == [s for s in PythiaModel("2.8b").steps if 1 <= s <= 6300]
    assert issues[205].affected_steps(PythiaModel("2.8b").steps) == []  # the report lists no branches
    assert {d.issue for d in known_defects("pythia-12b")} == {83, 198, 206}
    assert [d.steps for d in known_defects("pythia-12b") if d.issue == 206] == [(50000, 58000)]
    assert known_defects("my-suite") == []
    assert issues[83].url == "https://github.com/EleutherAI/pythia/issues/83"


def test_known_defects_flag_hub_checkpoints_offline(random_suite, tmp_path):
    """A Hub model in the offline cache: #83 and #198 flag steps 1 and 2 from the catalog, and step1 is
    also found identical to step0 by its hash."""
    from pythia_dynamics.sources import HubSource, write_hub_cache

    write_hub_cache(tmp_path / "hub", "EleutherAI/pythia-14m",
                    {f"step{s}": random_suite / f"step{s}" for s in (0, 1, 2)})  # fmt: skip
    report = audit(HubSource("pythia-14m", cache_dir=tmp_path / "hub"), "0,1,2", progress=False)
    assert verdicts(report) == {1: {"identical", "known"}, 2: {"known"}}
    assert "pythia#198" in report.verdicts[2].reasons[0].text
    assert any("first or final checkpoint cannot be read" in note for note in report.notes)  # step143000 is not cached
    assert {d.issue for d in report.known} == {83, 198}


def test_sweep_audits_with_its_own_reads_and_names_the_suspects(planted_random, tmp_path, monkeypatch):
    from pythia_dynamics import sweep
    from pythia_dynamics.sources import LocalSuite
    from pythia_dynamics.store import Store

    reads = []
    original = LocalSuite.read_state_dict
    monkeypatch.setattr(LocalSuite, "read_state_dict", lambda self, step: reads.append(step) or original(self, step))
    summary = sweep(planted_random, tmp_path / "store", analyses="weight_norms", progress=False)
    assert sorted(summary.suspect) == [1, 16, 32, 64]
    assert "suspect:   4 checkpoint(s) by the integrity audit" in str(summary)
    assert sorted(summary.done) == STEPS
    # Each checkpoint read once: the audit observed the sweep's reads (the first and final checkpoints,
    # read first as the audit's references, were handed to the sweep rather than read again).
    assert sorted(reads) == STEPS
    store = Store(tmp_path / "store")
    assert store.steps(planted_random.name, "audit") == STEPS
    assert store.coverage().empty  # audit rows are not counted as an analysis that could be missing

    reads.clear()  # a resumed sweep: nothing to compute, the audit reuses the stored observations
    again = sweep(planted_random, tmp_path / "store", analyses="weight_norms", progress=False)
    assert reads == [0, 128] and sorted(again.suspect) == [1, 16, 32, 64]  # only the references, for their hashes


def test_sweep_can_skip_the_audit_or_exclude_the_suspects(planted_random, tmp_path):
    from pythia_dynamics import sweep
    from pythia_dynamics.store import Store

    plain = sweep(planted_random, tmp_path / "plain", analyses="weight_norms", audit=False, progress=False)
    assert plain.suspect == {} and "audit" not in Store(tmp_path / "plain").analyses()
    summary = sweep(planted_random, tmp_path / "store", analyses="weight_norms", exclude_suspect=True, progress=False)
    assert summary.excluded == [1, 16, 32, 64] and "(left out of this sweep)" in str(summary)
    store = Store(tmp_path / "store")
    assert store.steps(planted_random.name, "weight_norms") == [0, 2, 4, 8, 128]
    assert store.steps(planted_random.name, "audit") == STEPS


def test_report_opens_with_the_audit_and_marks_suspects_in_figures_over_training(planted_random, tmp_path):
    from pythia_dynamics import sweep
    from pythia_dynamics.figures import SectionInputs, render_section
    from pythia_dynamics.figures.sections import mark_suspect_steps, stored_suspects
    from pythia_dynamics.report import build_report
    from pythia_dynamics.store import Store

    sweep(planted_random, tmp_path / "store", analyses="weight_norms", progress=False)
    page = build_report([tmp_path / "store"], tmp_path / "report.html").read_text()
    sections = [part.split('"')[0] for part in page.split('<section id="')[1:]]
    assert sections[0] == "section-audit" and "section-weight_norms" in sections
    store = Store(tmp_path / "store")
    suspects = stored_suspects(store.scalars(), store.arrays())
    assert {m: sorted(s) for m, s in suspects.items()} == {planted_random.name: [1, 16, 32, 64]}
    inputs = SectionInputs(store.scalars(analysis="weight_norms"), store.arrays(analysis="weight_norms"), {})
    figure = render_section("weight_norms", inputs).figures[0]
    panels = {trace.xaxis for trace in figure.data}
    mark_suspect_steps(figure, suspects)
    marks = [t for t in figure.data if t.name == "suspect checkpoint (audit)"]
    assert {t.xaxis for t in marks} == panels  # every panel of the figure
    assert sorted({x for x in marks[0].x if x is not None}) == [1, 16, 32, 64]
    assert "identical to step 0" in marks[0].hovertext[0]


def test_cli_audit_prints_the_table_and_writes_the_store(planted_random, tmp_path, capsys):
    from pythia_dynamics.cli import main
    from pythia_dynamics.store import Store

    assert main(["audit", str(planted_random), "--steps", "0:8", "--out", str(tmp_path / "store")]) == 1
    out = capsys.readouterr().out
    assert "5 checkpoint(s), 1 suspect" in out and "identical to step 0" in out
    assert Store(tmp_path / "store").steps(planted_random.name, "audit") == [0, 1, 2, 4, 8]
    assert main(["audit", str(planted_random), "--steps", "2:8"]) == 0
    assert "3 checkpoint(s), 0 suspect" in capsys.readouterr().out


def test_cli_audit_with_a_recorded_hub_listing(random_suite, tmp_path, capsys, monkeypatch):
    from pythia_dynamics.cli import main
    from pythia_dynamics.sources import write_hub_cache

    write_hub_cache(tmp_path / "hub", "EleutherAI/pythia-14m", {f"step{s}": random_suite / f"step{s}" for s in (0, 2)})
    listing = json.loads(LISTING.read_text())
    recorded = tmp_path / "listing.json"
    recorded.write_text(json.dumps(listing | {"repo_id": "EleutherAI/pythia-14m"}))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # where a Hub name is looked up
    code = main(["audit", "pythia-14m", "--steps", "0,2", "--hub-listing", str(recorded)])
    out = capsys.readouterr().out
    assert code == 1
    assert "Hub file hashes of EleutherAI/pythia-14m" in out
    assert "step1: hub: the Hub serves the same weight files (LFS sha256) as step0" in out
    assert "step3000: hub: weight file model-00001-of-00002.safetensors" in out


def test_fetch_branch_listing_turns_the_hub_api_answers_into_a_listing(monkeypatch):
    """The online wrapper, fed the recorded answers through huggingface_hub's own types (no network)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import GitRefInfo, GitRefs, RepoFile, RepoFolder

    from pythia_dynamics.audit.hub_hashes import fetch_branch_listing

    recorded = json.loads(LISTING.read_text())
    refs = GitRefs(branches=[GitRefInfo(b["name"], b["ref"], b["targetCommit"]) for b in recorded["refs"]["branches"]],
                   converts=[], tags=[])  # fmt: skip
    trees = {b: [RepoFile(**e) for e in entries] + [RepoFolder(type="directory", oid="0" * 40, path="extra")]
             for b, entries in recorded["trees"].items()}  # fmt: skip
    monkeypatch.setattr(HfApi, "list_repo_refs", lambda self, repo_id, **kw: refs)
    monkeypatch.setattr(HfApi, "list_repo_tree", lambda self, repo_id, revision=None, expand=False, **kw: iter(trees[revision]))
    listing = fetch_branch_listing(recorded["repo_id"])
    assert set(listing) == set(recorded["trees"])
    assert {b: weight_file_hashes(e) for b, e in listing.items()} == {b: weight_file_hashes(e) for b, e in recorded["trees"].items()}


def test_hub_listing_of_a_suite_with_its_own_branch_names(tmp_path, monkeypatch):
    """OLMo's branches ('step1000-tokens4B') are matched to steps through the source's own branch list."""
    from pythia_dynamics.audit import _hub_report
    from pythia_dynamics.sources import HubSource

    def tree(*shas):
        return [{"type": "file", "path": f"model-0000{i}.safetensors", "size": 1, "lfs": {"oid": sha, "size": 1}}
                for i, sha in enumerate(shas, 1)]  # fmt: skip

    listing = {"main": tree("c" * 64), "step0-tokens0B": tree("a" * 64), "step1000-tokens4B": tree("a" * 64),
               "step2000-tokens8B": tree("c" * 64)}  # fmt: skip
    source = HubSource("hub:someone/olmo-like", revision_pattern="step{step}-tokens{tokens}B", cache_dir=tmp_path)
    monkeypatch.setattr(source, "_list_branches", lambda: (list(listing), "a planted listing"))
    report = _hub_report(source, hub=True, listing=listing)
    assert report.repo_id == "someone/olmo-like"
    assert report.groups == [[0, 1000]] and set(report.findings) == {1000}
    assert not report.missing


def test_large_tensors_hashed_on_several_threads_give_the_same_hashes():
    # Tensors of PARALLEL_HASH_BYTES and more go to a thread pool: three planted ones of different sizes
    # (finished in a different order than named), non-contiguous and float16 among them, plus small ones.
    from pythia_dynamics.loading import PARALLEL_HASH_BYTES

    g = torch.Generator().manual_seed(0)
    floats = PARALLEL_HASH_BYTES // 4
    state_dict = {
        "a.weight": torch.randn(floats * 3, generator=g),
        "b.weight": torch.randn(floats // 64, 128, generator=g).t(),  # non-contiguous, hashed as its contiguous bytes
        "c.weight": torch.randn(floats * 2, generator=g).half(),
        "d.bias": torch.randn(7, generator=g),
        "gpt_neox.layers.0.attention.masked_bias": torch.tensor(-1e9),  # a non-weight: left out
    }
    assert torch.get_num_threads() > 1  # else the pool is not used and this checks nothing new
    assert hash_checkpoint(state_dict) == hashes_by_definition(state_dict)

import warnings

import pytest
import torch
from transformers import GPTNeoXForCausalLM

from pythia_dynamics import compat
from pythia_dynamics.loading import (
    CheckpointLoader,
    IdenticalCheckpointWarning,
    LoadOptions,
    content_hash,
    load_checkpoint,
)
from pythia_dynamics.sources import HubSource, LocalSuite, write_hub_cache
from pythia_dynamics.synthetic import tiny_config, write_random_suite
from pythia_dynamics.weights import component_weights

TOKENS = torch.tensor([[5, 17, 300, 2, 99, 42, 7, 7, 250, 1, 0, 383]])


def hf_logits(step_dir) -> torch.Tensor:
    model = GPTNeoXForCausalLM.from_pretrained(step_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(TOKENS).logits


def tl_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS)


def test_local_checkpoint_matches_hugging_face(random_suite, backend):
    loaded = load_checkpoint(random_suite, 4, backend=backend)
    assert loaded.backend == backend and loaded.id.step == 4 and loaded.id.model == "random-tiny"
    torch.testing.assert_close(tl_logits(loaded.model), hf_logits(random_suite / "step4"), atol=1e-4, rtol=1e-4)


def test_switching_checkpoints_really_changes_weights(random_suite, backend):
    # TransformerLens issue 453: a checkpoint argument once was silently ignored.
    loader = CheckpointLoader(random_suite, backend=backend)
    for step in (2, 8, 4):
        logits = tl_logits(loader.load(step).model)
        torch.testing.assert_close(logits, hf_logits(random_suite / f"step{step}"), atol=1e-4, rtol=1e-4)


def test_every_checkpoint_comes_in_eval_mode(random_suite, backend):
    loader = CheckpointLoader(random_suite, backend=backend)
    model = loader.load(2).model
    assert not any(m.training for m in model.modules())
    model.blocks[0].train()  # e.g. a user's fine-tuning step in between, on part of the model
    assert not any(m.training for m in loader.load(4).model.modules())
    model.train()
    assert not any(m.training for m in loader.load(2).model.modules())


def test_raw_weights_by_default(random_suite):
    if not compat.has_hooked_transformer():
        pytest.skip("reads HookedTransformer parameter names")
    model = load_checkpoint(random_suite, 8, backend="hooked").model
    hf = GPTNeoXForCausalLM.from_pretrained(random_suite / "step8")
    torch.testing.assert_close(model.blocks[1].mlp.W_in, hf.gpt_neox.layers[1].mlp.dense_h_to_4h.weight.T)
    torch.testing.assert_close(model.blocks[0].ln1.w, hf.gpt_neox.layers[0].input_layernorm.weight)


def test_processed_weights_are_an_explicit_option(random_suite, backend):
    raw = load_checkpoint(random_suite, 8, backend=backend).model
    processed = load_checkpoint(random_suite, 8, backend=backend, processed=True).model
    # Folding and centring change the weights but not the predicted distribution.
    torch.testing.assert_close(
        tl_logits(processed).log_softmax(-1), tl_logits(raw).log_softmax(-1), atol=1e-4, rtol=1e-4
    )
    if compat.has_hooked_transformer() and backend == "hooked":
        assert not torch.allclose(processed.blocks[1].mlp.W_in, raw.blocks[1].mlp.W_in)


def test_identical_checkpoints_are_flagged(random_suite, backend):
    loader = CheckpointLoader(random_suite, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdenticalCheckpointWarning)
        first = loader.load(0)
    with pytest.warns(IdenticalCheckpointWarning, match="step 1 has weights identical to step 0"):
        second = loader.load(1)
    assert second.id.duplicate_of == 0 and first.id.duplicate_of is None
    assert first.id.content_hash == second.id.content_hash
    assert loader.load(2).id.duplicate_of is None


def test_content_hash_sees_dtype_and_values():
    a = {"w": torch.ones(3, 4)}
    assert content_hash(a) == content_hash({"w": torch.ones(3, 4)})
    assert content_hash(a) != content_hash({"w": torch.ones(3, 4, dtype=torch.float16)})
    b = {"w": torch.ones(3, 4)}
    b["w"][2, 3] = 1.0000001
    assert content_hash(a) != content_hash(b)


def test_hub_checkpoint_loads_offline(random_suite, tmp_path, backend):
    write_hub_cache(tmp_path, "EleutherAI/pythia-70m", {"step512": random_suite / "step8"})
    loaded = load_checkpoint(HubSource("pythia-70m", cache_dir=tmp_path), 512, backend=backend)
    assert loaded.id.model == "EleutherAI/pythia-70m" and loaded.id.step == 512
    torch.testing.assert_close(tl_logits(loaded.model), hf_logits(random_suite / "step8"), atol=1e-4, rtol=1e-4)


def test_half_precision_checkpoints_load_as_float32(tmp_path, backend):
    # Pythia stores fp16 weights; analyses run in float32 unless asked otherwise.
    root = write_random_suite(tmp_path / "fp16", tiny_config(torch_dtype="float16"), [0])
    GPTNeoXForCausalLM.from_pretrained(root / "step0").half().save_pretrained(root / "step0")
    model = load_checkpoint(root, 0, backend=backend).model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    stored = LocalSuite(root).read_state_dict(0)
    assert stored["gpt_neox.embed_in.weight"].dtype == torch.float16


def test_bad_options_are_rejected(random_suite):
    with pytest.raises(ValueError, match="backend must be one of"):
        LoadOptions(backend="jax")
    with pytest.raises(ValueError, match="dtype must name a torch dtype"):
        LoadOptions(dtype="float33")
    if not compat.has_hooked_transformer():
        with pytest.raises(ValueError, match="'hooked' is not available with TransformerLens 4"):
            CheckpointLoader(random_suite, backend="hooked")


def test_weights_of_another_shape_are_refused(random_suite, tmp_path):
    root = write_random_suite(tmp_path / "mixed", tiny_config(), [0, 1])
    write_random_suite(tmp_path / "wide", tiny_config(hidden_size=64), [1])
    (root / "step1" / "model.safetensors").write_bytes((tmp_path / "wide" / "step1" / "model.safetensors").read_bytes())
    loader = CheckpointLoader(root)
    loader.load(0)
    with pytest.raises((ValueError, RuntimeError), match="size mismatch|do not fit"):
        loader.load(1)


def test_prefetching_gives_the_same_checkpoints_in_order(random_suite, backend):
    plain = [(c.id, tl_logits(c.model)) for c in CheckpointLoader(random_suite, backend=backend).iter([0, 2, 8, 4], prefetch=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IdenticalCheckpointWarning)
        ahead = [(c.id, tl_logits(c.model)) for c in CheckpointLoader(random_suite, backend=backend).iter([0, 2, 8, 4])]
    assert [i for i, _ in ahead] == [i for i, _ in plain]
    for (_, a), (_, b) in zip(ahead, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_prefetcher_reads_one_ahead_and_reports_each_steps_own_error(random_suite, tmp_path):
    root = write_random_suite(tmp_path / "gappy", tiny_config(), [0, 1, 2])
    (root / "step1" / "model.safetensors").write_bytes(b"not a safetensors file")
    loader = CheckpointLoader(root)
    reads = []
    original = loader.read
    loader.read = lambda step: reads.append(step) or original(step)
    with loader.prefetch([0, 1, 2]) as prefetcher:
        assert prefetcher.take(0).step == 0
        with pytest.raises(Exception, match="step1"):  # the corrupt file is named
            prefetcher.take(1)
        assert prefetcher.take(2).step == 2
    assert reads == [0, 1, 2]  # each read once, in order


def test_a_device_this_machine_lacks_is_refused_up_front(random_suite, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' was asked for, but this torch .* sees no cuda device; available here: cpu"):
        CheckpointLoader(random_suite, device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        CheckpointLoader(random_suite, device="gpu0")


def test_the_requested_dtype_is_what_the_model_holds(random_suite, backend):
    model = load_checkpoint(random_suite, 2, backend=backend, dtype="bfloat16").model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    reference = load_checkpoint(random_suite, 2, backend=backend).model
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).float(), reference(TOKENS), atol=0.1, rtol=0.1)


@pytest.mark.parametrize(
    "moves",
    [(torch.float16,), (torch.bfloat16,), ("cpu",), (torch.float16, torch.float32)],
    ids=["float16", "bfloat16", "same-device", "float16-and-back"],
)
def test_a_moved_model_still_switches_checkpoints(random_suite, backend, moves):
    # The loader's model is the user's: moving it (a new dtype gives its parameters new tensors) must not
    # leave later checkpoints landing in tensors the model no longer uses.
    loader = CheckpointLoader(random_suite, backend=backend)
    model = loader.load(2).model
    loader.load(8)  # a switch before the move too: nothing it worked out may outlive the move
    for move in moves:
        model = model.to(move)
    switched = loader.load(4).model
    fresh = load_checkpoint(random_suite, 4, backend=backend).model.to(moves[-1])  # stored float32 -> where it ended
    assert switched is model
    ours, theirs = component_weights(switched), component_weights(fresh)
    assert {w.dtype for w in ours.values()} == {moves[-1] if isinstance(moves[-1], torch.dtype) else torch.float32}
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    # Not bit-equal after a round trip: it also rounded buffers the checkpoint does not hold (rotary tables).
    torch.testing.assert_close(tl_logits(switched), tl_logits(fresh), rtol=1e-5, atol=1e-5)

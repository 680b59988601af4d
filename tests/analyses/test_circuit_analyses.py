"""head_scores, in_context_learning and massive_activations on a hand-built model whose answers are known.

The planted model (TransformerLens 3.9's HookedTransformer, two attention-only layers, no layer norm)
has a residual stream of one-hot subspaces: token, position, previous token, copied token.
- Layer 0 head 0 is a previous-token head: its query (position q) matches keys at position q - 1 and
  it writes the key's token into the previous-token subspace.
- Layer 1 head 0 is an induction head: its query (the current token) matches keys whose previous
  token is the current token, and it copies the attended token into the copied-token subspace, which
  the unembedding reads, so it predicts a repeated sequence's next token.
- Every other head has zero weights, so attends uniformly.
"""

import numpy as np
import pytest
import torch

from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.analyses.in_context_learning import icl_windows
from pythia_dynamics.repeated_tokens import repeated_tokens

V, N = 64, 32  # vocabulary, context
SHARP = 40.0  # attention logit for a match: near one-hot attention
TOKEN, POS, PREV, COPY = 0, V, V + N, V + N + V  # where each subspace starts
D_MODEL = V + N + 2 * V
MASSIVE_DIM, MASSIVE_SIZE = 7, 500.0


def planted_model():
    pytest.importorskip("transformer_lens.HookedTransformer", reason="TransformerLens 4 has no HookedTransformer")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D_MODEL, n_ctx=N, d_head=V, n_heads=2, d_vocab=V, attn_only=True,
        normalization_type=None, positional_embedding_type="standard", act_fn=None, seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    eye = torch.eye(V)
    scale = cfg.d_head**0.5  # TransformerLens divides scores by sqrt(d_head)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, TOKEN : TOKEN + V] = eye
        model.W_pos[:, POS : POS + N] = torch.eye(N)
        # Previous-token head: query position q -> direction q, key position k -> direction k + 1.
        model.blocks[0].attn.W_Q[0, POS : POS + N, :N] = torch.eye(N) * SHARP * scale
        model.blocks[0].attn.W_K[0, POS : POS + N - 1, 1:N] = torch.eye(N - 1)
        model.blocks[0].attn.W_V[0, TOKEN : TOKEN + V, :] = eye
        model.blocks[0].attn.W_O[0, :, PREV : PREV + V] = eye
        # Induction head: query token t matches keys whose previous token is t; copies the key's token.
        model.blocks[1].attn.W_Q[0, TOKEN : TOKEN + V, :] = eye * SHARP * scale
        model.blocks[1].attn.W_K[0, PREV : PREV + V, :] = eye
        model.blocks[1].attn.W_V[0, TOKEN : TOKEN + V, :] = eye
        model.blocks[1].attn.W_O[0, :, COPY : COPY + V] = eye
        model.W_U[COPY : COPY + V, :] = eye * 20.0
    return model


@pytest.fixture(scope="module")
def model():
    return planted_model()


EVAL = torch.randint(0, V, (5, N), generator=torch.Generator().manual_seed(3))


def scores(records, stat):
    s = records.scalars[records.scalars["stat"] == stat]
    return {(int(r.layer), int(r.head)): r.value for r in s.itertuples()}


def test_planted_heads_get_the_top_scores(model):
    records = get_analysis("head_scores").run(model, EVAL)
    prev, induction = scores(records, "prev_token_score"), scores(records, "induction_score")
    assert max(prev, key=prev.get) == (0, 0) and prev[(0, 0)] > 0.95
    assert max(induction, key=induction.get) == (1, 0) and induction[(1, 0)] > 0.8
    for head in [(0, 1), (1, 1)]:  # uniform heads
        assert prev[head] < 0.2 and induction[head] < 0.2
    assert induction[(0, 0)] < 0.1 and prev[(1, 0)] < 0.2
    # The previous-token head attends to position 0 only from position 1; the uniform heads give it 1/(q+1).
    sink = scores(records, "sink_share")
    assert sink[(0, 0)] == pytest.approx(1 / (N - 1), abs=1e-3)
    assert sink[(0, 1)] == pytest.approx(np.mean([1 / (q + 1) for q in range(1, N)]), rel=1e-4)


def direct_scores(pattern: np.ndarray, T: int) -> dict[str, np.ndarray]:
    """The documented definitions, written out with loops over a run_with_cache pattern [batch, head, q, k]."""
    b, h, n, _ = pattern.shape
    second = range(T + 1, 2 * T + 1)
    return {
        "induction_score": np.array([np.mean([pattern[i, j, q, q - T + 1] for i in range(b) for q in second]) for j in range(h)]),
        "duplicate_token_score": np.array([np.mean([pattern[i, j, q, q - T] for i in range(b) for q in second]) for j in range(h)]),
        "prev_token_score": np.array([np.mean([pattern[i, j, q, q - 1] for i in range(b) for q in range(1, n)]) for j in range(h)]),
    }


def direct_eval_scores(pattern: np.ndarray) -> dict[str, np.ndarray]:
    p = pattern[:, :, 1:].astype(np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return {"sink_share": p[..., 0].mean(axis=(0, 2)), "attention_entropy": -(p * logs).sum(-1).mean(axis=(0, 2))}


@pytest.mark.parametrize("planted", [True, False])
def test_scores_equal_a_direct_computation_from_run_with_cache(planted, random_suite, backend):
    from pythia_dynamics.loading import load_checkpoint

    if planted and backend != "hooked":
        pytest.skip("the planted model is a HookedTransformer")
    model = planted_model() if planted else load_checkpoint(random_suite, 8, backend=backend).model
    tokens = EVAL % model.cfg.d_vocab
    records = get_analysis("head_scores").run(model, tokens, chunk_size=2)
    repeated = repeated_tokens(model)
    _, rep_cache = model.run_with_cache(repeated.tokens)
    _, eval_cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        expected = direct_scores(rep_cache["pattern", layer].numpy(), repeated.repeat_len)
        expected |= direct_eval_scores(eval_cache["pattern", layer].numpy())
        for stat, values in expected.items():
            got = scores(records, stat)
            np.testing.assert_allclose([got[(layer, h)] for h in range(model.cfg.n_heads)], values, rtol=1e-5, atol=1e-7, err_msg=stat)
        view = records.arrays[(records.arrays["name"] == "view_pattern") & (records.arrays["layer"] == layer)]
        stored = np.asarray(view["values"].item()).reshape(view["shape"].item())
        np.testing.assert_allclose(stored, eval_cache["pattern", layer][0].numpy(), rtol=1e-6, atol=1e-8)


def test_repeated_batch_is_seeded_bos_then_two_copies(model):
    a, b = repeated_tokens(model), repeated_tokens(model)
    assert torch.equal(a.tokens, b.tokens) and a.repeat_len == (N - 1) // 2
    T = a.repeat_len
    assert (a.tokens[:, 0] == 0).all() and (a.tokens[:, 1:] != 0).all()
    assert torch.equal(a.tokens[:, a.first_copy], a.tokens[:, a.second_copy])
    assert a.tokens.shape == (8, 2 * T + 1)


def test_induction_makes_the_second_copy_cheap(model):
    records = get_analysis("in_context_learning").run(model, EVAL)
    got = dict(zip(records.scalars["stat"], records.scalars["value"]))
    assert got["repeat_second_copy_loss"] < 0.5 and got["repeat_first_copy_loss"] > 3.0
    assert got["repeat_loss_drop"] == pytest.approx(got["repeat_first_copy_loss"] - got["repeat_second_copy_loss"])
    without = planted_model()
    with torch.no_grad():
        without.blocks[1].attn.W_O[0] = 0  # no induction head
    got = dict(zip(*get_analysis("in_context_learning").run(without, EVAL).scalars[["stat", "value"]].T.values))
    assert abs(got["repeat_loss_drop"]) < 0.05


def test_loss_by_position_and_icl_score_follow_their_definitions(model):
    repeated = repeated_tokens(model).tokens  # an evaluation batch where late tokens are predictable
    records = get_analysis("in_context_learning").run(model, repeated, chunk_size=3)
    logits = model(repeated)
    logp = torch.log_softmax(logits.double(), -1)
    n_pos = repeated.shape[1]
    direct = np.array([-logp[:, t - 1].gather(-1, repeated[:, t : t + 1]).mean().item() for t in range(1, n_pos)])
    stored = records.arrays[records.arrays["name"] == "loss_by_position"]["values"].item()
    np.testing.assert_allclose(stored, direct, rtol=1e-5, atol=1e-6)  # float32 cross-entropy
    early, late = icl_windows(n_pos)
    got = dict(zip(records.scalars["stat"], records.scalars["value"]))
    expected = np.mean([direct[t - 1] for t in late]) - np.mean([direct[t - 1] for t in early])
    assert got["icl_score"] == pytest.approx(expected) and got["icl_score"] < -1.0
    assert (got["icl_early_position"], got["icl_late_position"]) == (early.start, late.start)


def test_icl_windows_are_olssons_positions_scaled():
    assert icl_windows(128) == (range(10, 15), range(122, 128))
    assert icl_windows(2048) == (range(160, 240), range(1960, 2048))


def add_massive(model, hook_name):
    def plant(x, hook):
        x[:, 0, MASSIVE_DIM] = MASSIVE_SIZE
        return x

    model.add_hook(hook_name, plant)


def massive(records, component, layer, stat):
    s = records.scalars
    return s[(s["component"] == component) & (s["layer"] == layer) & (s["stat"] == stat)]["value"].item()


def test_planted_massive_activation_is_found_at_its_block_position_and_size(random_suite, backend):
    from pythia_dynamics.loading import load_checkpoint

    model = load_checkpoint(random_suite, 8, backend=backend).model
    add_massive(model, "blocks.1.hook_mlp_out")  # block 1 writes it into the residual stream
    try:
        records = get_analysis("massive_activations").run(model, EVAL % 384, chunk_size=2)
    finally:
        model.reset_hooks(including_permanent=True)
    assert massive(records, "hook_resid_post", 1, "top1_dim") == MASSIVE_DIM
    assert massive(records, "hook_resid_post", 1, "top1_position") == 0
    assert massive(records, "hook_resid_post", 1, "top1_on_first_token") == 1.0
    assert massive(records, "hook_resid_post", 1, "top1_abs") == pytest.approx(MASSIVE_SIZE, rel=0.01)
    median = massive(records, "hook_resid_post", 1, "median_abs")
    assert massive(records, "hook_resid_post", 1, "top1_ratio") == pytest.approx(massive(records, "hook_resid_post", 1, "top1_abs") / median)
    assert massive(records, "hook_resid_post", 1, "top1_ratio") > 1000
    for component, layer in [("hook_resid_pre", 0), ("hook_resid_post", 0)]:  # before block 1, nothing stands out
        assert massive(records, component, layer, "top1_abs") < 10


def test_massive_statistics_equal_a_direct_computation(random_suite, backend):
    from pythia_dynamics.loading import load_checkpoint

    model = load_checkpoint(random_suite, 8, backend=backend).model
    tokens = EVAL % 384
    records = get_analysis("massive_activations").run(model, tokens, chunk_size=2)
    _, cache = model.run_with_cache(tokens)
    x = cache["resid_post", 1].abs().double()
    m = x.amax(0)
    top = torch.topk(m.flatten(), 5)
    a = records.arrays[(records.arrays["component"] == "hook_resid_post") & (records.arrays["layer"] == 1)]
    arr = {r.name: np.asarray(r.values) for r in a.itertuples()}
    np.testing.assert_allclose(arr["top_abs"], top.values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(arr["top_position"], (top.indices // m.shape[1]).numpy())
    np.testing.assert_array_equal(arr["top_dim"], (top.indices % m.shape[1]).numpy())
    assert massive(records, "hook_resid_post", 1, "median_abs") == pytest.approx(x.float().flatten().median().item(), rel=1e-6)

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.analyses.svd_directions import (
    SVDDirectionsConfig,
    _extremes,
    _matmul,
    _top_eigenpairs_torch,
    directions_table,
    mlp_directions,
    model_tokenizer,
    ov_directions,
    singular_directions,
    svd_directions,
    svd_strings,
    token_display,
)
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.store import row_to_numpy
from pythia_dynamics.synthetic import tiny_config, write_random_suite

TARGETS = [65, 66, 67]  # 'A', 'B', 'C' in the byte-ordered test tokenizer (ids 0..255 are bytes)
NEWLINE = 10  # '\n'


def unit(rng: torch.Generator, n: int) -> torch.Tensor:
    v = torch.randn(n, generator=rng)
    return v / v.norm()


@pytest.fixture(scope="module")
def planted_suite(tmp_path_factory, tiny_suite):
    """A random tiny suite with a direction u planted where the test expects it, and a real tokenizer.

    The unembedding rows of A, B, C are 3u, 2.5u, 2u and the newline's is -1.5u, so u reads as
    A, B, C on top and the newline at the bottom. Planted onto u: block 1's W_out (output side), head 2
    of block 0's OV circuit (through W_O), and block 1's W_in input side *after* folding ln2.w.
    """
    rng = torch.Generator().manual_seed(7)
    cfg = tiny_config()
    d_model, d_mlp, d_head = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
    u = unit(rng, d_model)
    gain = torch.empty(d_model).uniform_(0.25, 4.0, generator=rng)  # a far-from-uniform ln2.w

    @torch.no_grad()
    def plant(step, hf):
        unembed = hf.get_output_embeddings().weight  # [d_vocab, d_model]: W_U transposed
        unembed[TARGETS] = torch.tensor([3.0, 2.5, 2.0])[:, None] * u
        unembed[NEWLINE] = -1.5 * u
        block1 = hf.gpt_neox.layers[1]
        block1.mlp.dense_4h_to_h.weight += 5.0 * torch.outer(u, unit(rng, d_mlp))  # W_out = its transpose
        block1.post_attention_layernorm.weight.copy_(gain)  # ln2.w
        block1.mlp.dense_h_to_4h.weight += 5.0 * torch.outer(unit(rng, d_mlp), u / gain)  # W_in = its transpose
        dense = hf.gpt_neox.layers[0].attention.dense.weight  # W_O[h] = dense[:, h d_head:(h+1) d_head]^T
        dense[:, 2 * d_head : 3 * d_head] += 5.0 * torch.outer(u, unit(rng, d_head))

    root = write_random_suite(tmp_path_factory.mktemp("planted") / "planted", cfg, [0], edit=plant)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_suite / name, root / name)
    return root, u


def test_planted_direction_returns_its_tokens_first(planted_suite, backend):
    root, u = planted_suite
    model = load_checkpoint(root, 0, backend=backend).model
    for layer, kind, head in [(1, "mlp_out", None), (0, "ov", 2), (1, "mlp_in", None)]:
        strings = svd_strings(model, layer, kind, head=head, k=3, n=4)
        first = strings[strings["direction"] == 0]
        top, bottom = first[first["side"] == "top"], first[first["side"] == "bottom"]
        assert top["token_id"].tolist() == TARGETS, (kind, top)
        assert top["token"].tolist() == ["A", "B", "C"] and not top["escaped"].any()
        assert bottom["token_id"].iloc[0] == NEWLINE
        assert bottom["token"].iloc[0] == "<0x0A>" and bool(bottom["escaped"].iloc[0])
        assert (top["logit"].diff().dropna() < 0).all() and (bottom["logit"].diff().dropna() > 0).all()
        # The direction itself is u (up to sign): for W_in only once diag(ln2.w) is folded in.
        vector = singular_directions(model, layer, kind, head=head, n=1).vectors[0]
        assert abs(float(vector.double() @ u.double())) > 0.995, kind
    unfolded = torch.linalg.svd(model.W_in[1].detach().double())[0][:, 0]
    assert abs(float(unfolded @ u.double())) < 0.95  # so the W_in check above does test the fold
    # The plant went into head 2 only: head 1's top direction is unrelated to u.
    other = singular_directions(model, 0, "ov", head=1, n=1).vectors[0]
    assert abs(float(other.double() @ u.double())) < 0.8


def test_analysis_stores_the_planted_strings(planted_suite):
    root, _ = planted_suite
    model = load_checkpoint(root, 0).model
    records = get_analysis("svd_directions").run(model)
    arrays = records.arrays.assign(head=lambda d: d["head"].astype("Int64"))
    row = arrays.query("component == 'W_out' and layer == 1 and name == 'top_tokens'").iloc[0]
    text = row_to_numpy(row)
    assert text.shape == (30, 20) and text[0, :3].tolist() == ["A", "B", "C"]
    bottom = arrays.query("component == 'OV' and layer == 0 and head == 2 and name == 'bottom_tokens'").iloc[0]
    assert row_to_numpy(bottom)[0, 0] == "<0x0A>"
    flags = arrays.query("component == 'OV' and layer == 0 and head == 2 and name == 'bottom_escaped'").iloc[0]
    assert row_to_numpy(flags)[0, 0] == 1.0


def test_matches_transformer_lens_svd_interpreter(tiny_suite, backend):
    from transformer_lens import SVDInterpreter

    model = load_checkpoint(tiny_suite, 40, backend=backend).model
    interpreter = SVDInterpreter(model)
    W_U = model.W_U.detach()
    cases = [("OV", "ov", layer, head, model.cfg.d_head) for layer in range(2) for head in range(model.cfg.n_heads)]
    mlp = (("w_in", "mlp_in"), ("w_out", "mlp_out"))
    cases += [(tl, kind, layer, None, 12) for tl, kind in mlp for layer in range(2)]
    for tl_kind, kind, layer, head, n in cases:
        theirs = interpreter.get_singular_vectors(tl_kind, layer, num_vectors=n, head_index=head)[:, 0, :].T.detach()
        ours = singular_directions(model, layer, kind, head=head, n=n).vectors.float() @ W_U
        sign = torch.sign((ours * theirs).sum(-1, keepdim=True))
        scale = theirs.abs().max()
        assert torch.allclose(ours * sign, theirs, atol=1e-4 * float(scale)), (kind, layer, head)
        # The stored top tokens are the top of TransformerLens's logits once the sign is fixed.
        strings = svd_strings(model, layer, kind, head=head, k=10, n=n)
        fixed = theirs * torch.where(theirs.amax(-1) < -theirs.amin(-1), -1.0, 1.0)[:, None]
        top = strings[strings["side"] == "top"]
        expected = fixed.topk(10, dim=-1).values.double().numpy()
        np.testing.assert_allclose(top["logit"].to_numpy().reshape(n, 10), expected, atol=1e-4 * float(scale))


def test_singular_values_and_energy_match_numpy(tiny_suite):
    model = load_checkpoint(tiny_suite, 40).model
    records = svd_directions(model)
    arrays, scalars = records.arrays, records.scalars
    W_V, W_O = model.W_V.detach().double().numpy(), model.W_O.detach().double().numpy()
    W_in, W_out = model.W_in.detach().double().numpy(), model.W_out.detach().double().numpy()
    for layer in range(model.cfg.n_layers):
        ln2 = model.blocks[layer].ln2.w.detach().double().numpy()
        matrices = {("W_in", None): ln2[:, None] * W_in[layer], ("W_out", None): W_out[layer]}
        matrices |= {("OV", h): W_V[layer, h] @ W_O[layer, h] for h in range(model.cfg.n_heads)}
        for (component, head), matrix in matrices.items():
            expected = np.linalg.svd(matrix, compute_uv=False)
            pick = (arrays["component"] == component) & (arrays["layer"] == layer)
            pick &= arrays["head"].isna() if head is None else arrays["head"] == head
            stored = row_to_numpy(arrays[pick & (arrays["name"] == "singular_values")].iloc[0])
            n = min(30, model.cfg.d_head if component == "OV" else model.cfg.d_model)
            np.testing.assert_allclose(stored, expected[:n], rtol=1e-6, atol=1e-9)
            where = (scalars["component"] == component) & (scalars["layer"] == layer)
            where &= scalars["head"].isna() if head is None else scalars["head"] == head
            energy = scalars[where & (scalars["stat"] == "energy_fraction")]["value"].item()
            assert energy == pytest.approx((expected[:n] ** 2).sum() / (expected**2).sum(), rel=1e-9)
            assert row_to_numpy(arrays[pick & (arrays["name"] == "top_token_ids")].iloc[0]).shape == (n, 20)


@pytest.mark.parametrize("side", ["input", "output"])
def test_top_eigenpairs_on_the_cpu_equal_the_full_eigendecomposition(side):
    # The CPU route computes only the top n eigenpairs (scipy, MRRR); other devices take all (torch).
    rng = torch.Generator().manual_seed(5)
    d_model, d_mlp, n = 48, 192, 10
    W = [torch.randn(d_model, d_mlp, generator=rng) if side == "input" else torch.randn(d_mlp, d_model, generator=rng)
         for _ in range(3)]  # fmt: skip
    s, vectors, total = mlp_directions(W, side, n)
    tall = torch.stack([w.mT if side == "input" else w for w in W])
    s_all, vectors_all, total_all = _top_eigenpairs_torch(tall, n)
    assert s.shape == (3, n) and vectors.shape == (3, n, d_model)
    torch.testing.assert_close(s, s_all, rtol=1e-12, atol=0)
    torch.testing.assert_close(total, total_all, rtol=1e-13, atol=0)
    overlap = (vectors * vectors_all).sum(-1).abs()  # singular vectors are defined up to sign
    torch.testing.assert_close(overlap, torch.ones_like(overlap), rtol=0, atol=1e-9)
    # Both are the SVD's: singular values and the projected side's singular vectors.
    for w, s_w, v_w in zip(W, s, vectors):
        u, sigma, vh = torch.linalg.svd(w.double(), full_matrices=False)
        reference = u.mT if side == "input" else vh
        torch.testing.assert_close(s_w, sigma[:n], rtol=1e-12, atol=0)
        torch.testing.assert_close((v_w * reference[:n]).sum(-1).abs(), torch.ones(n, dtype=torch.float64), atol=1e-9, rtol=0)


def test_ov_directions_equal_the_svd_of_the_formed_circuit_ill_conditioned_and_zero_heads_too():
    rng = torch.Generator().manual_seed(9)
    W_V, W_O = torch.randn(4, 48, 16, generator=rng), torch.randn(4, 16, 48, generator=rng)
    W_V[1] *= torch.logspace(0, -3, 16)  # condition 10^3: the Gram route
    W_O[2, 5:] *= 1e-6  # condition 10^6 within the kept 8: the SVD fallback
    W_O[3] = 0  # the zero circuit
    s, vectors, total = ov_directions(W_V, W_O, n=8)
    assert torch.isfinite(s).all() and torch.isfinite(vectors).all()
    for head in range(4):
        circuit = (W_V[head].double() @ W_O[head].double())
        _, sigma, vh = torch.linalg.svd(circuit)
        torch.testing.assert_close(s[head], sigma[:8], rtol=1e-10, atol=1e-12 * float(sigma[0]) + 1e-300)
        assert float(total[head]) == pytest.approx(float((circuit**2).sum()), rel=1e-12, abs=0)
        nonzero = sigma[:8] > 1e-9 * float(sigma[0]) if sigma[0] > 0 else torch.zeros(8, dtype=torch.bool)
        alignment = (vectors[head][nonzero] * vh[:8][nonzero]).sum(-1).abs()
        torch.testing.assert_close(alignment, torch.ones_like(alignment), atol=1e-8, rtol=0)
        # Orthonormal, the directions past a head's rank too (any orthonormal completion is a valid SVD).
        torch.testing.assert_close(vectors[head] @ vectors[head].T, torch.eye(8, dtype=torch.float64), atol=1e-9, rtol=0)


def test_cpu_projection_matmul_equals_torchs():
    # On the CPU the projection runs in numpy's BLAS: the same float32 (or float64) product as torch's.
    rng = torch.Generator().manual_seed(6)
    vectors, W_U = torch.randn(30, 64, generator=rng), torch.randn(1000, 64, generator=rng).T  # W_U as a view
    torch.testing.assert_close(_matmul(vectors, W_U), vectors @ W_U, rtol=1e-5, atol=1e-5)
    assert _matmul(vectors, W_U).dtype == torch.float32
    assert _matmul(vectors.double(), W_U.double()).dtype == torch.float64


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("d_vocab", [50304, 64 * 90 + 37, 200])
def test_screened_extremes_equal_topk(d_vocab, largest):
    # Planted: row 0 has its 20 extremes crowded into one block of 64 columns, row 1 in the columns
    # past the last whole block, row 2 spread out; each must come back as topk ranks them.
    rng = torch.Generator().manual_seed(7)
    logits = torch.randn(40, d_vocab, generator=rng)
    sign = 1 if largest else -1
    logits[0, 64 : 64 + 20] = sign * (10 + torch.rand(20, generator=rng))
    logits[1, -min(20, d_vocab % 64 or 20) :] = sign * 10
    logits[2, ::max(1, d_vocab // 20)] = sign * (5 + torch.rand(len(range(0, d_vocab, max(1, d_vocab // 20))), generator=rng))
    ours, theirs = _extremes(logits, 20, largest), logits.topk(20, dim=-1, largest=largest)
    assert torch.equal(ours.values, theirs.values)
    assert torch.equal(logits.gather(-1, ours.indices), ours.values)
    assert torch.equal(ours.indices[0].sort().values, torch.arange(64, 84))


def test_stored_arrays_equal_svd_strings(tiny_suite):
    model = load_checkpoint(tiny_suite, 20).model
    arrays = svd_directions(model, config=SVDDirectionsConfig(n_directions=5, k_tokens=7)).arrays
    strings = svd_strings(model, 1, "ov", head=3, k=7, n=5)
    pick = (arrays["component"] == "OV") & (arrays["layer"] == 1) & (arrays["head"] == 3)
    for side in ("top", "bottom"):
        rows = strings[strings["side"] == side]
        stored = {name: row_to_numpy(arrays[pick & (arrays["name"] == f"{side}_{name}")].iloc[0])
                  for name in ("token_ids", "tokens", "logits")}  # fmt: skip
        assert stored["token_ids"].astype(int).ravel().tolist() == rows["token_id"].tolist()
        assert stored["tokens"].ravel().tolist() == rows["token"].tolist()
        np.testing.assert_allclose(stored["logits"].ravel(), rows["logit"].to_numpy(), rtol=1e-6)


def test_without_a_tokenizer_only_ids_are_stored(random_suite):
    model = load_checkpoint(random_suite, 0).model
    # TransformerLens 3 leaves model.tokenizer None here; 4 puts a special-tokens-only placeholder there.
    assert model_tokenizer(model) is None
    records = svd_directions(model, config=SVDDirectionsConfig(n_directions=3, k_tokens=4, negative=False))
    names = set(records.arrays["name"])
    assert names == {"singular_values", "top_token_ids", "top_logits"}
    strings = svd_strings(model, 0, "mlp_in", k=4, n=3)
    assert strings["token"].isna().all() and set(strings["side"]) == {"top", "bottom"}
    table = directions_table(strings)
    assert len(table) == 6 and table["tokens"].iloc[0].startswith("#")


def test_token_display_escapes_what_is_not_printable(tiny_suite):
    tokenizer = load_checkpoint(tiny_suite, 0).model.tokenizer
    the = tokenizer.convert_tokens_to_ids("Ġthe")
    texts, flags = token_display(tokenizer, [NEWLINE, 9, 0xE2, 65, the, 5000])
    assert texts == ["<0x0A>", "<0x09>", "<0xE2>", "A", " the", "<id:5000>"]
    assert flags == [True, True, True, False, False, True]


class StubTokenizer:
    """A tokenizer that is not byte-level BPE: token text comes from decode()."""

    pieces = {0: "▁the", 1: "\t", 2: "\ufffd", 3: "", 4: "é\x00"}

    def convert_ids_to_tokens(self, ids):
        return [self.pieces.get(i) for i in ids]

    def decode(self, ids, clean_up_tokenization_spaces=False):
        return self.pieces[ids[0]].replace("▁", " ")


def test_token_display_without_byte_level_decodes_and_escapes():
    texts, flags = token_display(StubTokenizer(), [0, 1, 2, 3, 4, 9])
    assert texts == [" the", "<0x09>", "<0xEF><0xBF><0xBD>", "<id:3>", "é<0x00>", "<id:9>"]
    assert flags == [False, True, True, True, True, True]


def test_bad_arguments_say_what_is_valid(random_suite):
    model = load_checkpoint(random_suite, 0).model
    with pytest.raises(ValueError, match="kind must be one of ov, mlp_in, mlp_out"):
        svd_strings(model, 0, "qk")
    with pytest.raises(ValueError, match="layer must be between 0 and 1, got 2"):
        svd_strings(model, 2, "mlp_out")
    with pytest.raises(ValueError, match="needs a head"):
        svd_strings(model, 0, "ov")
    with pytest.raises(ValueError, match="head must be between 0 and 3"):
        svd_strings(model, 0, "ov", head=4)
    with pytest.raises(ValueError, match="leave head out"):
        svd_strings(model, 0, "mlp_in", head=0)
    with pytest.raises(ValueError, match="k_tokens must be a positive integer"):
        SVDDirectionsConfig(k_tokens=0)


def test_cli_prints_a_readable_table(tiny_suite, capsys):
    from pythia_dynamics.cli import main

    assert main(["svd-strings", str(tiny_suite), "--step", "40", "--layer", "1", "--kind", "ov", "--head", "0",
                 "-k", "5", "-n", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert "block 1, OV head 0" in out[0] and out[1].split() == ["dir", "side", "sigma", "tokens"]
    model = load_checkpoint(tiny_suite, 40).model
    expected = directions_table(svd_strings(model, 1, "ov", head=0, k=5, n=3))
    assert len(out) == 2 + len(expected) and out[2].endswith(expected["tokens"].iloc[0])
    assert main(["svd-strings", str(tiny_suite), "--step", "40", "--layer", "1", "--kind", "ov"]) == 2
    assert "needs a head" in capsys.readouterr().err

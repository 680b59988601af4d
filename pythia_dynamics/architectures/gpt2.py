"""GPT-2 (Stanford CRFM's Mistral runs): learned positions, Conv1D weights stored [in, out], fused Q/K/V
stored as three blocks (all of Q, then K, then V), unembedding tied to the embedding."""

from pythia_dynamics.architectures.family import ArchitectureFamily

GPT2 = ArchitectureFamily(
    name="GPT-2",
    model_type="gpt2",
    hf_class="GPT2LMHeadModel",
    block_prefix="transformer.h",
    block_layout={
        "ln_1.weight": {"ln1.w": None},
        "ln_1.bias": {"ln1.b": None},
        "ln_2.weight": {"ln2.w": None},
        "ln_2.bias": {"ln2.b": None},
        "attn.c_attn.weight": {f"attn.W_{x}": "m (qkv i h) -> qkv i m h" for x in "QKV"},
        "attn.c_attn.bias": {f"attn.b_{x}": "(qkv i h) -> qkv i h" for x in "QKV"},
        "attn.c_proj.weight": {"attn.W_O": "(i h) m -> i h m"},
        "attn.c_proj.bias": {"attn.b_O": None},
        "mlp.c_fc.weight": {"mlp.W_in": None},
        "mlp.c_fc.bias": {"mlp.b_in": None},
        "mlp.c_proj.weight": {"mlp.W_out": None},
        "mlp.c_proj.bias": {"mlp.b_out": None},
    },
    model_layout={
        "transformer.wte.weight": ("embed.W_E", None),
        "transformer.wpe.weight": ("pos_embed.W_pos", None),
        "transformer.ln_f.weight": ("ln_final.w", None),
        "transformer.ln_f.bias": ("ln_final.b", None),
        "lm_head.weight": ("unembed.W_U", "v m -> m v"),
    },
    tied_unembedding=("transformer.wte.weight", "v m -> m v"),
    # The causal mask older transformers saved per block (not c_attn.bias, a weight).
    non_weights=(r"\.h\.\d+\.attn\.bias$", r"\.h\.\d+\.attn\.masked_bias$"),
    fused_qkv_module="c_attn",
)

"""GPT-NeoX (Pythia, PolyPythias): parallel attention and MLP, LayerNorm with bias, fused per-head Q/K/V."""

from pythia_dynamics.architectures.family import ArchitectureFamily

GPT_NEOX = ArchitectureFamily(
    name="GPT-NeoX",
    model_type="gpt_neox",
    hf_class="GPTNeoXForCausalLM",
    block_prefix="gpt_neox.layers",
    block_layout={
        "input_layernorm.weight": {"ln1.w": None},
        "input_layernorm.bias": {"ln1.b": None},
        "post_attention_layernorm.weight": {"ln2.w": None},
        "post_attention_layernorm.bias": {"ln2.b": None},
        # GPT-NeoX interleaves Q, K and V per head: rows are (head, qkv, d_head).
        "attention.query_key_value.weight": {f"attn.W_{x}": "(i qkv h) m -> qkv i m h" for x in "QKV"},
        "attention.query_key_value.bias": {f"attn.b_{x}": "(i qkv h) -> qkv i h" for x in "QKV"},
        "attention.dense.weight": {"attn.W_O": "m (i h) -> i h m"},
        "attention.dense.bias": {"attn.b_O": None},
        "mlp.dense_h_to_4h.weight": {"mlp.W_in": "f m -> m f"},
        "mlp.dense_h_to_4h.bias": {"mlp.b_in": None},
        "mlp.dense_4h_to_h.weight": {"mlp.W_out": "m f -> f m"},
        "mlp.dense_4h_to_h.bias": {"mlp.b_out": None},
    },
    model_layout={
        "gpt_neox.embed_in.weight": ("embed.W_E", None),
        "gpt_neox.final_layer_norm.weight": ("ln_final.w", None),
        "gpt_neox.final_layer_norm.bias": ("ln_final.b", None),
        "embed_out.weight": ("unembed.W_U", "v m -> m v"),
    },
    # Saved alongside weights by some GPT-NeoX versions.
    non_weights=(r"attention\.bias$", r"attention\.masked_bias$", r"rotary_emb\.inv_freq$", r"original_inv_freq$"),
    renames={"lm_head.": "embed_out."},  # transformers 5 renamed embed_out to lm_head
    fused_qkv_module="query_key_value",
)

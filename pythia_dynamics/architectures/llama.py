"""LLaMA (SmolLM2, LLM360 Amber), SmolLM3 and OLMo-1/OLMo-2, which store their tensors the same way: separate
Q/K/V projections (K and V with fewer heads under grouped-query attention), gated MLPs, no biases.
They differ in their norms: LLaMA has RMSNorm weights before each sublayer, OLMo-1 a LayerNorm without
any weights, OLMo-2 RMSNorm weights after each sublayer plus RMSNorm on queries and keys."""

from pythia_dynamics.architectures.family import ArchitectureFamily

_ATTENTION_AND_MLP = {
    "self_attn.q_proj.weight": {"attn.W_Q": "(i h) m -> i m h"},
    "self_attn.k_proj.weight": {"attn.W_K": "(j h) m -> j m h"},
    "self_attn.v_proj.weight": {"attn.W_V": "(j h) m -> j m h"},
    "self_attn.o_proj.weight": {"attn.W_O": "m (i h) -> i h m"},
    "mlp.gate_proj.weight": {"mlp.W_gate": "f m -> m f"},
    "mlp.up_proj.weight": {"mlp.W_in": "f m -> m f"},
    "mlp.down_proj.weight": {"mlp.W_out": "m f -> f m"},
}
_EMBEDDINGS = {
    "model.embed_tokens.weight": ("embed.W_E", None),
    "lm_head.weight": ("unembed.W_U", "v m -> m v"),
}
_TIED = ("model.embed_tokens.weight", "v m -> m v")
_ROTARY = (r"rotary_emb\.inv_freq$", r"original_inv_freq$")

LLAMA = ArchitectureFamily(
    name="LLaMA",
    model_type="llama",
    hf_class="LlamaForCausalLM",
    block_prefix="model.layers",
    block_layout=_ATTENTION_AND_MLP
    | {"input_layernorm.weight": {"ln1.w": None}, "post_attention_layernorm.weight": {"ln2.w": None}},
    model_layout=_EMBEDDINGS | {"model.norm.weight": ("ln_final.w", None)},
    tied_unembedding=_TIED,
    non_weights=_ROTARY,
)

# SmolLM3: LLaMA's tensors (some layers skip rotary embeddings, which changes no stored name).
SMOLLM3 = ArchitectureFamily(
    name="SmolLM3",
    model_type="smollm3",
    hf_class="SmolLM3ForCausalLM",
    block_prefix=LLAMA.block_prefix,
    block_layout=LLAMA.block_layout,
    model_layout=LLAMA.model_layout,
    tied_unembedding=_TIED,
    non_weights=_ROTARY,
    hooked_transformer=False,  # not among HookedTransformer's architectures
)

OLMO = ArchitectureFamily(
    name="OLMo",
    model_type="olmo",
    hf_class="OlmoForCausalLM",
    block_prefix="model.layers",
    block_layout=_ATTENTION_AND_MLP,
    model_layout=_EMBEDDINGS,
    tied_unembedding=_TIED,
    non_weights=_ROTARY,
    hooked_transformer=False,  # TransformerLens configures OLMo by official model name only
)

OLMO2 = ArchitectureFamily(
    name="OLMo-2",
    model_type="olmo2",
    hf_class="Olmo2ForCausalLM",
    block_prefix="model.layers",
    block_layout=_ATTENTION_AND_MLP
    | {
        # TransformerLens's names for OLMo-2's post-sublayer norms (its olmo2 weight conversion).
        "post_attention_layernorm.weight": {"ln1.w": None},
        "post_feedforward_layernorm.weight": {"ln2.w": None},
        "self_attn.q_norm.weight": {"attn.q_norm.w": None},
        "self_attn.k_norm.weight": {"attn.k_norm.w": None},
    },
    model_layout=_EMBEDDINGS | {"model.norm.weight": ("ln_final.w", None)},
    tied_unembedding=_TIED,
    non_weights=_ROTARY,
    hooked_transformer=False,  # TransformerLens configures OLMo-2 by official model name only
    post_norm=True,
)

"""pythia_dynamics: how language models change during training, through TransformerLens."""

__version__ = "0.1.0"

"""ablate: ablations of on-policy self-distillation for LLM reasoning."""

__version__ = "0.1.0"

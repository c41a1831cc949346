"""The Transformer of "Attention Is All You Need", one small file per part of Section 3."""

from .transformer import BOS, EOS, PAD, UNK, Transformer, build_model

__all__ = ["PAD", "BOS", "EOS", "UNK", "Transformer", "build_model"]

"""Data: tokenizers, synthetic tasks, and batching into padded id tensors."""

from .batching import PaddedPairs, fixed_size_batches
from .synthetic import TASKS, make_synthetic_splits
from .tokenizers import SymbolTokenizer, tokenizer_from_dict

__all__ = ["PaddedPairs", "fixed_size_batches", "TASKS", "make_synthetic_splits", "SymbolTokenizer",
           "tokenizer_from_dict"]

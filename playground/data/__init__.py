"""Data: tokenizers, synthetic tasks, parallel text, and batching into padded id tensors."""

from .batching import TokenPairs
from .loading import Data, load_data
from .synthetic import TASKS, make_synthetic_splits
from .tokenizers import BOS, EOS, MODEL_IDS, PAD, UNK, SymbolTokenizer, tokenizer_from_dict

__all__ = ["PAD", "BOS", "EOS", "UNK", "MODEL_IDS", "TokenPairs", "Data", "load_data", "TASKS",
           "make_synthetic_splits", "SymbolTokenizer", "tokenizer_from_dict"]

"""The Transformer of "Attention Is All You Need", one small file per part of Section 3.

This package is the reference: public torch operations only, importing nothing of the project outside
itself. It is what trains by default (trainer.kernels=reference), so an edit here shows in the next run.
"""

from .loss import sequence_loss
from .transformer import KERNELS, Transformer, build_model, check_model_config

__all__ = ["Transformer", "build_model", "check_model_config", "sequence_loss", "KERNELS"]

"""Batches of padded id tensors from lists of (source ids, target ids) pairs."""

import torch

from ..model import BOS, EOS, PAD


class PaddedPairs:
    """All pairs of one split padded once into two tensors; a batch is a row selection trimmed to its longest row.

    Targets gain BOS and EOS here: the decoder reads tgt[:, :-1] and learns to predict tgt[:, 1:].
    """

    def __init__(self, pairs):
        self.src_lengths = torch.tensor([len(s) for s, _ in pairs])
        self.tgt_lengths = torch.tensor([len(t) + 2 for _, t in pairs])
        self.src = torch.full((len(pairs), int(self.src_lengths.max())), PAD, dtype=torch.long)
        self.tgt = torch.full((len(pairs), int(self.tgt_lengths.max())), PAD, dtype=torch.long)
        for i, (s, t) in enumerate(pairs):
            self.src[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            self.tgt[i, : len(t) + 2] = torch.tensor([BOS, *t, EOS], dtype=torch.long)

    def __len__(self):
        return len(self.src)

    def batch(self, index):
        """Rows `index` (a LongTensor) as (src (B, S), tgt (B, T)), without all-PAD trailing columns."""
        S, T = int(self.src_lengths[index].max()), int(self.tgt_lengths[index].max())
        return self.src[index, :S], self.tgt[index, :T]


def fixed_size_batches(num_examples, batch_size, shuffle=False, generator=None):
    """Index tensors of batch_size rows (the last may be shorter), in a seeded random order when shuffling."""
    order = torch.randperm(num_examples, generator=generator) if shuffle else torch.arange(num_examples)
    return list(order.split(batch_size))

"""Batches of padded id tensors from lists of (source ids, target ids) pairs."""

import torch

from .tokenizers import BOS, EOS, PAD


class PaddedPairs:
    """All pairs of one split padded once into two tensors; a batch is a row selection trimmed to its longest row.

    Targets gain BOS and EOS here: the decoder reads tgt[:, :-1] and learns to predict tgt[:, 1:].
    """

    def __init__(self, pairs):
        self.src_lengths = torch.tensor([len(s) for s, _ in pairs])
        self.tgt_lengths = torch.tensor([len(t) + 2 for _, t in pairs])
        S, T = int(self.src_lengths.max()), int(self.tgt_lengths.max())
        # padded as lists, then one tensor each: a tensor per pair costs seconds on a large corpus
        self.src = torch.tensor([[*s, *[PAD] * (S - len(s))] for s, _ in pairs], dtype=torch.long)
        self.tgt = torch.tensor([[BOS, *t, EOS, *[PAD] * (T - len(t) - 2)] for _, t in pairs], dtype=torch.long)

    def __len__(self):
        return len(self.src)

    def lengths(self):
        """Each pair's longer side in tokens (targets counted with BOS or EOS, as the decoder sees them)."""
        return torch.maximum(self.src_lengths, self.tgt_lengths - 1)

    def batch(self, index):
        """Rows `index` (a LongTensor) as (src (B, S), tgt (B, T)), without all-PAD trailing columns."""
        S, T = int(self.src_lengths[index].max()), int(self.tgt_lengths[index].max())
        return self.src[index, :S], self.tgt[index, :T]


def token_budget_batches(lengths, max_tokens, generator):
    """Batches of similar length whose padded size (rows x longest row) stays within max_tokens, in random order.

    Like fairseq's --max-tokens: sorting by length before cutting batches wastes little on padding, and a
    fresh shuffle before the (stable) sort varies which examples share a batch from epoch to epoch.
    """
    order = torch.randperm(len(lengths), generator=generator)
    order = order[torch.sort(lengths[order], stable=True).indices]
    batches, start, longest = [], 0, 0
    for end, i in enumerate(order.tolist()):
        longest = max(longest, int(lengths[i]))
        if (end + 1 - start) * longest > max_tokens and end > start:
            batches.append(order[start:end])
            start, longest = end, int(lengths[i])
    batches.append(order[start:])
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

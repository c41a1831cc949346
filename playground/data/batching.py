"""Batches of padded id tensors, cut from a split's token ids kept end to end, one flat array per side."""

import bisect

import numpy as np
import torch

from .tokenizers import BOS, EOS, PAD


SHARE_SAMPLE = 1 << 21  # ids a side that TokenPairs.share reads at most (4 MB of uint16)


def token_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds every id of a vocabulary: 1, 2 or 4 bytes a token."""
    return next(dtype for dtype in (np.uint8, np.uint16, np.uint32) if vocab_size <= np.iinfo(dtype).max + 1)


def flatten(sequences, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Id lists as one flat array and the offsets where each starts (one more offset than sequences)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((i for s in sequences for i in s), dtype=dtype, count=int(offsets[-1]))
    return flat, offsets


def flatten_bytes(chunks) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings (UTF-8 texts) as one flat uint8 array and offsets, as flatten() keeps ids."""
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), offsets


def concatenate(parts) -> tuple[np.ndarray, np.ndarray]:
    """Several (flat, offsets) as one: the sequences of the first, then those of the second, ..."""
    flats = np.concatenate([flat for flat, _ in parts])
    shifts = np.cumsum([0] + [offsets[-1] for _, offsets in parts[:-1]])
    offsets = np.concatenate([parts[0][1][:1]] + [o[1:] + shift for (_, o), shift in zip(parts, shifts)])
    return flats, offsets


class TokenPairs:
    """The (source ids, target ids) pairs of one split, each side one flat array of ids plus the offsets where each
    sentence starts: in memory, or memory-mapped from the token cache (data/cache.py). A batch is padded when it is
    cut, to its own longest row, so no split is ever held padded.

    Targets gain BOS and EOS in the batch: the decoder reads tgt[:, :-1] and learns to predict tgt[:, 1:].
    """

    def __init__(self, src, src_offsets, tgt, tgt_offsets):
        self.src, self.src_offsets, self.tgt, self.tgt_offsets = src, src_offsets, tgt, tgt_offsets
        self.src_lengths = torch.from_numpy(np.diff(src_offsets))  # (N,)
        self.tgt_lengths = torch.from_numpy(np.diff(tgt_offsets)) + 2  # (N,) with BOS and EOS

    @classmethod
    def from_lists(cls, pairs, vocab_size: int = 1 << 32):
        """From a list of (source ids, target ids)."""
        dtype = token_dtype(vocab_size)
        return cls(*flatten([s for s, _ in pairs], dtype), *flatten([t for _, t in pairs], dtype))

    def __len__(self):
        return len(self.src_lengths)

    def lengths(self):
        """Each pair's longer side in tokens (targets counted with BOS or EOS, as the decoder sees them)."""
        return torch.maximum(self.src_lengths, self.tgt_lengths - 1)

    def batch(self, index):
        """Rows `index` (a LongTensor) as (src (B, S), tgt (B, T)), padded to the longest row of each side."""
        index = index.numpy()
        src = _padded(self.src, self.src_offsets, index, target=False)
        tgt = _padded(self.tgt, self.tgt_offsets, index, target=True)
        return torch.from_numpy(src), torch.from_numpy(tgt)

    def share(self, token: int, at_most: int = SHARE_SAMPLE) -> tuple[float, float]:
        """The share of `token` among the ids of the source side and of the target side (BOS and EOS are not ids
        here): exact up to `at_most` ids a side, estimated beyond from 64 evenly spaced runs of ids that make
        `at_most` together. Counting a whole memory-mapped corpus would make every page of it resident."""
        return _share(self.src, token, at_most), _share(self.tgt, token, at_most)


def _share(flat, token: int, at_most: int) -> float:
    if len(flat) <= at_most:
        return np.count_nonzero(flat == token) / max(len(flat), 1)
    width = at_most // 64
    starts = np.linspace(0, len(flat) - width, 64).astype(np.int64)
    return sum(np.count_nonzero(flat[s:s + width] == token) for s in starts) / (64 * width)


def _padded(flat, offsets, index, target: bool) -> np.ndarray:
    """Rows `index` of a flat side as an int64 (B, L) array, PAD after each row's end; a target row is BOS, the ids,
    EOS."""
    starts, lengths = offsets[index], offsets[index + 1] - offsets[index]  # (B,)
    extra = 2 if target else 0
    rows = np.full((len(index), int(lengths.max()) + extra), PAD, dtype=np.int64)  # (B, L)
    columns = np.arange(rows.shape[1] - extra)  # (L',)
    real = columns < lengths[:, None]  # (B, L')
    body = rows[:, 1:-1] if target else rows
    body[real] = flat[(starts[:, None] + columns)[real]]  # memory-mapped: reads only these rows' pages
    if target:
        rows[:, 0] = BOS
        rows[np.arange(len(index)), lengths + 1] = EOS
    return rows


def token_budget_batches(lengths, max_tokens, generator):
    """Batches of similar length whose padded size (rows x longest row) stays within max_tokens, in random order.

    Like fairseq's --max-tokens: sorting by length before cutting batches wastes little on padding, and a
    fresh shuffle before the (stable) sort varies which examples share a batch from epoch to epoch.
    """
    order = torch.randperm(len(lengths), generator=generator)
    order = order[torch.sort(lengths[order], stable=True).indices]
    ordered = lengths[order].numpy()  # ascending: a batch's longest row is its last
    batches, start = [], 0
    while start < len(order):
        # a batch ends before the first row that would take it over budget (at least one row a batch); its padded
        # size only grows with each row added, so that row is found by bisection, not by walking every row
        end = bisect.bisect_right(range(start + 1, len(order)), max_tokens,
                                  key=lambda row: (row + 1 - start) * int(ordered[row])) + start + 1
        batches.append(order[start:end])
        start = end
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

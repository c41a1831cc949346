"""Turning a trained model into output sequences: greedy decoding and beam search (Section 6.1).

Both decode incrementally: the encoder runs once, cross-attention keys/values are computed once per
source, and each step feeds only the newest token, appending its self-attention keys/values to a cache.
"""

import torch


def _never_generate_specials(model, logits):
    """PAD and BOS are never outputs: PAD marks the space after EOS, BOS only starts the decoder input."""
    logits[:, model.pad_id] = float("-inf")
    logits[:, model.bos_id] = float("-inf")
    return logits


def _reorder_cache(cache, index):
    """Select (and repeat) the batch rows of every cached key/value tensor, for beam search."""
    for layer in cache.values():
        for attn in layer.values():
            for key in attn:
                attn[key] = attn[key].index_select(0, index)


@torch.no_grad()
def greedy_decode(model, src, max_len, use_cache=True):
    """Pick the most likely token at each step; each row stops at its EOS. Returns (B, L) ids after BOS."""
    B = src.size(0)
    memory, src_mask = model.encode(src)
    PAD, BOS, EOS = model.pad_id, model.bos_id, model.eos_id
    ys = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    cache = {} if use_cache else None
    for t in range(max_len):
        if use_cache:
            logits = model.decode(ys[:, -1:], memory, src_mask, cache=cache, offset=t)[:, -1]  # (B, V)
        else:  # recompute the whole prefix every step: the slow baseline, kept for tests and the benchmark
            logits = model.decode(ys, memory, src_mask)[:, -1]  # (B, V)
        next_token = _never_generate_specials(model, logits).argmax(-1).masked_fill(finished, PAD)  # (B,)
        ys = torch.cat([ys, next_token[:, None]], dim=1)
        finished |= next_token == EOS
        if (t + 1) % 8 == 0 and finished.all():  # check for the end now and then: each check waits for the device
            break
    return _trim(ys[:, 1:], PAD)


def _trim(ids, pad_id):
    """Drop trailing columns that are PAD in every row."""
    keep = (ids != pad_id).any(0).nonzero()
    return ids[:, : int(keep[-1]) + 1] if len(keep) else ids[:, :1]


def length_penalty_factor(lengths, alpha):
    """lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016, Equation 14); alpha = 0 ranks by raw log-probability."""
    return ((5.0 + lengths) / 6.0) ** alpha


@torch.no_grad()
def beam_search(model, src, max_len, beam_size, length_penalty=0.6):
    """Keep the beam_size best partial sequences per source; return the best finished one by score / lp (B, L)."""
    B, K = src.size(0), beam_size
    PAD, BOS, EOS = model.pad_id, model.bos_id, model.eos_id
    device = src.device
    memory, src_mask = model.encode(src)
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, D)
    src_mask = src_mask.repeat_interleave(K, dim=0)  # (B*K, 1, 1, S)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start as the same empty sequence: keep one copy
    ys = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)
    finished = torch.zeros(B * K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B * K, device=device)
    cache = {}
    for t in range(max_len):
        logits = model.decode(ys[:, -1:], memory, src_mask, cache=cache, offset=t)[:, -1].float()
        logp = _never_generate_specials(model, logits).log_softmax(-1)  # (B*K, V)
        V = logp.size(-1)
        # a finished beam can only extend with PAD, at no cost, so its score stays what it was
        logp = torch.where(finished[:, None], torch.full_like(logp, float("-inf")), logp)
        logp[:, PAD] = torch.where(finished, 0.0, float("-inf"))
        candidates = (scores.view(B * K, 1) + logp).view(B, K * V)  # (B, K*V)
        scores, index = candidates.topk(K, dim=-1)  # (B, K)
        beam = (index // V + torch.arange(B, device=device)[:, None] * K).view(-1)  # (B*K,) rows to keep
        token = (index % V).view(-1)  # (B*K,)
        ys = torch.cat([ys.index_select(0, beam), token[:, None]], dim=1)
        finished = finished.index_select(0, beam)
        lengths = lengths.index_select(0, beam) + (~finished).float()
        finished = finished | (token == EOS)
        _reorder_cache(cache, beam)
        if (t + 1) % 8 == 0 and finished.all():
            break
    normalized = scores / length_penalty_factor(lengths.view(B, K), length_penalty)
    best = normalized.argmax(-1) + torch.arange(B, device=device) * K  # (B,)
    return _trim(ys.index_select(0, best)[:, 1:], PAD)

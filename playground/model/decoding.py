"""Turning a trained model into output sequences (Section 6.1): greedy decoding, sampling and beam search.

All three decode incrementally: the encoder runs once, cross-attention keys/values are computed once per
source, and each step feeds only the newest token, appending its self-attention keys/values to a cache.
`max_len` is one number for every row, or a LongTensor (B,) with each row's own limit.
"""

import torch


def _never_generate_specials(model, logits):
    """PAD and BOS are never outputs: PAD marks the space after EOS, BOS only starts the decoder input."""
    logits[:, model.pad_id] = float("-inf")
    logits[:, model.bos_id] = float("-inf")
    return logits


def block_repeated_ngrams(ys, logits, n, eos_id):
    """No n-gram twice (Paulus et al. 2017): a token that would complete an n-gram already in ys (N, L) gets -inf
    in logits (N, V). EOS is never blocked, so every sentence can end."""
    if n <= 0 or ys.size(1) < n:
        return logits
    grams = ys.unfold(1, n, 1)  # (N, G, n): every n-gram so far
    newest = ys[:, ys.size(1) - n + 1:]  # (N, n-1): the start of the n-gram the next token completes
    repeats = (grams[:, :, :-1] == newest[:, None, :]).all(-1)  # (N, G): n-grams that started the same way
    banned = torch.zeros_like(logits).scatter_add_(1, grams[:, :, -1], repeats.to(logits.dtype)) > 0  # (N, V)
    banned[:, eos_id] = False
    return logits.masked_fill(banned, float("-inf"))


def top_k_top_p(logits, top_k=0, top_p=1.0):
    """Keep the top_k most likely tokens (and any tied with the k-th; 0: all), then the fewest of them whose
    probabilities add up to at least top_p, the nucleus of Holtzman et al. (2020); the rest get -inf. logits (N, V)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)  # (N, V)
        probs = ordered.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the more likely tokens already hold top_p: (N, V), sorted
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(-1, order, outside), float("-inf"))
    return logits


def _row_limits(max_len, B, device):
    """max_len as a LongTensor (B,) of each row's limit, and the longest of them."""
    limits = torch.as_tensor(max_len, device=device).expand(B)
    return limits, int(limits.max())


def _one_token_at_a_time(model, src, max_len, choose, use_cache=True, no_repeat_ngram_size=0):
    """Greedy decoding and sampling: choose(logits (B, V)) -> (B,) picks each row's next token, until its EOS."""
    B = src.size(0)
    memory, src_mask = model.encode(src)
    PAD, BOS, EOS = model.pad_id, model.bos_id, model.eos_id
    limits, longest = _row_limits(max_len, B, src.device)
    ys = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    cache = {} if use_cache else None
    for t in range(longest):
        finished |= limits <= t  # a row at its limit ends without EOS
        if use_cache:
            logits = model.decode(ys[:, -1:], memory, src_mask, cache=cache, offset=t)[:, -1]  # (B, V)
        else:  # recompute the whole prefix every step: the slow baseline, kept for tests and the benchmark
            logits = model.decode(ys, memory, src_mask)[:, -1]  # (B, V)
        logits = block_repeated_ngrams(ys, _never_generate_specials(model, logits), no_repeat_ngram_size, EOS)
        next_token = choose(logits).masked_fill(finished, PAD)  # (B,)
        ys = torch.cat([ys, next_token[:, None]], dim=1)
        finished |= next_token == EOS
        if (t + 1) % 8 == 0 and finished.all():  # check for the end now and then: each check waits for the device
            break
    return trim_padding(ys[:, 1:], PAD)


@torch.no_grad()
def greedy_decode(model, src, max_len, use_cache=True, no_repeat_ngram_size=0):
    """Pick the most likely token at each step; each row stops at its EOS. Returns (B, L) ids after BOS."""
    return _one_token_at_a_time(model, src, max_len, lambda logits: logits.argmax(-1), use_cache, no_repeat_ngram_size)


@torch.no_grad()
def sample(model, src, max_len, temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=0, generator=None):
    """Draw each token from the model's distribution: softmax(logits / temperature), cut to the top_k tokens and
    the top_p nucleus. Temperature below 1 sharpens it towards greedy, above 1 flattens it. Returns (B, L)."""
    def draw(logits):
        probs = top_k_top_p(logits.float() / temperature, top_k, top_p).softmax(-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    return _one_token_at_a_time(model, src, max_len, draw, True, no_repeat_ngram_size)


def trim_padding(ids, pad_id):
    """Drop trailing columns that are PAD in every row."""
    keep = (ids != pad_id).any(0).nonzero()
    return ids[:, : int(keep[-1]) + 1] if len(keep) else ids[:, :1]


def length_penalty_factor(lengths, alpha):
    """lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016, Equation 14); alpha = 0 ranks by raw log-probability."""
    return ((5.0 + lengths) / 6.0) ** alpha


@torch.no_grad()
def beam_search(model, src, max_len, beam_size, length_penalty=0.6, nbest=1, no_repeat_ngram_size=0):
    """Keep the beam_size best partial sequences per source. One that ends (EOS among the beam_size best candidates,
    or its row's length limit) is set aside with the beam_size best finished so far, and the next best unfinished one
    takes its place in the beam; a source is done when no sequence in its beam could still score above them (as
    tensor2tensor's search, which the paper used). Returns the nbest finished ones, best first: ids (B, N, L) and
    their scores (B, N), the log-probability divided by the length penalty, by which they are ranked."""
    B, K = src.size(0), beam_size
    PAD, BOS, EOS = model.pad_id, model.bos_id, model.eos_id
    device = src.device
    memory, src_mask = model.encode(src)
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, D)
    src_mask = None if src_mask is None else src_mask.repeat_interleave(K, dim=0)  # (B*K, 1, 1, S)
    limits, longest = _row_limits(max_len, B, device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start as the same empty sequence: keep one copy
    ys = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)
    done_ids = torch.full((B, K, 0), PAD, dtype=torch.long, device=device)  # (B, K, L): finished, best first
    done_scores = torch.full((B, K), float("-inf"), device=device)  # (B, K): their normalised scores
    done = torch.zeros(B, dtype=torch.bool, device=device)
    rows = torch.arange(B, device=device)[:, None] * K  # (B, 1): each source's first beam
    cache = {}
    for t in range(longest + 1):
        # the beams of a row at its limit end there without EOS (scored without EOS's cost)
        ending = (limits <= t) & ~done  # (B,)
        ended = scores.masked_fill(~ending[:, None], float("-inf")) / length_penalty_factor(t, length_penalty)
        done_ids, done_scores = _keep_best(done_ids, done_scores, ys[:, 1:].view(B, K, t), ended)
        done = done | ending
        if t == longest or ((t + 1) % 8 == 0 and done.all()):  # check now and then: each check waits for the device
            break
        logp = model.decode(ys[:, -1:], memory, src_mask, cache=cache, offset=t)[:, -1].float().log_softmax(-1)
        # the model's own log-probabilities (so scores are what mode=score gives), then the tokens it may not pick
        logp = block_repeated_ngrams(ys, _never_generate_specials(model, logp), no_repeat_ngram_size, EOS)  # (B*K, V)
        V = logp.size(-1)
        candidates = (scores.view(B * K, 1) + logp).view(B, K * V)  # (B, K*V)
        top, index = candidates.topk(2 * K, dim=-1)  # (B, 2K): at most K end in EOS, so K others go on
        beam, token = index // V + rows, index % V  # (B, 2K): rows of ys, next tokens
        # an EOS among the K best candidates finishes its sequence (a done row finishes no more)
        finishing = (token[:, :K] == EOS) & (top[:, :K] > float("-inf")) & ~done[:, None]  # (B, K)
        finished = torch.cat([ys.index_select(0, beam[:, :K].reshape(-1))[:, 1:].view(B, K, t),
                              token[:, :K, None]], dim=2)  # (B, K, t+1)
        ended = top[:, :K].masked_fill(~finishing, float("-inf")) / length_penalty_factor(t + 1, length_penalty)
        done_ids = torch.nn.functional.pad(done_ids, (0, 1), value=PAD)  # (B, K, t+1)
        done_ids, done_scores = _keep_best(done_ids, done_scores, finished, ended)
        # the K best candidates that do not end go on: a stable sort keeps their order
        going_on = (token == EOS).to(torch.uint8).sort(dim=-1, stable=True).indices[:, :K]  # (B, K)
        scores = top.gather(1, going_on)
        beam = beam.gather(1, going_on).view(-1)  # (B*K,)
        ys = torch.cat([ys.index_select(0, beam), token.gather(1, going_on).view(-1, 1)], dim=1)
        _reorder_cache(cache, beam)
        # log-probabilities only fall as a sequence grows, so the best a beam can still reach is its score now over
        # the largest length penalty it could end with (its length now or its row's limit: lp is monotonic)
        largest = length_penalty_factor(limits, length_penalty).clamp(min=length_penalty_factor(t + 1, length_penalty))
        reachable = scores.max(1).values / largest  # (B,)
        done = done | (done_scores[:, -1] >= reachable)
    return trim_padding(done_ids[:, :nbest].reshape(B * nbest, -1), PAD).view(B, nbest, -1), done_scores[:, :nbest]


def _keep_best(ids, scores, new_ids, new_scores):
    """The K best of the finished sequences ids (B, K, L), scores (B, K) and new ones of the same shapes, best first."""
    scores, order = torch.cat([scores, new_scores], dim=1).topk(scores.size(1), dim=-1)  # (B, K)
    ids = torch.cat([ids, new_ids], dim=1)  # (B, 2K, L)
    return ids.gather(1, order[..., None].expand(-1, -1, ids.size(2))), scores


def _reorder_cache(cache, index):
    """Select (and repeat) the batch rows of every cached key/value tensor, for beam search. The cross-attention's
    keys and values are left as they are: they come from the source, the same for every beam of a sentence, and
    a beam is only ever continued by beams of its own sentence."""
    for layer in cache.values():
        for name, attn in layer.items():
            if name != "cross":
                for key in attn:
                    attn[key] = attn[key].index_select(0, index)

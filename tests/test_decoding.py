import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from conftest import build
from playground.data import BOS, EOS, PAD
from playground.model.decoding import beam_search, greedy_decode, length_penalty_factor, top_k_top_p, trim_padding

V = 24


def sequence_log_prob(model, src, ids):
    """The model's log-probability of each row of ids (B, L), counting tokens up to and including EOS."""
    tgt_in = torch.cat([torch.full((ids.size(0), 1), BOS), ids[:, :-1]], dim=1)
    logp = model(src, tgt_in).log_softmax(-1).gather(-1, ids[..., None])[..., 0]  # (B, L)
    after_eos = F.pad((ids == EOS).cumsum(1)[:, :-1], (1, 0)) > 0
    return logp.masked_fill(after_eos | (ids == PAD), 0.0).sum(1)


@pytest.fixture
def model_and_source(seeded):
    model = build(tiny_model_config(d_model=32, heads=2), V, V).eval()
    with torch.no_grad():
        model.generator.bias[EOS] = 2.0  # some rows end early, others run to max_len
    src = torch.randint(4, V, (6, 9))
    src[1, 5:] = PAD
    return model, src


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rotary", "none"])
def test_cached_greedy_decoding_equals_recomputing_the_prefix(positional, seeded):
    model = build(tiny_model_config(positional=positional), V, V).eval()
    src = torch.randint(4, V, (5, 8))
    cached = model.generate(src, max_len=12)
    assert torch.equal(cached, model.generate(src, max_len=12, use_cache=False))


def test_greedy_rows_stop_at_eos_and_are_padded_after_it(model_and_source):
    model, src = model_and_source
    out = model.generate(src, max_len=15)
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])
        assert PAD not in row[: row.index(EOS) if EOS in row else len(row)]
    assert (out == EOS).any()


def test_beam_search_with_one_beam_is_greedy_decoding(model_and_source):
    model, src = model_and_source
    ids, _ = beam_search(model, src, 15, beam_size=1, length_penalty=0.0)
    assert torch.equal(trim_padding(ids[:, 0], PAD), greedy_decode(model, src, 15))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_finds_a_sequence_the_model_scores_at_least_as_high_as_greedy(seed):
    torch.manual_seed(seed)
    model = build(tiny_model_config(d_model=32, heads=2), V, V).eval()
    src = torch.randint(4, V, (8, 7))
    with torch.no_grad():
        greedy = model.generate(src, max_len=10)
        beam = model.generate(src, max_len=10, beam_size=5, length_penalty=0.0)
        greedy_score, beam_score = sequence_log_prob(model, src, greedy), sequence_log_prob(model, src, beam)
    assert (beam_score >= greedy_score - 1e-4).all()
    assert (beam_score > greedy_score + 1e-4).any()  # and it is not just greedy again


def test_attention_weights_of_every_layer_and_head_come_back_on_request(model_and_source):
    model, src = model_and_source
    tgt = torch.randint(4, V, (src.size(0), 5))
    maps = model.attention_maps(src, tgt)
    assert maps["encoder.layers.0.self_attn"].shape == (6, 2, 9, 9)
    assert maps["decoder.layers.1.self_attn"].shape == (6, 2, 5, 5)
    assert maps["decoder.layers.1.cross_attn"].shape == (6, 2, 5, 9)
    torch.testing.assert_close(maps["decoder.layers.0.cross_attn"].sum(-1), torch.ones(6, 2, 5))
    assert maps["decoder.layers.0.cross_attn"][1, :, :, 5:].abs().max() == 0  # padding gets no attention
    assert maps["decoder.layers.0.self_attn"][0, 0].triu(1).abs().max() == 0  # nor does the future
    assert all(not m.record_weights for m in model.modules() if hasattr(m, "record_weights"))


def test_nbest_gives_distinct_hypotheses_best_first_and_the_first_is_plain_beam_search(model_and_source):
    model, src = model_and_source
    ids, scores = beam_search(model, src, 15, beam_size=5, length_penalty=0.6, nbest=3)  # (B, 3, L), (B, 3)
    assert ids.shape[:2] == (6, 3) and scores.shape == (6, 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for row in ids.tolist():
        assert len({tuple(t for t in hypothesis if t != PAD) for hypothesis in row}) == 3
    best = trim_padding(ids[:, 0], PAD)
    assert torch.equal(best, model.generate(src, 15, beam_size=5, length_penalty=0.6))
    # a score is the hypothesis's log-probability over the length penalty, its length counting EOS
    lengths = ((best != PAD).sum(1)).float()
    torch.testing.assert_close(scores[:, 0], sequence_log_prob(model, src, best) / length_penalty_factor(lengths, 0.6),
                               atol=1e-4, rtol=1e-4)


def test_sampling_from_the_single_most_likely_token_is_greedy_decoding(model_and_source):
    model, src = model_and_source
    assert torch.equal(model.generate(src, 15, sampling=True, top_k=1), model.generate(src, 15))
    assert torch.equal(model.generate(src, 15, sampling=True, top_p=1e-6), model.generate(src, 15))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_first_tokens_follow_the_models_softmax_at_the_temperature(temperature, seeded):
    model = build(tiny_model_config(d_model=32, heads=2), 10, 10).eval()
    with torch.no_grad():  # spread the first token's probabilities over several tokens
        model.generator.bias.copy_(torch.tensor([0.0, 0.0, 0.5, -1.0, 1.0, 0.3, -0.5, 0.8, 0.0, -0.2]))
    n = 20000
    src = torch.randint(4, 10, (1, 6))
    first = model.generate(src.expand(n, 6), 1, sampling=True, temperature=temperature,
                           generator=seeded.generator)[:, 0]
    with torch.no_grad():
        logits = model(src, torch.full((1, 1), BOS))[0, -1]  # (V,)
    logits[PAD] = logits[BOS] = float("-inf")  # never generated
    expected = (logits / temperature).softmax(-1)
    observed = torch.bincount(first, minlength=10).float() / n
    # a frequency's standard error is sqrt(p (1 - p) / n) <= 0.0036 at n = 20000: allow four of them
    assert (observed - expected).abs().max() < 0.015, (observed, expected)
    assert observed[PAD] == observed[BOS] == 0


def test_top_k_and_top_p_keep_the_most_likely_tokens_that_hold_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert top_k_top_p(logits, top_k=3).isfinite().tolist() == [[True, True, True, False]]
    assert top_k_top_p(logits, top_p=0.75).isfinite().tolist() == [[True, True, False, False]]
    assert top_k_top_p(logits, top_p=0.85).isfinite().tolist() == [[True, True, True, False]]
    assert top_k_top_p(logits, top_p=0.4).isfinite().tolist() == [[True, False, False, False]]  # one is always kept


def bigrams(row):
    row = row[: row.index(EOS) + 1] if EOS in row else row
    return [tuple(row[i:i + 2]) for i in range(len(row) - 1)]


@pytest.mark.parametrize("how", [{}, {"beam_size": 4}, {"sampling": True, "temperature": 0.5}])
def test_no_repeat_ngram_size_2_leaves_no_repeated_bigram_in_a_model_built_to_repeat(how, seeded):
    model = build(tiny_model_config(d_model=32, heads=2), V, V).eval()
    with torch.no_grad():
        model.generator.bias[5] = 8.0  # token 5, again and again
        model.generator.bias[EOS] = -8.0
    src = torch.randint(4, V, (4, 6))
    repeating = model.generate(src, 12, **how).tolist()
    assert all(len(set(bigrams(row))) < len(bigrams(row)) for row in repeating)
    blocked = model.generate(src, 12, no_repeat_ngram_size=2, **how).tolist()
    for row in blocked:
        assert len(set(bigrams(row))) == len(bigrams(row)), row
        assert PAD not in row and EOS not in row  # blocking found other tokens: no sentence ended early


@pytest.mark.parametrize("how", [{}, {"beam_size": 3}])
def test_each_row_decodes_as_it_would_alone_within_its_own_length_limit(how, model_and_source):
    model, src = model_and_source
    limits = torch.tensor([3, 15, 7, 1, 12, 9])
    together = model.generate(src, limits, **how)
    for i in range(src.size(0)):
        alone = model.generate(src[i:i + 1, : int((src[i] != PAD).sum())], int(limits[i]), **how)[0].tolist()
        assert together[i].tolist()[: len(alone)] == alone and set(together[i].tolist()[len(alone):]) <= {PAD}
        assert len(alone) <= limits[i]


def test_the_length_penalty_factor_and_the_nucleus_and_trigram_blocking_by_hand():
    from playground.model.decoding import block_repeated_ngrams, length_penalty_factor, top_k_top_p

    torch.testing.assert_close(length_penalty_factor(torch.tensor([1.0, 7.0]), 0.6), torch.tensor([1.0, 2 ** 0.6]))
    kept = top_k_top_p(torch.zeros(1, 4), top_p=0.5) > float("-inf")  # four tokens of 0.25: two reach 0.5
    assert kept.tolist() == [[True, True, False, False]]
    ys = torch.tensor([[1, 5, 6, 7, 5, 6]])  # BOS 5 6 7 5 6: a next 7 would repeat the trigram 5 6 7
    banned = block_repeated_ngrams(ys, torch.zeros(1, 10), 3, eos_id=2) == float("-inf")
    assert banned.nonzero().tolist() == [[0, 7]]


def test_the_length_penalty_changes_which_hypothesis_beam_search_keeps(seeded):
    model = build(tiny_model_config(d_model=32, heads=2), V, V).eval()  # no EOS bias: outputs of many lengths
    src = torch.randint(4, V, (8, 7))
    chosen = {}
    for alpha in (0.0, 1.0):
        ids, scores = beam_search(model, src, 10, beam_size=5, length_penalty=alpha)
        best = trim_padding(ids[:, 0], PAD)
        lengths = (best != PAD).sum(1).float()
        assert (lengths > 1).any()  # the factor is not 1 everywhere
        torch.testing.assert_close(scores[:, 0], sequence_log_prob(model, src, best) / ((5 + lengths) / 6) ** alpha,
                                   atol=1e-4, rtol=1e-4)
        chosen[alpha] = lengths
    assert (chosen[1.0] >= chosen[0.0]).all() and (chosen[1.0] > chosen[0.0]).any()  # a penalty favours longer outputs


@pytest.mark.parametrize("kernels", ["reference", "fast"])
@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_a_beam_wider_than_every_output_finds_the_exhaustive_best_and_its_nbest_in_order(kernels, alpha, seeded):
    import itertools

    vocab, limit = 7, 3  # outputs: EOS, UNK, 4, 5, 6; every one of at most 3 tokens, ended by EOS or the limit
    model = build(tiny_model_config(d_model=16, heads=2, enc_layers=1, dec_layers=1, d_ff=32), vocab, vocab, kernels)
    model.eval()
    words = [t for t in range(vocab) if t not in (PAD, BOS, EOS)]
    outputs = [[*body, EOS] for n in range(limit) for body in itertools.product(words, repeat=n)]
    outputs += [list(body) for body in itertools.product(words, repeat=limit)]
    src = torch.tensor([[4, 6, 5, 3]])
    ids = torch.tensor([row + [PAD] * (limit - len(row)) for row in outputs])  # (85, 3)
    with torch.no_grad():
        exhaustive = sequence_log_prob(model, src.expand(len(outputs), -1), ids)
    lengths = torch.tensor([float(len(row)) for row in outputs])
    exhaustive = exhaustive / length_penalty_factor(lengths, alpha)
    best = exhaustive.argsort(descending=True)[:5]
    found, scores = beam_search(model, src, limit, beam_size=len(outputs), length_penalty=alpha, nbest=5)
    assert [[t for t in row if t != PAD] for row in found[0].tolist()] == [outputs[i] for i in best]
    torch.testing.assert_close(scores[0], exhaustive[best], atol=1e-4, rtol=1e-4)


class _TableModel(torch.nn.Module):
    """A decoder whose next-token probabilities depend on the step alone: PAD, BOS, EOS, UNK, A, B."""
    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, steps):
        super().__init__()
        self.steps = steps  # probabilities of EOS, UNK, A, B at each step (the last for every step after)

    def encode(self, src):
        return torch.zeros(src.size(0), 1, 1), None

    def decode(self, tgt_in, memory, src_mask, cache=None, offset=0):
        eos, unk, a, b = self.steps[min(offset, len(self.steps) - 1)]
        logits = torch.tensor([0.0, 0.0, eos, unk, a, b]).log().clamp(min=-1e9)  # (V,): never PAD or BOS
        return logits.expand(tgt_in.size(0), 1, -1)  # (N, 1, V)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_a_translation_beam_search_finished_is_not_lost_when_better_unfinished_ones_outnumber_it(alpha):
    # step 0: "A" (0.7) and the empty output (EOS, 0.2) are the 2 best; step 1: both children of "A" (0.315 each)
    # beat the empty output's 0.2, but every longer output ends below it (0.315 * 0.45 at best, without EOS)
    model = _TableModel([(0.2, 0.0, 0.7, 0.1), (0.1, 0.0, 0.45, 0.45)])
    ids, scores = beam_search(model, torch.tensor([[4, 5]]), 3, beam_size=2, length_penalty=alpha, nbest=2)
    assert ids[0, 0].tolist()[:1] == [EOS]  # the empty output: its log-probability log(0.2) is the highest
    torch.testing.assert_close(scores[0, 0], torch.tensor(0.2).log() / length_penalty_factor(torch.tensor(1.0), alpha))
    assert scores[0, 1] < scores[0, 0]

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from conftest import build
from playground.data import BOS, EOS, PAD
from playground.model.decoding import beam_search, greedy_decode

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
    with torch.no_grad():
        assert torch.equal(beam_search(model, src, 15, beam_size=1, length_penalty=0.0), greedy_decode(model, src, 15))


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

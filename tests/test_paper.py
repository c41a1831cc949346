"""The paper's numbers, written out: each test holds one detail of "Attention Is All You Need" to the value or
formula the paper gives, computed here by hand rather than by the code under test."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import build, tiny_model_config
from playground.model import dropout as dropout_module
from playground.model.decoding import length_penalty_factor
from playground.model.dropout import Dropout
from playground.model.embeddings import sinusoid_table
from playground.model.layers import PostNormResidual
from playground.setup import build_optimizer, build_scheduler


def test_the_positional_encoding_is_section_3_5s_sines_and_cosines():
    table = sinusoid_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):  # PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(the same)
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=2e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=2e-6)
    assert table[1, 0].item() == pytest.approx(0.841471, abs=1e-6)  # sin 1
    assert table[1, 1].item() == pytest.approx(0.540302, abs=1e-6)  # cos 1


def test_dropout_falls_on_each_sublayers_output_before_the_residual_add(monkeypatch):
    """Section 5.4: LayerNorm(x + Dropout(Sublayer(x))). With dropout dropping everything, only x is left to
    normalise; dropout after the norm would give zeros, and dropout on x + Sublayer(x) would give LayerNorm(0)."""
    monkeypatch.setattr(dropout_module, "dropout", lambda x, p, training: torch.zeros_like(x) if training else x)
    residual = PostNormResidual(8, 0.5, "layernorm").train()
    x = torch.randn(2, 3, 8)
    out = residual(x, lambda h: 5 * h + 1)
    torch.testing.assert_close(out, residual.norm(x))


def test_dropout_falls_on_the_sums_of_embeddings_and_positions_in_both_stacks(monkeypatch):
    monkeypatch.setattr(dropout_module, "dropout", lambda x, p, training: torch.zeros_like(x) if training else x)
    model = build(tiny_model_config(dropout=0.1), 20, 20).train()
    seen = {}
    for stack, layer in (("encoder", model.encoder.layers[0]), ("decoder", model.decoder.layers[0])):
        layer.register_forward_pre_hook(lambda module, args, stack=stack: seen.update({stack: args[0]}))
    model(torch.randint(4, 20, (2, 5)), torch.randint(4, 20, (2, 4)))
    assert not seen["encoder"].any() and not seen["decoder"].any()


def _dropouts(model) -> dict:
    """Each Dropout module's probability, by the part of a layer it sits in."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, Dropout):
            part = name.split(".")[-2] if "." in name else "embeddings"
            found.setdefault(part, set()).add(module.p)
    return found


def test_the_papers_model_drops_out_only_what_section_5_4_names_and_nn_transformers_placement_is_the_default(
        compose_config):
    paper = build(compose_config("model=base", "model.enc_layers=1", "model.dec_layers=1", "model.d_model=32",
                                 "model.d_ff=64", "model.heads=4").model, 20, 20)
    assert _dropouts(paper) == {"embeddings": {0.1}, "attn_residual": {0.1}, "ff_residual": {0.1},
                                "self_residual": {0.1}, "cross_residual": {0.1},
                                "self_attn": {0.0}, "cross_attn": {0.0}, "feed_forward": {0.0}}
    unset = _dropouts(build(tiny_model_config(dropout=0.2), 20, 20))  # attention_dropout, ffn_dropout: null
    assert unset["self_attn"] == unset["cross_attn"] == unset["feed_forward"] == unset["ff_residual"] == {0.2}
    chosen = _dropouts(build(tiny_model_config(dropout=0.2, attention_dropout=0.05, ffn_dropout=0.3), 20, 20))
    assert (chosen["self_attn"], chosen["feed_forward"], chosen["ff_residual"]) == ({0.05}, {0.3}, {0.2})


def test_adam_gets_section_5_3s_betas_and_epsilon(compose_config):
    for overrides in ((), ("experiment=paper_base",)):
        cfg = compose_config(*overrides, "optimizer.lr=1e-3")
        optimizer = build_optimizer(cfg.optimizer, [nn.Parameter(torch.zeros(2))], torch.device("cpu"))
        assert isinstance(optimizer, torch.optim.Adam)
        group = optimizer.param_groups[0]
        assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.98), 1e-9, 0.0)


def test_the_learning_rate_is_section_5_3s_formula_at_every_step(compose_config):
    """lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5), step_num counted from 1."""
    cfg = compose_config("experiment=paper_base")
    d_model, warmup = cfg.model.d_model, cfg.scheduler.warmup_steps
    assert (d_model, warmup) == (512, 4000)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=d_model ** -0.5 * warmup ** -0.5)  # the peak
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.max_steps)
    rates = {}
    for step in range(1, 20001):
        rates[step] = scheduler.get_last_lr()[0]  # the rate of this step's update
        optimizer.step()
        scheduler.step()
    for step in (1, 2, 100, 3999, 4000, 4001, 10000, 20000):
        paper = d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
        assert rates[step] == pytest.approx(paper, rel=1e-9), step
    assert max(rates, key=rates.get) == 4000 and cfg.optimizer.lr == pytest.approx(7e-4, rel=2e-3)


def test_the_length_penalty_is_wu_et_als_with_the_papers_alpha(compose_config):
    """lp(Y) = ((5 + |Y|) / 6)^alpha (Section 6.1 cites Wu et al. 2016), alpha = 0.6."""
    factors = length_penalty_factor(torch.tensor([1.0, 10.0, 25.0]), 0.6)
    torch.testing.assert_close(factors, torch.tensor([1.0, 2.5 ** 0.6, 5.0 ** 0.6]))
    assert factors[1].item() == pytest.approx(1.732862, abs=1e-6)
    d = compose_config("decode=beam").decode
    assert (d.beam_size, d.length_penalty, d.max_len_a, d.max_len_b) == (4, 0.6, 1.0, 50)


def test_the_paper_base_preset_is_the_papers_recipe(compose_config):
    cfg = compose_config("experiment=paper_base")
    m, t = cfg.model, cfg.trainer
    assert (m.d_model, m.heads, m.enc_layers, m.dec_layers, m.d_ff, m.dropout) == (512, 8, 6, 6, 2048, 0.1)
    assert (m.attention_dropout, m.ffn_dropout, m.tie_embeddings, cfg.dataset.shared_vocab) == (0.0, 0.0, "all", True)
    assert (t.label_smoothing, t.grad_clip, t.max_tokens, t.max_steps) == (0.1, 0.0, 25000, 100000)
    assert (cfg.scheduler.name, cfg.decode.beam_size) == ("noam", 4)
    with torch.device("meta"):  # Table 3 counts 65M parameters for base with a shared 37k vocabulary
        model = build(m, 37000, 37000)
    assert model.src_embed.weight is model.tgt_embed.weight is model.generator.weight
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(65e6, rel=0.05)


def test_the_big_preset_is_table_3s_big_row(compose_config):
    m = compose_config("model=big").model
    assert (m.d_model, m.heads, m.enc_layers, m.dec_layers, m.d_ff, m.dropout) == (1024, 16, 6, 6, 4096, 0.3)
    assert (m.attention_dropout, m.ffn_dropout) == (0.0, 0.0)


def test_a_dropout_probability_out_of_range_is_refused_naming_its_key(compose_config):
    from playground.checks import check_model
    from playground.errors import UserError

    for key in ("dropout", "attention_dropout", "ffn_dropout"):
        with pytest.raises(UserError, match=rf"^model.{key}=1.0 must be in \[0, 1\)"):
            check_model(compose_config(f"model.{key}=1.0").model)
    check_model(SimpleNamespace(**{**vars(tiny_model_config()), "attention_dropout": None}))  # null: model.dropout

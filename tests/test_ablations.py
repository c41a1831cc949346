"""model.ablate: each entry removes the piece of the paper it names, and only that (docs/ablations.md)."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import build, tiny_model_config
from playground.checks import check_model
from playground.data import BOS, PAD
from playground.errors import UserError
from playground.model.attention import MultiHeadAttention
from playground.model.layers import PostNormResidual, PreNormResidual
from playground.setup import build_scheduler, cosine, noam

V = 20


def model(*ablate, **changes):
    return build(tiny_model_config(ablate=list(ablate), **changes), V, V).eval()


def test_without_the_causal_mask_a_later_target_token_changes_earlier_logits(seeded):
    src = torch.randint(4, V, (2, 6))
    tgt = torch.cat([torch.full((2, 1), BOS), torch.randint(4, V, (2, 5))], dim=1)
    changed = tgt.clone()
    changed[:, -1] = (changed[:, -1] - 4 + 1) % (V - 4) + 4  # another last token
    for ablate, earlier_logits_change in (((), False), (("causal_mask",), True)):
        torch.manual_seed(0)
        m = model(*ablate)
        before, after = m(src, tgt)[:, :-1], m(src, changed)[:, :-1]
        assert (not torch.allclose(before, after)) == earlier_logits_change, ablate


def test_without_the_attention_scale_the_weights_are_the_softmax_of_raw_dot_products(seeded):
    x = torch.randn(2, 5, 32)
    for scaled, divisor in ((True, math.sqrt(8)), (False, 1.0)):
        attn = MultiHeadAttention(32, 4, 0.0, self_attention=True, scaled=scaled).eval()
        attn.record_weights = True
        attn(x)
        q, k, _ = attn.project(x)
        torch.testing.assert_close(attn.weights, (q @ k.transpose(-2, -1) / divisor).softmax(-1))
    assert all(not m.scaled for m in model("attention_scale").modules() if isinstance(m, MultiHeadAttention))


def test_without_the_padding_mask_padding_gets_attention_and_changes_the_output(seeded):
    src = torch.randint(4, V, (2, 6))
    padded = torch.cat([src, torch.full((2, 3), PAD)], dim=1)
    tgt = torch.cat([torch.full((2, 1), BOS), torch.randint(4, V, (2, 4))], dim=1)
    for ablate, padding_matters in (((), False), (("padding_mask",), True)):
        torch.manual_seed(0)
        m = model(*ablate)
        maps = m.attention_maps(padded, tgt)
        assert (maps["decoder.layers.0.cross_attn"][..., 6:].sum() > 0) == padding_matters
        assert (not torch.allclose(m(src, tgt), m(padded, tgt), atol=1e-5)) == padding_matters


@pytest.mark.parametrize("placement", [PostNormResidual, PreNormResidual])
def test_without_the_residual_a_layer_keeps_nothing_of_its_input(placement, seeded):
    x = torch.randn(2, 5, 16)
    silent = lambda h: torch.zeros_like(h)  # noqa: E731: a sublayer that adds nothing
    with_residual = placement(16, 0.0, "layernorm")(x, silent)
    without = placement(16, 0.0, "layernorm", residual=False)(x, silent)
    assert with_residual.abs().sum() > 0 and without.abs().sum() == 0  # the input came through only the "x +"
    assert all(not m.residual for m in model("residual").modules() if hasattr(m, "residual"))


def test_without_layer_norm_there_is_no_norm_and_outputs_are_not_normalised(seeded):
    src = torch.randint(4, V, (2, 6))
    for ablate, normalised in (((), True), (("layer_norm",), False)):
        torch.manual_seed(0)
        m = model(*ablate, final_norm=True)
        assert any(isinstance(x, nn.LayerNorm) for x in m.modules()) == normalised
        memory, _ = m.encode(src)  # post-norm: each position's features have mean 0 and variance 1
        close = torch.allclose(memory.std(-1, unbiased=False), torch.ones(2, 6), atol=1e-3)
        assert close == normalised, ablate


def test_without_the_embedding_scale_embeddings_are_not_multiplied_by_sqrt_d_model(seeded):
    tokens = torch.randint(4, V, (2, 5))
    for ablate, factor in (((), math.sqrt(32)), (("embedding_scale",), 1.0)):
        m = model(*ablate)
        torch.testing.assert_close(m.src_embed(tokens), m.src_embed.weight[tokens] * factor)


def test_without_positions_the_encoder_sees_a_bag_of_tokens(seeded):
    src = torch.randint(4, V, (1, 6))
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    for ablate, order_free in (((), False), (("positional",), True)):
        torch.manual_seed(0)
        m = model(*ablate)
        memory, _ = m.encode(src)
        shuffled, _ = m.encode(src[:, order])
        assert torch.allclose(memory[:, order], shuffled, atol=1e-5) == order_free, ablate
    assert type(model("positional").positional).__name__ == "NoPositionalEncoding"


def test_an_unknown_ablation_is_refused_naming_the_valid_ones():
    with pytest.raises(UserError, match="model.ablate has dropout, which is not a piece it can remove: causal_mask, "
                                        "attention_scale, padding_mask, residual, layer_norm, embedding_scale, "
                                        "positional"):
        check_model(tiny_model_config(ablate=["residual", "dropout"]))


def test_under_fast_kernels_an_unscaled_attention_keeps_its_reference_code_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="playground.kernels"):
        m = build(tiny_model_config(ablate=["attention_scale"]), V, V, kernels="fast")
    assert {type(x).__name__ for x in m.modules() if isinstance(x, MultiHeadAttention)} == {"MultiHeadAttention"}
    assert [r.message for r in caplog.records] == ["trainer.kernels=fast: MultiHeadAttention runs its reference code "
                                                   "under model.ablate=[attention_scale] (its fast kernel computes "
                                                   "the paper's version only)"]
    m = build(tiny_model_config(ablate=["causal_mask", "residual"]), V, V, kernels="fast")
    assert {type(x).__name__ for x in m.modules() if isinstance(x, MultiHeadAttention)} == {"FastMultiHeadAttention"}


def test_without_warmup_noam_starts_at_the_peak_and_decays_as_one_over_sqrt_step_and_cosine_starts_at_the_peak():
    assert [noam(step, 0, 100, 0.0) for step in (1, 4, 100)] == [1.0, 0.5, 0.1]
    assert cosine(1, 0, 100, 0.0) == pytest.approx(1.0, abs=1e-3) and cosine(100, 0, 100, 0.0) == 0.0
    assert noam(1, 10, 100, 0.0) == pytest.approx(0.1)  # with warmup, the paper's linear start
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(SimpleNamespace(name="noam", warmup_steps=0, min_lr_ratio=0.0), optimizer, 100)
    assert scheduler.get_last_lr() == [1.0]  # step 1's rate: accepted, where it used to be refused


def test_redrawing_the_ablation_figure_before_any_run_says_what_to_run_first(tmp_path, capsys):
    import runpy

    from conftest import ROOT

    script = runpy.run_path(str(ROOT / "docs" / "run_ablations.py"))  # its functions, without running main
    with pytest.raises(SystemExit) as exit_:
        script["main"](["--figure-only", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"run python docs/run_ablations.py --out {tmp_path} first")

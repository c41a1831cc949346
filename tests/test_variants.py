"""Every model variant builds, trains a step, and decodes the same with and without the cache."""

import pytest
import torch

from conftest import tiny_model_config
from conftest import build
from playground.data import BOS, PAD
from playground.checks import check_model
from playground.errors import UserError
from playground.model import sequence_loss

VARIANTS = [
    {},
    {"norm_position": "pre", "final_norm": True},
    {"norm": "rmsnorm"},
    {"positional": "learned"},
    {"positional": "rotary"},
    {"positional": "none"},
    {"activation": "gelu"},
    {"activation": "swiglu"},
    {"tie_embeddings": "none"},
    {"tie_embeddings": "all"},
]


@pytest.mark.parametrize("kernels", ["reference", "fast"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "paper")
def test_each_variant_learns_from_a_step_and_decodes_consistently(variant, kernels, seeded):
    model = build(tiny_model_config(**variant, dropout=0.1), 20, 20, kernels)
    src = torch.randint(4, 20, (4, 6))
    tgt = torch.cat([torch.full((4, 1), BOS), src.flip(1)], dim=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = sequence_loss(model(src, tgt[:, :-1]), tgt[:, 1:], 0.0, PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    assert torch.equal(model.generate(src, 8), model.generate(src, 8, use_cache=False))


def test_the_variants_change_the_model_they_say_they_change():
    base = build(tiny_model_config(), 20, 20)
    assert isinstance(build(tiny_model_config(norm="rmsnorm"), 20, 20).encoder.layers[0].ff_residual.norm,
                      torch.nn.RMSNorm)
    assert build(tiny_model_config(activation="swiglu"), 20, 20).encoder.layers[0].feed_forward.w1.out_features \
        == 2 * base.encoder.layers[0].feed_forward.w1.out_features
    assert build(tiny_model_config(positional="rotary"), 20, 20).positional.rotary is not None
    assert base.generator.weight is base.tgt_embed.weight  # the default ties the output layer to the target side
    tied = build(tiny_model_config(tie_embeddings="all"), 20, 20)  # the paper's (Section 3.4): one matrix for all three
    assert tied.src_embed.weight is tied.tgt_embed.weight is tied.generator.weight
    assert build(tiny_model_config(tie_embeddings="none"), 20, 20).generator.weight is not base.tgt_embed.weight


def test_key_dim_changes_the_parameter_count_as_the_papers_formula_says(seeded):
    """Table 3 row (B): W^Q and W^K of every attention map d_model to h * d_k (with biases), W^V and W^O stay."""
    d_model, heads, layers = 32, 4, 2
    counts = {key_dim: sum(p.numel() for p in build(tiny_model_config(key_dim=key_dim), 20, 20).parameters())
              for key_dim in (None, 4, 16)}
    attention_maps = layers + 2 * layers  # encoder self-attention; decoder self- and cross-attention
    for key_dim in (4, 16):
        expected = attention_maps * 2 * heads * (key_dim - d_model // heads) * (d_model + 1)
        assert counts[key_dim] - counts[None] == expected


def test_a_model_with_a_smaller_key_dim_trains_decodes_and_keeps_the_reference_attention_under_fast_kernels(seeded):
    model = build(tiny_model_config(key_dim=4), 20, 20, kernels="fast")
    src, tgt = torch.randint(4, 20, (3, 6)), torch.randint(4, 20, (3, 5))
    assert model(src, tgt).shape == (3, 5, 20)
    model.eval()
    assert torch.equal(model.generate(src, 8), model.generate(src, 8, use_cache=False))
    assert {type(m).__name__ for m in model.modules() if hasattr(m, "key_dim")} == {"MultiHeadAttention"}


@pytest.mark.parametrize("changes, message", [
    ({"key_dim": 0}, "model.key_dim=0 must be between 1 and model.d_model=32"),
    ({"key_dim": 64}, "model.key_dim=64 must be between 1 and model.d_model=32"),
    ({"key_dim": 4, "positional": "rotary"}, "model.key_dim with model.positional=rotary"),
])
def test_a_key_dim_that_does_not_fit_is_refused(changes, message):
    with pytest.raises(UserError, match=message):
        check_model(tiny_model_config(**changes))

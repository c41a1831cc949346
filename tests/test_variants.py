"""Every model variant builds, trains a step, and decodes the same with and without the cache."""

import pytest
import torch

from conftest import tiny_model_config
from conftest import build
from playground.data import BOS, PAD
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
    assert base.generator.weight is base.tgt_embed.weight  # the paper's tying is the default
    assert build(tiny_model_config(tie_embeddings="none"), 20, 20).generator.weight is not base.tgt_embed.weight

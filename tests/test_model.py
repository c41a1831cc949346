import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model_config

from playground.checks import check_model
from playground.errors import UserError
from conftest import build
from playground.data import BOS, EOS, PAD
from playground.model.attention import causal_mask, padding_mask, scaled_dot_product_attention
from playground.model import sequence_loss

V = 20


def random_batch(B=3, S=7, T=6):
    src = torch.randint(4, V, (B, S))
    tgt = torch.randint(4, V, (B, T))
    tgt[:, 0] = BOS
    return src, tgt


def test_logits_have_one_row_per_target_position_and_one_column_per_vocabulary_entry(seeded):
    model = build(tiny_model_config(), src_vocab_size=V, tgt_vocab_size=V + 5)
    src, tgt = random_batch(B=3, S=7, T=6)
    assert model(src, tgt).shape == (3, 6, V + 5)


def test_changing_a_later_target_token_leaves_earlier_logits_unchanged(seeded):
    model = build(tiny_model_config(), V, V).eval()
    src, tgt = random_batch(T=8)
    changed = tgt.clone()
    changed[:, 5] = (changed[:, 5] + 1 - 4) % (V - 4) + 4
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_padding_the_source_changes_nothing(seeded):
    model = build(tiny_model_config(), V, V).eval()
    src, tgt = random_batch(S=5)
    padded = torch.cat([src, torch.full((src.size(0), 4), PAD)], dim=1)
    torch.testing.assert_close(model(src, tgt), model(padded, tgt), rtol=1e-5, atol=1e-5)


def test_a_tiny_model_overfits_one_small_batch(seeded):
    model = build(tiny_model_config(d_model=64, d_ff=128), V, V)
    src = torch.randint(4, V, (8, 6))
    tgt = torch.cat([torch.full((8, 1), BOS), src.flip(1), torch.full((8, 1), EOS)], dim=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = sequence_loss(model(src, tgt[:, :-1]), tgt[:, 1:], label_smoothing=0.0, pad_id=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    assert torch.equal(model.generate(src, max_len=8)[:, : tgt.size(1) - 1], tgt[:, 1:])


@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_equals_torch_scaled_dot_product_attention(masked, seeded):
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = padding_mask(torch.tensor([[5, 6, 7, 8, 9, 0, 0], [5, 6, 7, 8, 9, 10, 11]]), PAD) if masked else None
    ours, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))
    if masked:
        assert weights[0, :, :, 5:].abs().max() == 0


def test_causal_mask_keeps_each_position_and_the_ones_before_it():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_heads_that_do_not_divide_d_model_are_refused_naming_both_keys():
    message = r"model.heads=7 does not divide model.d_model=32"
    with pytest.raises(UserError, match=message):  # at the config edge: the user's one-line error
        check_model(tiny_model_config(heads=7))
    with pytest.raises(ValueError, match=message):  # inside the model, which knows nothing of UserError
        build(tiny_model_config(heads=7), V, V)


def test_tying_all_embeddings_needs_one_shared_vocabulary():
    with pytest.raises(UserError, match="tie_embeddings=all"):
        check_model(tiny_model_config(tie_embeddings="all"), V, V + 1)
    model = build(tiny_model_config(tie_embeddings="all"), V, V)
    assert model.src_embed.weight is model.tgt_embed.weight is model.generator.weight


def test_an_unknown_variant_name_is_refused_with_the_choices():
    with pytest.raises(UserError, match="model.activation=tanh is not one of: relu, gelu, swiglu"):
        check_model(tiny_model_config(activation="tanh"))


def test_the_retired_attention_key_is_refused_naming_trainer_kernels():
    with pytest.raises(UserError, match=r"model.attention=math is retired.*trainer.kernels=reference"):
        check_model(tiny_model_config(attention="math"))

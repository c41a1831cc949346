"""The playground model computes what torch.nn.Transformer computes, given the same weights."""

import math

import pytest
import torch
from torch import nn

from conftest import tiny_model_config
from conftest import build
from playground.data import PAD
from playground.model.embeddings import sinusoid_table

D, H, FF, V = 32, 4, 64, 30


def copy_torch_transformer_into(model, reference, src_embed, tgt_embed, generator):
    """Copy nn.Transformer's weights (and the embeddings and output layer around it) into a playground model."""
    with torch.no_grad():
        model.src_embed.embedding.weight.copy_(src_embed.weight)
        model.tgt_embed.embedding.weight.copy_(tgt_embed.weight)
        model.generator.weight.copy_(generator.weight)
        model.generator.bias.copy_(generator.bias)
        for ours, theirs in zip(model.encoder.layers, reference.encoder.layers):
            ours.self_attn.qkv_proj.weight.copy_(theirs.self_attn.in_proj_weight)
            ours.self_attn.qkv_proj.bias.copy_(theirs.self_attn.in_proj_bias)
            ours.self_attn.out_proj.load_state_dict(theirs.self_attn.out_proj.state_dict())
            ours.feed_forward.w1.load_state_dict(theirs.linear1.state_dict())
            ours.feed_forward.w2.load_state_dict(theirs.linear2.state_dict())
            ours.attn_residual.norm.load_state_dict(theirs.norm1.state_dict())
            ours.ff_residual.norm.load_state_dict(theirs.norm2.state_dict())
        for ours, theirs in zip(model.decoder.layers, reference.decoder.layers):
            ours.self_attn.qkv_proj.weight.copy_(theirs.self_attn.in_proj_weight)
            ours.self_attn.qkv_proj.bias.copy_(theirs.self_attn.in_proj_bias)
            ours.self_attn.out_proj.load_state_dict(theirs.self_attn.out_proj.state_dict())
            ours.cross_attn.q_proj.weight.copy_(theirs.multihead_attn.in_proj_weight[:D])
            ours.cross_attn.q_proj.bias.copy_(theirs.multihead_attn.in_proj_bias[:D])
            ours.cross_attn.kv_proj.weight.copy_(theirs.multihead_attn.in_proj_weight[D:])
            ours.cross_attn.kv_proj.bias.copy_(theirs.multihead_attn.in_proj_bias[D:])
            ours.cross_attn.out_proj.load_state_dict(theirs.multihead_attn.out_proj.state_dict())
            ours.feed_forward.w1.load_state_dict(theirs.linear1.state_dict())
            ours.feed_forward.w2.load_state_dict(theirs.linear2.state_dict())
            ours.self_residual.norm.load_state_dict(theirs.norm1.state_dict())
            ours.cross_residual.norm.load_state_dict(theirs.norm2.state_dict())
            ours.ff_residual.norm.load_state_dict(theirs.norm3.state_dict())
        model.encoder.norm.load_state_dict(reference.encoder.norm.state_dict())
        model.decoder.norm.load_state_dict(reference.decoder.norm.state_dict())


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_logits_equal_torch_nn_transformer_with_the_same_weights(kernels, seeded):
    reference = nn.Transformer(D, H, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=FF, dropout=0.1,
                               batch_first=True).eval()
    src_embed, tgt_embed, generator = nn.Embedding(V, D), nn.Embedding(V, D), nn.Linear(D, V)
    model = build(tiny_model_config(d_model=D, heads=H, enc_layers=2, dec_layers=3, d_ff=FF, dropout=0.1,
                                          final_norm=True, tie_embeddings="none"), V, V, kernels).eval()
    copy_torch_transformer_into(model, reference, src_embed, tgt_embed, generator)

    src = torch.randint(4, V, (3, 9))
    src[0, 6:] = PAD
    src[2, 3:] = PAD
    tgt = torch.randint(4, V, (3, 7))
    pe = sinusoid_table(16, D)
    with torch.no_grad():
        x = src_embed(src) * math.sqrt(D) + pe[:9]
        y = tgt_embed(tgt) * math.sqrt(D) + pe[:7]
        hidden = reference(x, y, tgt_mask=nn.Transformer.generate_square_subsequent_mask(7),
                           src_key_padding_mask=src == PAD, memory_key_padding_mask=src == PAD)
        expected = generator(hidden)
        torch.testing.assert_close(model(src, tgt), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_name, paper_millions", [("base", 65), ("big", 213)])
def test_parameter_counts_match_the_paper_with_a_shared_37k_vocabulary(model_name, paper_millions, compose_config):
    cfg = compose_config(f"model={model_name}", "model.tie_embeddings=all")
    with torch.device("meta"):  # count without allocating 213M floats
        model = build(cfg.model, 37000, 37000)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.05, f"{count:,} parameters"

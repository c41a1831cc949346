"""The encoder-decoder Transformer (Section 3, Figure 1) and `build_model`, its one constructor from a config."""

import torch
from torch import nn

from .attention import causal_mask, padding_mask
from .decoding import trim_padding, beam_search, greedy_decode, sample
from .dropout import Dropout
from .embeddings import POSITIONAL_ENCODINGS, TokenEmbedding
from .layers import ACTIVATIONS, NORM_PLACEMENTS, NORMS, DecoderLayer, EncoderLayer

TIE_EMBEDDINGS = ("none", "decoder", "all")
# Pieces of the paper that model.ablate removes, to see what each one is for (docs/ablations.md)
ABLATIONS = ("causal_mask", "attention_scale", "padding_mask", "residual", "layer_norm", "embedding_scale",
             "positional")


class Encoder(nn.Module):
    """A stack of N identical encoder layers (Section 3.1), with an optional final norm."""

    def __init__(self, layers, d_model, final_norm, norm):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = NORMS[norm](d_model) if final_norm else nn.Identity()

    def forward(self, x, src_mask, rotary=None):
        for layer in self.layers:
            x = layer(x, src_mask, rotary)
        return self.norm(x)  # (B, S, D)


class Decoder(nn.Module):
    """A stack of N identical decoder layers (Section 3.1), with an optional final norm."""

    def __init__(self, layers, d_model, final_norm, norm):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = NORMS[norm](d_model) if final_norm else nn.Identity()

    def forward(self, y, memory, src_mask, tgt_mask, rotary=None, cache=None):
        for i, layer in enumerate(self.layers):
            y = layer(y, memory, src_mask, tgt_mask, rotary, None if cache is None else cache.setdefault(i, {}))
        return self.norm(y)  # (B, T, D)


class Transformer(nn.Module):
    """Embeddings + positional encoding -> encoder; embeddings -> decoder over the encoder output -> linear to logits."""

    def __init__(self, src_vocab_size, tgt_vocab_size, *, pad_id, bos_id, eos_id, d_model=512, heads=8, enc_layers=6,
                 dec_layers=6, d_ff=2048, dropout_p=0.1, norm_position="post", norm="layernorm", final_norm=False,
                 positional="sinusoidal", activation="relu", tie_embeddings="decoder", max_len=1024, ablate=(),
                 key_dim=None, attention_dropout_p=None, ffn_dropout_p=None):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id  # the vocabulary's, handed in by the builder
        self.ablate = tuple(ablate)  # pieces of the paper left out (ABLATIONS); empty: the paper's model
        # Section 5.4 drops out each sublayer's output and the embedding sums (dropout_p); the attention weights and the
        # feed-forward's hidden layer get dropout_p too where their own p is None, as in nn.Transformer and tensor2tensor
        layer_args = dict(d_model=d_model, heads=heads, d_ff=d_ff, dropout_p=dropout_p, norm_position=norm_position,
                          norm=norm, activation=activation, ablate=self.ablate, key_dim=key_dim,
                          attention_dropout_p=attention_dropout_p, ffn_dropout_p=ffn_dropout_p)
        scaled = "embedding_scale" not in self.ablate
        self.src_embed = TokenEmbedding(src_vocab_size, d_model, scaled)
        self.tgt_embed = self.src_embed if tie_embeddings == "all" else TokenEmbedding(tgt_vocab_size, d_model, scaled)
        if "positional" in self.ablate:
            positional = "none"
        self.positional = POSITIONAL_ENCODINGS[positional](d_model, heads, max_len)
        self.dropout = Dropout(dropout_p)  # on the sums of embeddings and positional encodings (Section 5.4)
        final_norm = final_norm and "layer_norm" not in self.ablate
        self.encoder = Encoder([EncoderLayer(**layer_args) for _ in range(enc_layers)], d_model, final_norm, norm)
        self.decoder = Decoder([DecoderLayer(**layer_args) for _ in range(dec_layers)], d_model, final_norm, norm)
        self.generator = nn.Linear(d_model, tgt_vocab_size)  # the pre-softmax linear transformation
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name and "positional" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if tie_embeddings in ("decoder", "all"):  # Section 3.4: output layer shares the embedding matrix
            self.generator.weight = self.tgt_embed.weight

    def encode(self, src):
        """src (B, S) ids -> encoder output (B, S, D) and the source padding mask (B, 1, 1, S)."""
        src_mask = padding_mask(src, self.pad_id) if "padding_mask" not in self.ablate else None  # None: see all
        x = self.dropout(self.positional(self.src_embed(src)))  # (B, S, D)
        return self.encoder(x, src_mask, self.positional.rotary), src_mask

    def decode(self, tgt_in, memory, src_mask, cache=None, offset=0):
        """tgt_in (B, T) ids at positions offset.. -> logits (B, T, V). With a cache, earlier steps are not recomputed."""
        T = tgt_in.size(1)
        # one new query may see every cached key; without the causal mask, training sees the future
        tgt_mask = causal_mask(T, tgt_in.device) if T > 1 and "causal_mask" not in self.ablate else None
        y = self.dropout(self.positional(self.tgt_embed(tgt_in), offset))  # (B, T, D)
        y = self.decoder(y, memory, src_mask, tgt_mask, self.positional.rotary, cache)
        return self.generator(y)  # (B, T, V)

    def forward(self, src, tgt_in):
        """Teacher forcing: src (B, S), tgt_in (B, T) starting with BOS -> logits (B, T, V) for the next tokens."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    @torch.no_grad()
    def generate(self, src, max_len, beam_size=1, length_penalty=0.6, use_cache=True, *, sampling=False,
                 temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=0, generator=None):
        """Decode target ids for src (B, S): LongTensor (B, L) starting after BOS, EOS included, PAD after it.

        Greedy with beam_size=1, beam search with more; sampling=True draws each token instead (beam_size 1).
        max_len is one limit for every row or a LongTensor (B,) of each row's own."""
        if sampling:
            if beam_size != 1:
                raise ValueError(f"sampling draws one sequence per source: beam_size must be 1, not {beam_size}")
            return sample(self, src, max_len, temperature, top_k, top_p, no_repeat_ngram_size, generator)
        if beam_size == 1:
            return greedy_decode(self, src, max_len, use_cache, no_repeat_ngram_size)
        ids, _ = beam_search(self, src, max_len, beam_size, length_penalty, 1, no_repeat_ngram_size)
        return trim_padding(ids[:, 0], self.pad_id)

    def attention_maps(self, src, tgt_in):
        """Run teacher forcing once and return every attention layer's weights by name, each (B, H, T, S)."""
        modules = {name: m for name, m in self.named_modules() if hasattr(m, "record_weights")}
        for m in modules.values():
            m.record_weights = True
        try:
            with torch.no_grad():
                self(src, tgt_in)
            return {name: m.weights for name, m in modules.items()}
        finally:
            for m in modules.values():
                m.record_weights, m.weights = False, None


def _choice(cfg, key, options):
    value = getattr(cfg, key)
    if value not in options:
        raise ValueError(f"model.{key}={value} is not one of: {', '.join(options)}")
    return value


def check_model_config(c, src_vocab_size=None, tgt_vocab_size=None) -> None:
    """Raise ValueError, naming the key, for a model config that describes no Transformer (heads not dividing
    d_model, an unknown variant, ...). The config edge calls this first to turn it into the user's one-line error."""
    for key in ("d_model", "heads", "enc_layers", "dec_layers", "d_ff", "max_len"):
        if getattr(c, key) <= 0:
            raise ValueError(f"model.{key}={getattr(c, key)} must be positive")
    for key in ("dropout", "attention_dropout", "ffn_dropout"):
        p = getattr(c, key, None)
        if p is not None and not 0.0 <= p < 1.0:
            raise ValueError(f"model.{key}={p} must be in [0, 1)" + ("" if key == "dropout" else " (null: model.dropout)"))
    if c.d_model % c.heads:
        divisors = [h for h in range(1, c.d_model + 1) if c.d_model % h == 0 and h <= 64]
        raise ValueError(f"model.heads={c.heads} does not divide model.d_model={c.d_model} "
                         f"(try {', '.join(map(str, divisors))})")
    for key, options in (("tie_embeddings", TIE_EMBEDDINGS), ("positional", POSITIONAL_ENCODINGS),
                         ("norm_position", NORM_PLACEMENTS), ("norm", NORMS), ("activation", ACTIVATIONS)):
        _choice(c, key, options)
    unknown = [name for name in getattr(c, "ablate", ()) if name not in ABLATIONS]
    if unknown:
        raise ValueError(f"model.ablate has {', '.join(map(str, unknown))}, which is not a piece it can remove: "
                         f"{', '.join(ABLATIONS)}")
    key_dim = getattr(c, "key_dim", None)
    if key_dim is not None and not 0 < key_dim <= c.d_model:
        raise ValueError(f"model.key_dim={key_dim} must be between 1 and model.d_model={c.d_model} (null: "
                         f"d_model/heads = {c.d_model // c.heads}, the paper's d_k)")
    if key_dim is not None and c.positional == "rotary":
        raise ValueError("model.key_dim with model.positional=rotary: rotary positions turn the d_model/heads features "
                         "of each head; leave model.key_dim null, or use another model.positional")
    if c.positional == "rotary" and (c.d_model // c.heads) % 2:
        raise ValueError(f"model.positional=rotary needs an even head size, but d_model/heads = {c.d_model // c.heads}")
    if c.tie_embeddings == "all" and src_vocab_size != tgt_vocab_size and None not in (src_vocab_size, tgt_vocab_size):
        raise ValueError(f"model.tie_embeddings=all needs one shared vocabulary, but the source has {src_vocab_size} "
                         f"tokens and the target {tgt_vocab_size} (dataset.shared_vocab=true builds one, or use model.tie_embeddings=decoder)")


# Faster drop-in versions of the model's pieces register themselves here by name (playground/kernels registers
# "fast" when imported): each is a function that takes the built reference model and returns the model to use.
# The model never imports them; "reference" is the code in this package, as written.
KERNELS = {"reference": lambda model: model}


def build_model(model_cfg, src_vocab_size: int, tgt_vocab_size: int, kernels: str = "reference", *,
                pad_id: int, bos_id: int, eos_id: int) -> Transformer:
    """Build the Transformer a model config describes (any object with the fields of playground.config.ModelConfig).

    The special ids come from the vocabulary (playground.data.MODEL_IDS). kernels="fast" swaps in the faster
    drop-in pieces of playground/kernels (import it first); the weights and their names are the same either way.
    """
    if kernels not in KERNELS:
        hint = " (import playground.kernels first: it registers them)" if kernels == "fast" else ""
        raise ValueError(f"kernels={kernels!r} is not one of: {', '.join(KERNELS)}{hint}")
    c = model_cfg
    check_model_config(c, src_vocab_size, tgt_vocab_size)
    model = Transformer(
        src_vocab_size, tgt_vocab_size, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, d_model=c.d_model,
        heads=c.heads, enc_layers=c.enc_layers, dec_layers=c.dec_layers, d_ff=c.d_ff, dropout_p=c.dropout,
        norm_position=c.norm_position, norm=c.norm, final_norm=c.final_norm, positional=c.positional,
        activation=c.activation, tie_embeddings=c.tie_embeddings, max_len=c.max_len, ablate=getattr(c, "ablate", ()),
        key_dim=getattr(c, "key_dim", None), attention_dropout_p=getattr(c, "attention_dropout", None),
        ffn_dropout_p=getattr(c, "ffn_dropout", None),
    )
    return KERNELS[kernels](model)

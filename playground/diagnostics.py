"""What attention does, logged at every evaluation: heatmaps, the entropy of every head, and on the synthetic tasks,
whose right alignment is known, how often each head of the last decoder layer looks where the output comes from.

Entropy is in nats: 0 when a query attends to one key, ln(S) when it spreads evenly over S keys. A head whose
entropy falls during training has learned where to look. Alignment accuracy is the share of output tokens (EOS
left out) whose largest cross-attention weight falls on a source position holding the symbol written: for
reverse, position S-1-t; for copy, t; for sort, any position holding that symbol.
"""

import torch

from .data import EOS, PAD
from .evaluate import TOKENS_AT_ONCE

EXAMPLES = 100  # validation examples the entropy and alignment are measured on (the heatmaps show the first), as
# many as fit TOKENS_AT_ONCE target positions: their forward pass computes every position's logits


def attention_entropy(weights, query_mask):
    """Each head's mean entropy in nats (H,) over the real queries: weights (B, H, T, S), query_mask (B, T)."""
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1)  # (B, H, T)
    mask = query_mask[:, None, :].to(entropy.dtype)  # (B, 1, T)
    return (entropy * mask).sum((0, 2)) / mask.sum((0, 2)).clamp_min(1)


def alignment_targets(task: str, src, tgt_out):
    """(B, T, S) bool: the source positions each output token tgt_out (B, T) comes from, for a synthetic task."""
    B, S = src.shape
    T = tgt_out.size(1)
    if task == "sort":
        return tgt_out[:, :, None] == src[:, None, :]  # any position holding the symbol
    lengths = (src != PAD).sum(1)  # (B,)
    t = torch.arange(T, device=src.device)[None, :]  # (1, T)
    position = lengths[:, None] - 1 - t if task == "reverse" else t.expand(B, T)  # (B, T)
    return torch.nn.functional.one_hot(position.clamp(0, S - 1), S).bool()  # (B, T, S)


def alignment_accuracy(weights, allowed, outputs):
    """Per head (H,): the share of output positions (outputs (B, T) True) whose largest weight (B, H, T, S) falls
    on an allowed source position (B, T, S)."""
    top = weights.argmax(-1)  # (B, H, T)
    hit = allowed[:, None].expand(-1, weights.size(1), -1, -1).gather(-1, top[..., None])[..., 0]  # (B, H, T)
    return (hit & outputs[:, None]).sum((0, 2)).float() / outputs.sum().clamp_min(1)


def log_attention(tracker, model, data, task, device, step) -> dict:
    """Heatmaps of every attention layer for the first validation example, tokens on the axes; the entropy of every
    head; on a synthetic task the alignment accuracy of the last decoder layer's heads. Returns
    {"attention_alignment": the best head's} on a synthetic task, else {}."""
    valid = data.splits["valid"]
    n = min(EXAMPLES, len(valid))
    n = max(1, min(n, TOKENS_AT_ONCE // int(valid.tgt_lengths[:n].max())))  # long sentences: fewer, as evaluate()
    src, tgt = (t.to(device) for t in valid.batch(torch.arange(n)))
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    was_training = model.training
    model.eval()
    maps = model.attention_maps(src, tgt_in)  # {name: (B, H, T, S)}
    model.train(was_training)
    # the decoder's real inputs are BOS and the target (as many as tgt_out's real tokens): a row shorter than the
    # batch's longest also has its EOS in tgt_in, an input the decoder never predicts from
    decoder_queries = tgt_out != PAD  # (B, T)
    n_src, n_tgt = int((src[0] != PAD).sum()), int(decoder_queries[0].sum())
    src_pieces = [data.src_tokenizer.piece(i) for i in src[0, :n_src].tolist()]
    tgt_pieces = [data.tgt_tokenizer.piece(i) for i in tgt_in[0, :n_tgt].tolist()]
    entropies = {}
    for name, weights in maps.items():
        queries = src_pieces if name.startswith("encoder") else tgt_pieces
        keys = tgt_pieces if name.startswith("decoder") and name.endswith("self_attn") else src_pieces
        tracker.attention(f"attention/{name}", weights[0, :, : len(queries), : len(keys)], queries, keys, step)
        query_mask = src != PAD if name.startswith("encoder") else decoder_queries  # (B, S) or (B, T)
        for head, value in enumerate(attention_entropy(weights.float(), query_mask).tolist()):
            entropies[f"attention_entropy/{name}/head_{head}"] = value
    tracker.scalars(entropies, step)
    last = [name for name in maps if name.startswith("decoder") and name.endswith("cross_attn")]
    if task is None or not last:
        return {}
    outputs = (tgt_out != PAD) & (tgt_out != EOS)
    accuracy = alignment_accuracy(maps[last[-1]], alignment_targets(task, src, tgt_out), outputs)  # (H,)
    tracker.scalars({f"attention_alignment/head_{h}": v for h, v in enumerate(accuracy.tolist())}, step)
    return {"attention_alignment": float(accuracy.max())}


def model_summary(model, src, tgt_in, max_depth: int = 3) -> str:
    """A Markdown table of the model's modules down to max_depth levels (encoder, encoder.layers,
    encoder.layers.0, ...): type, parameters (each counted once, where it is first owned) and the output shape of
    one forward pass over (src, tgt_in)."""
    shapes, hooks = {}, []
    modules = {name: m for name, m in model.named_modules() if name and name.count(".") < max_depth}

    def record(name):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if torch.is_tensor(out):
                shapes.setdefault(name, tuple(out.shape))  # the first call (a layer runs once per pass)
        return hook

    for name, module in modules.items():
        hooks.append(module.register_forward_hook(record(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(src, tgt_in)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    counted, rows = set(), ["| module | type | parameters | output shape |", "|---|---|---|---|"]
    owned = {}
    for name, parameter in model.named_parameters():  # a tied weight is counted under its first name only
        if id(parameter) not in counted:
            counted.add(id(parameter))
            owned[name] = parameter.numel()
    for name, module in modules.items():
        n = sum(v for k, v in owned.items() if k.startswith(name + "."))
        shape = " x ".join(map(str, shapes[name])) if name in shapes else ""
        rows.append(f"| {'&nbsp;&nbsp;' * name.count('.')}{name} | {type(module).__name__} | {n:,} | {shape} |")
    rows.append(f"| total | {type(model).__name__} | {sum(owned.values()):,} | |")
    return "\n".join(rows)

"""Benchmarks (not tests): training-step and decoding throughput against torch.nn.Transformer, in one process.

    python -m playground.bench                 # everything: training at two sizes, fp32 and bf16, and decoding
    python -m playground.bench --only decode   # cached greedy and beam decoding vs recomputing the prefix
    python -m playground.bench --only translate   # a 1,000-line file: batches of similar length vs line by line
    python -m playground.bench --only train --device cuda
    python -m playground.bench --size base --precision bf16 --compile   # the paper's base model, ~25k-token batches
    python -m playground.bench --stack         # the fast pieces added one at a time: what each one is worth
    python -m playground.bench --profile       # where the fast path's training step spends its time


The playground model runs with trainer.kernels=fast (playground/kernels/). Prints target tokens per second,
the ratio to nn.Transformer, and MFU: model FLOPs per second over the
matrix-multiply peak this machine reaches (measured here, once per precision). nn.Transformer is timed
twice: with torch.optim.Adam's defaults (the ratio) and with fused Adam (the ratio vs fused). The sides take
turns for 7 rounds of at least half a second each: the ratio is that of the median rounds, and "rounds'
ratios" is the lowest and highest ratio of a single round, so a difference inside that range is noise.
"""

import argparse
import contextlib
import math
import statistics
import time
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .data import BOS, EOS, MODEL_IDS, PAD
from .model import build_model
from .model.attention import MultiHeadAttention
from .model.decoding import beam_search
from .model.dropout import Dropout
from .model.layers import PositionwiseFeedForward
from .model.embeddings import sinusoid_table
from .perf import bench_device, matmul_peak, synchronize, training_flops
from .setup import build_optimizer, cpu_bf16_missing, cpu_computes_bf16, maybe_compile

SIZES = {
    "d256": dict(d_model=256, heads=4, layers=3, d_ff=1024, vocab=8000, batch=32, length=64),
    "d512": dict(d_model=512, heads=8, layers=6, d_ff=2048, vocab=16000, batch=16, length=64),
    # the paper's base model on its batches of about 25,000 target tokens and a 37,000-token shared vocabulary
    # (Section 5.1): a GPU's size, measured by default there only
    "base": dict(d_model=512, heads=8, layers=6, d_ff=2048, vocab=37000, batch=384, length=64),
}


class TorchTransformer(nn.Module):
    """torch.nn.Transformer with what a translation model needs around it: embeddings, positions, output layer."""

    def __init__(self, vocab, d_model, heads, layers, d_ff, dropout=0.1, tgt_vocab=None, dec_layers=None,
                 tie_output=False, max_len=1024, embedding_dropout=False):
        super().__init__()
        tgt_vocab, dec_layers = tgt_vocab or vocab, dec_layers or layers
        self.d_model, self.max_len = d_model, max_len
        self.src_embed, self.tgt_embed = nn.Embedding(vocab, d_model), nn.Embedding(tgt_vocab, d_model)
        for embedding in (self.src_embed, self.tgt_embed):  # as playground/model/embeddings.py: the embeddings
            nn.init.normal_(embedding.weight, std=d_model**-0.5)  # scaled by sqrt(d_model) start at unit variance
        self.register_buffer("pe", sinusoid_table(max_len, d_model), persistent=False)
        self.transformer = nn.Transformer(d_model, heads, layers, dec_layers, d_ff, dropout=dropout, batch_first=True)
        self.generator = nn.Linear(d_model, tgt_vocab)
        # the paper's dropout on the sums of embeddings and positions (5.4), for baseline.py; the benchmark leaves it
        # out, as its figures always have
        self.embed_dropout = nn.Dropout(dropout) if embedding_dropout else nn.Identity()
        if tie_output:  # the output layer shares the target embedding, as model.tie_embeddings=decoder does
            self.generator.weight = self.tgt_embed.weight

    def embed(self, embedding, ids):
        return self.embed_dropout(embedding(ids) * math.sqrt(self.d_model) + self.pe[: ids.size(1)])

    def encode(self, src):
        return self.transformer.encoder(self.embed(self.src_embed, src), src_key_padding_mask=src == PAD)

    def decode(self, tgt_in, memory, src):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.size(1), device=tgt_in.device)
        y = self.transformer.decoder(self.embed(self.tgt_embed, tgt_in), memory, tgt_mask=mask, tgt_is_causal=True,
                                     memory_key_padding_mask=src == PAD)
        return self.generator(y)

    def forward(self, src, tgt_in):
        return self.decode(tgt_in, self.encode(src), src)

    @torch.no_grad()
    def generate_recomputing(self, src, max_len):
        """Greedy decoding the way nn.Transformer allows: the whole prefix through the decoder at every step."""
        memory = self.encode(src)
        ys = torch.ones(src.size(0), 1, dtype=torch.long, device=src.device)
        for _ in range(max_len):
            ys = torch.cat([ys, self.decode(ys, memory, src)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return ys[:, 1:]

    @torch.no_grad()
    def generate(self, src, max_len, beam_size=1, length_penalty=0.6, sampling=False, **_):
        """Greedy decoding for evaluate(): the recomputing loop, stopped once every row has ended (or reached its
        limit: max_len is one number or one per row), PAD after EOS."""
        if beam_size != 1 or sampling:
            raise ValueError("nn.Transformer is decoded greedily here (decode.beam_size=1, decode.sampling=false)")
        memory = self.encode(src)
        ys = torch.ones(src.size(0), 1, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        limits = torch.as_tensor(max_len, device=src.device).expand(src.size(0))
        for t in range(int(limits.max())):
            done |= limits <= t
            next_ids = self.decode(ys, memory, src)[:, -1].argmax(-1)
            ys = torch.cat([ys, torch.where(done, PAD, next_ids)[:, None]], dim=1)
            done |= next_ids == EOS
            if bool(done.all()):
                break
        return ys[:, 1:]


class RecomputingBeams:
    """nn.Transformer behind the model interface that beam_search (playground/model/decoding.py) decodes, so that
    both sides run the same search: encode, decode with a "cache", and the special ids. nn.Transformer has no key
    and value cache, so the cache here holds the prefix only (in the nesting beam_search reorders with its beams),
    and every step puts the whole prefix through the decoder again."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, model: TorchTransformer):
        self.model = model

    def encode(self, src):
        return self.model.encode(src), src  # the source ids stand in for the padding mask: decode compares them

    def decode(self, tgt_in, memory, src, cache, offset):
        prefix = cache.setdefault("prefix", {"ids": {}})["ids"]
        prefix["ys"] = tgt_in if offset == 0 else torch.cat([prefix["ys"], tgt_in], dim=1)  # (B*K, offset + 1)
        return self.model.decode(prefix["ys"], memory, src)


def playground_model(size, kernels="fast", **variant):
    cfg = SimpleNamespace(d_model=size["d_model"], heads=size["heads"], enc_layers=size["layers"],
                          dec_layers=size["layers"], d_ff=size["d_ff"], dropout=0.1, norm_position="post",
                          norm="layernorm", final_norm=False, positional="sinusoidal", activation="relu",
                          tie_embeddings="none", max_len=1024)
    vars(cfg).update(variant)
    return build_model(cfg, size["vocab"], size["vocab"], kernels, **MODEL_IDS)


def timed_alternating(fns, device, rounds=7, warmup=2, round_seconds=0.5):
    """Seconds per call of each fn in each round, timed in alternation round by round: [[s, ...] per fn].

    A shared machine's speed drifts by 10% over a minute; taking turns puts both sides of a ratio under
    the same conditions, the median of the rounds drops a round that a neighbour disturbed, and the spread
    of the rounds' own ratios says how far to trust it.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    synchronize(device)
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, seconds in zip(fns, times):
            n, start = 0, time.perf_counter()
            while n < 1 or time.perf_counter() - start < round_seconds:
                fn()
                synchronize(device)
                n += 1
            seconds.append((time.perf_counter() - start) / n)
    return times


def ratio_spread(theirs, ours) -> tuple[float, float]:
    """The lowest and highest of the rounds' speed ratios ours / theirs (seconds per round of each side)."""
    ratios = [t / o for t, o in zip(theirs, ours)]
    return min(ratios), max(ratios)


def size_flops(size):
    """Model FLOPs of one training step at a benchmark size."""
    return training_flops(size["d_model"], size["d_ff"], size["layers"], size["layers"], size["vocab"], size["batch"],
                          size["length"], size["length"])


def train_step_fn(model, size, device, autocast, side, loss="fast"):
    """One training step as each side would write it. side "playground": its own optimizer (build_optimizer:
    fused Adam) and the loss of trainer.kernels=`loss`; "torch": torch.optim.Adam's defaults and F.cross_entropy; "torch-fused": the
    same with Adam(fused=True), nn.Transformer's best optimizer, so that the loss and the model are compared alone."""
    adam = SimpleNamespace(name="adam", lr=1e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    if side == "playground":
        optimizer, loss_fn = build_optimizer(adam, model.parameters(), device), kernels.loss_function(loss)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=adam.lr, betas=adam.betas, eps=adam.eps,
                                     **({"fused": True} if side == "torch-fused" else {}))
        loss_fn = lambda logits, tgt_out, eps, pad_id: F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(),
                                                                ignore_index=PAD, label_smoothing=eps)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, size["vocab"], (size["batch"], size["length"]), generator=g).to(device)
    tgt = torch.randint(4, size["vocab"], (size["batch"], size["length"] + 1), generator=g).to(device)

    def step():
        with autocast():
            logits = model(src, tgt[:, :-1])
        loss = loss_fn(logits, tgt[:, 1:], 0.1, PAD)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_training(device, precisions, sizes, compile=False):
    rows = []
    peaks = {p: matmul_peak(device, torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions}
    for p, peak in peaks.items():
        print(f"matmul peak {p}: {peak / 1e9:,.0f} GFLOP/s")
    for name in sizes:
        size = SIZES[name]
        for precision in precisions:
            autocast = (contextlib.nullcontext if precision == "fp32" else
                        lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            tokens = size["batch"] * size["length"]
            steps = []
            for side in ("torch", "torch-fused", "playground"):
                torch.manual_seed(0)
                model = (playground_model(size) if side == "playground" else
                         TorchTransformer(size["vocab"], size["d_model"], size["heads"], size["layers"], size["d_ff"]))
                model = model.to(device).train()
                if compile:  # the benchmark's own warm-up rounds wait for the compiler: no message
                    model = maybe_compile(model, compile, device, inform=lambda message: None)
                steps.append(train_step_fn(model, size, device, autocast, side))
            rounds = timed_alternating(steps, device)
            theirs, theirs_fused, ours = (tokens / statistics.median(seconds) for seconds in rounds)
            del steps
            mfu = ours * size_flops(size) / tokens / peaks[precision]
            rows.append((f"train {name} {precision}{' compiled' if compile else ''}", theirs, theirs_fused, ours, mfu,
                         ratio_spread(rounds[0], rounds[2])))
    return rows


# The fast pieces of playground/kernels/ added to the reference model one at a time (each rung keeps the ones
# above it): the last rung is trainer.kernels=fast. The labels name what each piece replaces.
STACK = [
    ("reference model, fused Adam", None),
    ("+ oneDNN linear (kernels/linear.py)", nn.Linear),
    ("+ fused ReLU feed-forward (kernels/feed_forward.py)", PositionwiseFeedForward),
    ("+ attention kernel (kernels/attention.py)", MultiHeadAttention),
    ("+ random-byte-mask dropout (kernels/dropout.py)", Dropout),
    ("+ blockwise loss (kernels/loss.py) = fast", "loss"),
]


def stacked_model(size, pieces):
    """The reference model with the fast class of each of `pieces` swapped in, as use_fast_kernels does for all
    (the last rung is the fast model but for its own class, FastTransformer, which changes decoding only)."""
    return kernels.use_fast_kernels(playground_model(size, kernels="reference"), pieces)


def bench_stack(device, precisions, sizes):
    """tokens/s of each rung of STACK beside nn.Transformer, timed in alternation."""
    peaks = {p: matmul_peak(device, torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions}
    for name in sizes:
        size = SIZES[name]
        tokens = size["batch"] * size["length"]
        for precision in precisions:
            autocast = (contextlib.nullcontext if precision == "fp32" else
                        lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            torch.manual_seed(0)
            torch_model = TorchTransformer(size["vocab"], size["d_model"], size["heads"], size["layers"], size["d_ff"])
            steps = [train_step_fn(torch_model.to(device).train(), size, device, autocast, "torch")]
            pieces = set()
            for label, piece in STACK:
                if piece is not None and piece != "loss":
                    pieces.add(piece)
                torch.manual_seed(0)
                model = stacked_model(size, pieces).to(device).train()
                steps.append(train_step_fn(model, size, device, autocast, "playground",
                                           loss="fast" if piece == "loss" else "reference"))
            rates = [tokens / statistics.median(seconds) for seconds in timed_alternating(steps, device)]
            del steps
            print(f"\n{name} {precision}, {tokens} target tokens a step")
            rows = [["", "tokens/s", "vs nn.Transformer", "MFU"],
                    ["nn.Transformer, torch.optim.Adam", f"{rates[0]:,.0f}", "1.00x",
                     f"{rates[0] * size_flops(size) / tokens / peaks[precision]:.1%}"]]
            for (label, _), rate in zip(STACK, rates[1:]):
                rows.append([label, f"{rate:,.0f}", f"{rate / rates[0]:.2f}x",
                             f"{rate * size_flops(size) / tokens / peaks[precision]:.1%}"])
            print_table(rows)


MATRIX_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")


def bench_profile(device, precisions, sizes, steps=3, top=12):
    """The operations that take the fast path's training step's time (torch.profiler, self time, per step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name in sizes:
        size = SIZES[name]
        for precision in precisions:
            autocast = (contextlib.nullcontext if precision == "fp32" else
                        lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            torch.manual_seed(0)
            step = train_step_fn(playground_model(size).to(device).train(), size, device, autocast, "playground")
            for _ in range(3):
                step()
            synchronize(device)
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    step()
                synchronize(device)
            events = prof.key_averages()
            if device.type == "cuda":  # each operation's kernels' time; the kernels' own rows would count it twice
                from torch.autograd import DeviceType

                events = [e for e in events if e.device_type == DeviceType.CPU and e.self_device_time_total > 0]
            where = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            times = {e.key: getattr(e, where) / steps / 1e3 for e in events}  # ms per step
            total = sum(times.values())
            matrix = sum(t for key, t in times.items() if key in MATRIX_OPS)
            print(f"\n{name} {precision}: {total:.1f} ms a step on the {'GPU' if device.type == 'cuda' else 'CPU'} "
                  f"under the profiler; matrix products {matrix:.1f} ms ({matrix / total:.0%})")
            rows = [["operation", "ms a step", "share", "calls a step"]]
            counts = {e.key: e.count // steps for e in events}
            for key, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
                rows.append([key[:60], f"{t:.1f}", f"{t / total:.1%}", str(counts[key])])
            print_table(rows)
            del step


def bench_decoding(device, batch=32, src_len=32, new_tokens=64):
    size = dict(SIZES["d256"])
    torch.manual_seed(0)
    ours = playground_model(size, dropout=0.0).to(device).eval()
    theirs = TorchTransformer(size["vocab"], size["d_model"], size["heads"], size["layers"], size["d_ff"])
    theirs = theirs.to(device).eval()
    with torch.no_grad():  # never stop early: every row decodes exactly new_tokens tokens
        ours.generator.bias[EOS] = theirs.generator.bias[EOS] = -1e4
    src = torch.randint(4, size["vocab"], (batch, src_len), device=device)
    tokens = batch * new_tokens
    # in turns too, one call a round (recomputing the prefix takes seconds a call on a CPU)
    calls = [lambda: theirs.generate_recomputing(src, new_tokens), lambda: ours.generate(src, new_tokens),
             lambda: ours.generate(src, new_tokens, use_cache=False)]
    rounds = timed_alternating(calls, device, rounds=5, warmup=1, round_seconds=0.0)
    reference, cached, uncached = (tokens / statistics.median(seconds) for seconds in rounds)
    rows = [("decode d256 fp32 cached", reference, None, cached, None, ratio_spread(rounds[0], rounds[1])),
            ("decode d256 fp32 uncached", reference, None, uncached, None, ratio_spread(rounds[0], rounds[2]))]
    # beam search, the same search on both sides (beam_search in playground/model/decoding.py): nn.Transformer puts
    # 4 x 32 whole prefixes through its decoder at every step, about 20 s a call on 2 CPU cores, so 3 rounds, and
    # the warm-up for the playground's side only
    beams = 4
    calls = [lambda: beam_search(RecomputingBeams(theirs), src, new_tokens, beams),
             lambda: ours.generate(src, new_tokens, beam_size=beams)]
    calls[1]()
    rounds = timed_alternating(calls, device, rounds=3, warmup=0, round_seconds=0.0)
    reference, cached = (tokens / statistics.median(seconds) for seconds in rounds)
    rows.append((f"decode d256 fp32 beam {beams} cached", reference, None, cached, None,
                 ratio_spread(rounds[0], rounds[1])))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["train", "decode", "translate"],
                        help="run one part only (translate: playground/bench_translate.py, not part of the rest)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], action="append",
                        help="training precisions to measure (default: both)")
    parser.add_argument("--size", choices=list(SIZES), action="append",
                        help="training sizes to measure (default: d256 and d512, and base on a GPU)")
    parser.add_argument("--stack", action="store_true",
                        help="training with the fast pieces added one at a time (instead of the usual tables)")
    parser.add_argument("--profile", action="store_true",
                        help="the fast path's training step under torch.profiler: the operations its time goes to")
    parser.add_argument("--compile", action="store_true",
                        help="both models under torch.compile (as trainer.compile=true), compiled during the warm-up")
    args = parser.parse_args(argv)
    device = bench_device(parser, args.device)
    # nn.Transformer's evaluation warns, every run, that its nested tensors are a prototype: not ours to act on
    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors")
    if args.only == "translate":
        from .bench_translate import main as bench_translate

        return bench_translate(["--device", args.device] + [f"--precision={p}" for p in args.precision or []][:1])
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    precisions = args.precision or ["fp32", "bf16"]
    if device.type == "cpu" and "bf16" in precisions and not cpu_computes_bf16():
        why = f"{cpu_bf16_missing()}: emulated, it runs ~20x slower than fp32"
        precisions = [p for p in precisions if p != "bf16"]
        if not precisions and (args.stack or args.profile or args.only == "train"):  # nothing left to measure
            parser.error(f"--precision bf16: {why} (try --precision fp32)")
        print(f"bf16: skipped, {why}")
    if args.stack:
        return bench_stack(device, precisions, args.size or ["d256", "d512"])
    if args.profile:
        return bench_profile(device, precisions, args.size or ["d256", "d512"])
    if args.only in (None, "train"):
        sizes = args.size or ["d256", "d512"] + (["base"] if device.type == "cuda" else [])
        rows += bench_training(device, precisions, sizes, args.compile)
    if args.only in (None, "decode"):
        rows += bench_decoding(device)
    header = ["measurement", "nn.Transformer tok/s", "+ fused Adam tok/s", "playground tok/s", "ratio",
              "rounds' ratios", "ratio vs fused", "MFU"]
    table = [header] + [[label, f"{theirs:,.0f}", f"{theirs_fused:,.0f}" if theirs_fused else "", f"{ours:,.0f}",
                         f"{ours / theirs:.2f}x", f"{spread[0]:.2f}-{spread[1]:.2f}x" if spread else "",
                         f"{ours / theirs_fused:.2f}x" if theirs_fused else "", f"{mfu:.1%}" if mfu is not None else ""]
                        for label, theirs, theirs_fused, ours, mfu, spread in rows]
    print()
    print_table(table)


def print_table(table):
    """A Markdown table: the first row the header, the first column left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()

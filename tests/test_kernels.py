"""Each fast kernel (playground/kernels/) computes what the reference piece it replaces computes, forward and
backward, in every dtype this CPU computes natively; and a kernel that fails its check leaves the reference."""

import copy
import logging

import pytest
import torch
from torch import nn

from conftest import NATIVE_DTYPES, build, tiny_model_config
from playground.data import PAD
from playground.kernels import FAST_PIECES, support, use_fast_kernels
from playground.kernels.attention import FastMultiHeadAttention, append_to_cache
from playground.kernels.dropout import MaskDropout, keep_mask, mask_dropout
from playground.kernels.feed_forward import FusedFeedForward
from playground.kernels.linear import OneDNNLinear
from playground.model.attention import MultiHeadAttention, causal_mask, padding_mask
from playground.model.layers import PositionwiseFeedForward

DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def outputs_and_gradients(module, inputs, forward, dtype):
    """forward(module, *inputs) and the gradients of a scalar of it, under autocast to dtype (or none for fp32)."""
    torch.manual_seed(1)  # the same dropout mask for both sides: they draw the same random numbers
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        y = forward(module, *inputs)
    grads = torch.autograd.grad((y.float() ** 2).sum(), [*inputs, *module.parameters()])
    return [y, *grads]


def assert_as_close_as_reference(fast, reference, exact, dtype):
    """fp32: equal to float rounding. Lower precision: no further from the fp32 result than the reference is."""
    if dtype == torch.float32:
        for ours, theirs in zip(fast, reference):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        return
    for ours, theirs, truth in zip(fast, reference, exact):
        error = lambda t: ((t.float() - truth).norm() / truth.norm()).item()
        # bf16 keeps 8 significant bits (0.4%): a bias's gradient, summed over few positions, lands 0.5-2% from
        # fp32 by either path depending on the dropout mask drawn (over 8 masks: 0.0044-0.0192, either path)
        assert error(ours) < max(2 * error(theirs), 0.02)


def fast_copy(module):
    """The same module (same parameters) with its fast class: what build_model(kernels="fast") does to it."""
    module.__class__ = FAST_PIECES[type(module)]
    for child in module.modules():
        if type(child) in FAST_PIECES:
            child.__class__ = FAST_PIECES[type(child)]
    return module


@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_the_fused_feed_forward_gives_the_reference_outputs_and_gradients(p, dtype):
    torch.manual_seed(0)
    ff = fast_copy(PositionwiseFeedForward(16, 64, p).train())
    x = torch.randn(3, 5, 16, requires_grad=True)
    reference = lambda m, t: PositionwiseFeedForward.forward(m, t)  # the textbook forward, with the same dropout mask
    fast = outputs_and_gradients(ff, [x], lambda m, t: m(t), dtype)
    assert fast[0].shape == (3, 5, 16) and all(g.dtype == torch.float32 for g in fast[1:])
    assert_as_close_as_reference(fast, outputs_and_gradients(ff, [x], reference, dtype),
                                 outputs_and_gradients(ff, [x], reference, torch.float32), dtype)


def attention_case(self_attention, p):
    torch.manual_seed(0)
    attn = fast_copy(MultiHeadAttention(32, 4, p, self_attention=self_attention).train())
    x = torch.randn(3, 5, 32, requires_grad=True)
    if self_attention:
        return attn, [x], causal_mask(5)
    src = torch.tensor([[5] * 7, [5] * 4 + [PAD] * 3, [5] * 2 + [PAD] * 5])
    return attn, [x, torch.randn(3, 7, 32, requires_grad=True)], padding_mask(src, PAD)


def attend(mask, reference=False):
    def forward(attn, x, memory=None):
        if reference:
            return MultiHeadAttention.forward(attn, x, memory=memory, mask=mask)
        return attn(x, memory=memory, mask=mask)
    return forward


@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("self_attention", [True, False], ids=["self", "cross"])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_the_cpu_attention_kernel_gives_the_reference_outputs_and_gradients(p, self_attention, dtype):
    attn, inputs, mask = attention_case(self_attention, p)
    fast = outputs_and_gradients(attn, inputs, attend(mask), dtype)
    assert fast[0].shape == (3, 5, 32)
    assert_as_close_as_reference(fast, outputs_and_gradients(attn, inputs, attend(mask, reference=True), dtype),
                                 outputs_and_gradients(attn, inputs, attend(mask, reference=True), torch.float32), dtype)


@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("self_attention", [True, False], ids=["self", "cross"])
def test_torch_sdpa_in_evaluation_gives_the_reference_outputs(self_attention, dtype):
    attn, inputs, mask = attention_case(self_attention, 0.1)
    attn.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        fast, reference = attend(mask)(attn, *inputs), attend(mask, reference=True)(attn, *inputs)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fast.float(), reference.float(), **tol)


def test_the_cpu_attention_kernel_keeps_padded_source_positions_out_of_the_gradient():
    attn, inputs, mask = attention_case(self_attention=False, p=0.1)
    grad_memory = outputs_and_gradients(attn, inputs, attend(mask), torch.float32)[2]
    assert grad_memory[1, 4:].abs().max() == 0 and grad_memory[2, 2:].abs().max() == 0
    assert grad_memory[0].abs().min() > 0


def linear_pair(n_in, n_out, *input_shape):
    """OneDNNLinear and nn.Linear with the same parameters, and an input that requires grad."""
    torch.manual_seed(0)
    ours, theirs = OneDNNLinear(n_in, n_out), nn.Linear(n_in, n_out)
    theirs.load_state_dict(ours.state_dict())  # the same parameters under the same names
    return ours, theirs, torch.randn(*input_shape, n_in, requires_grad=True)


def test_the_onednn_linear_gives_nn_linear_outputs_and_gradients():
    ours, theirs, x = linear_pair(24, 40, 3, 5)
    results = []
    for layer in (ours, theirs):
        y = layer(x)
        results.append([y, *torch.autograd.grad((y**2).sum(), [x, *layer.parameters()])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_with_onednn_switched_off_the_fast_linear_layers_are_nn_linear_and_the_log_says_why(monkeypatch, caplog):
    from playground.kernels import linear
    from playground.perf import matmul_peak

    ours, theirs, x = linear_pair(24, 40, 3, 5)
    monkeypatch.setattr(linear, "_onednn_linear", lambda *a: pytest.fail("oneDNN ran while switched off"))
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # as torch's own operations take it
    support.works.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="playground.kernels"):
            matmul_peak(torch.device("cpu"), torch.float32, seconds=0.01)  # every run measures it, reference or not
            assert caplog.records == []
            assert {name for name, ok in support.check_all(torch.device("cpu"), torch.float32).items()
                    if not ok} == {"onednn_linear", "packed_linear"}
            y = ours(x)
            y.sum().backward()
            with torch.no_grad():
                ours(x)
        torch.testing.assert_close(y, theirs(x))
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2 and all("torch.backends.mkldnn.enabled is False" in line for line in lines)
    finally:
        support.works.cache_clear()


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_the_fast_dropout_drops_the_configured_fraction_and_scales_what_it_keeps(p, seeded):
    x = torch.ones(4_000_000, requires_grad=True)
    y = mask_dropout(x, p)
    kept = y != 0
    assert abs((1 - kept.float().mean().item()) - p) < 1e-3  # within 1e-3 of p (the old 8-bit mask: 0.1016)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)), rtol=1e-4, atol=0)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, y.detach())  # the gradient flows through the kept elements only, scaled the same


def test_elements_that_share_a_random_byte_in_the_fast_dropout_drop_almost_independently(seeded):
    from playground.kernels.dropout import SHARED

    p, columns = 0.1, 200_000  # 0.1 is 6553.6 / 65536: the shared low byte decides the ties
    keep, _ = keep_mask((SHARED, columns), p, "cpu")  # row r of column c: the elements sharing column c's byte
    dropped = 1 - keep.double()
    assert abs(dropped.mean().item() - p) < 1e-3
    centred = dropped - dropped.mean(1, keepdim=True)
    correlation = (centred[0] * centred[1]).mean() / (centred[0].std() * centred[1].std())
    assert abs(correlation.item()) < 0.01  # at most 3.8e-6 / 0.09 by construction; 1 / sqrt(columns) of noise


def test_the_fast_dropout_is_the_identity_in_evaluation_and_the_same_for_the_same_seed():
    x = torch.randn(1000)
    assert MaskDropout(0.5).eval()(x) is x
    torch.manual_seed(3)
    a = mask_dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, mask_dropout(x, 0.2))
    keep, scale = keep_mask((10,), 1.0, "cpu")
    assert keep.sum() == 0 and scale == 0.0


def test_the_fast_kernels_take_any_incoming_gradient_layout_and_a_single_vector():
    attn, (x,), mask = attention_case(self_attention=True, p=0.1)
    attn(x, mask=mask).sum().backward()  # the incoming gradient is one value broadcast: a stride-0 tensor
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    x.grad = None
    weights = torch.randn(3, 32, 5)
    (attn(x, mask=mask).transpose(1, 2) * weights).sum().backward()  # a transposed, non-contiguous gradient
    assert torch.isfinite(x.grad).all()
    layer = OneDNNLinear(4, 3, bias=False)
    vector = torch.randn(4, requires_grad=True)
    layer(vector).sum().backward()  # nn.Linear takes a single (K,) vector too
    torch.testing.assert_close(vector.grad, layer.weight.sum(0).detach())


def test_a_second_derivative_through_linear_is_nn_linears_and_through_the_fused_layers_is_refused():
    ours, theirs, x = linear_pair(6, 4, 3)
    second = []
    for layer in (ours, theirs):
        (grad_x,) = torch.autograd.grad((layer(x) ** 2).sum(), x, create_graph=True)
        second.append(torch.autograd.grad((grad_x**2).sum(), layer.weight)[0])
    assert second[1].abs().sum() > 0
    torch.testing.assert_close(second[0], second[1])
    attn, (x,), mask = attention_case(self_attention=True, p=0.1)
    ff = fast_copy(PositionwiseFeedForward(32, 64, 0.1).train())
    for layer in (lambda t: attn(t, mask=mask), ff):
        with pytest.raises(RuntimeError, match="no second derivative"):
            torch.autograd.grad((layer(x) ** 2).sum(), x, create_graph=True)


def test_the_fused_feed_forward_with_everything_dropped_gives_the_output_bias():
    ff = FusedFeedForward(8, 16, 1.0).train()
    torch.testing.assert_close(ff(torch.randn(2, 3, 8)), ff.w2.bias.detach().expand(2, 3, 8))


def test_fast_kernels_keep_the_weights_and_their_names_and_swap_only_the_reference_classes():
    torch.manual_seed(0)
    reference = build(tiny_model_config(), 20, 20)
    torch.manual_seed(0)
    fast = build(tiny_model_config(), 20, 20, kernels="fast")
    assert reference.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), fast.state_dict().values()))
    assert isinstance(fast.encoder.layers[0].self_attn, FastMultiHeadAttention)
    assert type(reference.encoder.layers[0].self_attn) is MultiHeadAttention

    class MyFeedForward(PositionwiseFeedForward):  # a learner's own subclass keeps its own code
        pass

    model = build(tiny_model_config(), 20, 20)
    model.encoder.layers[0].feed_forward.__class__ = MyFeedForward
    assert type(use_fast_kernels(model).encoder.layers[0].feed_forward) is MyFeedForward


def test_the_growing_decoding_cache_holds_what_concatenation_holds_and_never_changes_a_tensor_handed_out():
    torch.manual_seed(0)
    steps = [torch.randn(3, 2, 1 if i else 5, 4) for i in range(40)]  # a prompt of 5 positions, then one at a time
    cached, views, buffers = None, [], set()
    for i, new in enumerate(steps):
        cached = append_to_cache(cached, new)
        views.append((cached, cached.clone()))
        buffers.add(cached._base.data_ptr())
        torch.testing.assert_close(cached, torch.cat(steps[: i + 1], dim=2), rtol=0, atol=0)
        if i == 20:  # a copied cache that appends its own position: both branches keep their own contents
            branch = append_to_cache(views[19][0], torch.ones(3, 2, 1, 4))
            torch.testing.assert_close(branch, torch.cat([*steps[:20], torch.ones(3, 2, 1, 4)], dim=2), rtol=0, atol=0)
    assert all(torch.equal(view, contents) for view, contents in views)
    assert len(buffers) <= 5  # written in place: 44 positions in buffers of 16, 32, 64 (and one for the branch)
    reordered = cached.index_select(0, torch.tensor([2, 0, 0]))  # beam search's reorder: a tensor from elsewhere
    longer = append_to_cache(reordered, steps[0][:, :, :1])
    torch.testing.assert_close(longer, torch.cat([reordered, steps[0][:, :, :1]], dim=2), rtol=0, atol=0)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_fast_kernels_decode_what_the_reference_decodes_with_and_without_the_cache(beam_size):
    torch.manual_seed(0)
    reference = build(tiny_model_config(), 20, 20).eval()
    fast = use_fast_kernels(copy.deepcopy(reference))
    src = torch.randint(4, 20, (5, 7))
    src[1, 4:] = PAD
    expected = reference.generate(src, max_len=30, beam_size=beam_size)
    assert expected.size(1) > 16  # past the growing cache's first buffer
    assert torch.equal(fast.generate(src, max_len=30, beam_size=beam_size), expected)
    assert torch.equal(fast.generate(src, max_len=30, beam_size=beam_size, use_cache=False), expected)


def test_fast_kernels_name_the_settings_under_which_a_piece_still_trains_with_its_reference_code(caplog):
    with caplog.at_level(logging.INFO, logger="playground.kernels"):
        build(tiny_model_config(), 20, 20, kernels="fast")
        assert caplog.records == []  # the paper's model: every piece takes its fast path
        build(tiny_model_config(positional="rotary", activation="gelu"), 20, 20, kernels="fast")
    assert [r.getMessage() for r in caplog.records] == [
        "trainer.kernels=fast: attention trains on the CPU with its reference code under model.positional=rotary "
        "(the CPU attention kernel does not rotate positions)",
        "trainer.kernels=fast: the feed-forward trains on the CPU with its reference code under model.activation=gelu "
        "(the fused kernel is ReLU's, the paper's)"]


def test_a_rotary_model_trains_with_fast_kernels_to_the_reference_outputs_and_gradients():
    torch.manual_seed(0)
    reference = build(tiny_model_config(positional="rotary"), 20, 20).train()  # dropout 0: nothing random
    fast = use_fast_kernels(copy.deepcopy(reference))
    src, tgt_in = torch.randint(4, 20, (3, 7)), torch.randint(4, 20, (3, 5))
    src[1, 4:] = PAD
    results = []
    for model in (reference, fast):
        logits = model(src, tgt_in)  # (B, T, V)
        results.append([logits, *torch.autograd.grad((logits ** 2).sum(), list(model.parameters()))])
    for ours, theirs in zip(results[1], results[0]):  # fp32: equal to float rounding
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_kernel_that_fails_its_check_leaves_its_piece_to_the_reference_with_one_log_line(monkeypatch, caplog):
    def broken(device, dtype):
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setitem(support.CHECKS, "fused_feed_forward", ("the fused CPU feed-forward", broken))
    support.works.cache_clear()
    try:
        torch.manual_seed(0)
        ff = fast_copy(PositionwiseFeedForward(16, 32, 0.0).train())
        x = torch.randn(2, 3, 16, requires_grad=True)
        with caplog.at_level(logging.WARNING, logger="playground.kernels"):
            y = ff(x)
            ff(x)
        lines = [r.getMessage() for r in caplog.records if "feed-forward" in r.getMessage()]
        assert len(lines) == 1 and "runs the reference code" in lines[0] and "primitive descriptor" in lines[0]
        assert y.grad_fn.name() != "_FeedForwardReLUBackward"  # autograd's graph of the reference forward
        torch.testing.assert_close(y, PositionwiseFeedForward.forward(ff, x))
    finally:
        support.works.cache_clear()


def test_every_kernel_passes_its_check_in_fp32_on_this_cpu():
    """fp32 on a CPU is what every machine this project runs on has: there, every CPU kernel must work."""
    results = support.check_all(torch.device("cpu"), torch.float32)
    assert results == {name: True for name in support.CHECKS}


def test_cached_decoding_packs_the_weights_once_a_decoding_and_never_decodes_with_a_stale_copy(monkeypatch):
    from playground.kernels import linear, transformer

    torch.manual_seed(0)
    reference = build(tiny_model_config(), 20, 20).eval()
    fast = use_fast_kernels(copy.deepcopy(reference))
    assert support.works("packed_linear", "cpu", torch.float32)  # fp32 on a CPU with oneDNN: every machine here
    assert support.works("packed_linear", "cpu", torch.bfloat16)  # used in fp32 only: a bf16 run logs no failure
    packed = []
    monkeypatch.setattr(transformer, "pack_weight", lambda w, rows: packed.append(w) or linear.pack_weight(w, rows))
    src = torch.randint(4, 20, (5, 7))
    with torch.no_grad():  # step by step, the logits of the reference's own cached decoding
        memory, src_mask = reference.encode(src)
        ys, caches = torch.full((5, 1), 1), ({}, {})
        for t in range(4):
            logits = [model.decode(ys[:, -1:], memory, src_mask, cache, t) for model, cache in zip((fast, reference),
                                                                                                    caches)]
            torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
            ys = torch.cat([ys, logits[1][:, -1].argmax(-1, keepdim=True)], dim=1)
    layers = sum(type(m) is OneDNNLinear for m in (*fast.decoder.modules(), fast.generator))
    assert len(packed) == layers  # once for the decoding, at its first step
    del memory
    outputs = []
    for _ in range(3):  # between decodings, an edit that a tensor's version counter does not see
        outputs.append(fast.generate(src, max_len=30))
        assert torch.equal(outputs[-1], reference.generate(src, max_len=30))
        assert "_decoding_packs_held" not in vars(fast)  # the copies were let go with the decoding
        for model in (reference, fast):
            model.decoder.layers[0].feed_forward.w2.weight.data.mul_(-3.0)
    assert not torch.equal(outputs[0], outputs[1]) and len(packed) == 4 * layers


def test_a_weight_edited_in_the_middle_of_a_decoding_is_used_from_the_next_step_as_the_reference_uses_it():
    import io

    torch.manual_seed(0)
    reference = build(tiny_model_config(), 20, 20).eval()
    fast = use_fast_kernels(copy.deepcopy(reference))
    src = torch.randint(4, 20, (5, 7))
    with torch.no_grad():
        memory, src_mask = reference.encode(src)
        ys, caches = torch.full((5, 1), 1), ({}, {})
        for t in range(5):
            if t == 2:  # in place under no_grad, as an optimizer step or load_state_dict edits a weight
                for model in (fast, reference):
                    model.decoder.layers[1].feed_forward.w2.weight.mul_(-3.0)
                    model.generator.weight.add_(0.5)  # the output layer's, shared with the target embedding
            if t == 3:  # a layer given a new weight altogether
                new = torch.randn(32, 32)
                for model in (fast, reference):
                    model.decoder.layers[0].self_attn.out_proj.weight = nn.Parameter(new.clone())
            logits = [model.decode(ys[:, -1:], memory, src_mask, cache, t) for model, cache in zip((fast, reference),
                                                                                                    caches)]
            torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
            ys = torch.cat([ys, logits[1][:, -1].argmax(-1, keepdim=True)], dim=1)
        # in the middle of a decoding (its encoder output alive), the model still copies and saves as any model does
        copied = copy.deepcopy(fast)
        torch.save(fast, io.BytesIO())
        assert "_decoding_packs_held" in vars(fast) and "_decoding_packs_held" not in vars(copied)
        copied_caches = copy.deepcopy(caches[1])
        torch.testing.assert_close(copied.decode(ys[:, -1:], memory, src_mask, copied_caches, 5),
                                   reference.decode(ys[:, -1:], memory, src_mask, caches[1], 5), rtol=1e-5, atol=1e-5)


def test_packs_of_an_earlier_decoding_are_freed_when_a_later_one_replaces_them_while_its_encoder_output_lives():
    """A caller may keep encoder outputs (one per batch, say): only the packs in use are kept, about 19 MB at d256."""
    import gc
    import weakref

    torch.manual_seed(0)
    fast = use_fast_kernels(build(tiny_model_config(), 20, 20)).eval()
    src = torch.randint(4, 20, (5, 7))
    kept, earlier = [], []
    with torch.no_grad():
        for _ in range(3):
            memory, src_mask = fast.encode(src)
            fast.decode(torch.full((5, 1), 1), memory, src_mask, {}, 0)
            kept.append(memory)  # every encoder output stays alive
            earlier.append([weakref.ref(pack) for pack in vars(fast)["_decoding_packs_held"][1].values()])
    gc.collect()
    assert all(ref() is None for refs in earlier[:-1] for ref in refs)  # replaced: freed
    assert all(ref() is not None for ref in earlier[-1])  # in use: kept


def test_a_kernel_written_for_the_cpu_is_neither_checked_nor_reported_on_another_device(caplog):
    cpu_only = {name for name, devices in support.DEVICES.items() if devices == ("cpu",)}
    assert cpu_only == {"cpu_attention", "fused_feed_forward", "onednn_linear", "packed_linear", "mask_dropout",
                        "reused_memory"}
    support.works.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="playground.kernels"):
            assert not any(support.works(name, "cuda", torch.bfloat16) for name in cpu_only)
        assert caplog.records == []  # a GPU run's log says nothing of the CPU's kernels: the reference runs there
    finally:
        support.works.cache_clear()


@pytest.fixture
def every_temporary_reused(monkeypatch):
    """Every tensor the fast kernels could give memory kept from before gets it, however small (normally 16 MB
    and up: the logits and their gradient), so that tiny models exercise the reuse."""
    from playground.kernels import memory

    monkeypatch.setattr(memory, "BIG", 0)
    memory.release_all()
    yield memory
    memory.release_all()


def test_a_big_temporary_reuses_memory_only_once_no_tensor_shares_it(every_temporary_reused):
    memory = every_temporary_reused
    first = memory.reused_empty((4, 6), torch.float32, "cpu").fill_(1.0)
    kept = first[1:].detach()  # the caller keeps part of it: a view, cut from autograd
    del first
    second = memory.reused_empty((4, 6), torch.float32, "cpu").fill_(2.0)
    assert second.data_ptr() != kept.data_ptr() - 24 and torch.equal(kept, torch.ones(3, 6))  # held: not written
    addresses = {kept.data_ptr() - 24, second.data_ptr()}
    del kept, second
    third = memory.reused_empty((2, 6), torch.int64, "cpu")  # any shape and dtype that fits, once no one holds it
    assert third.shape == (2, 6) and third.dtype == torch.int64 and third.data_ptr() in addresses


def test_fast_training_that_reuses_memory_keeps_the_reference_losses_and_never_writes_a_kept_tensor(
        every_temporary_reused, monkeypatch):
    from playground.kernels import loss_function

    memory, buffers = every_temporary_reused, []
    reused_empty = memory.reused_empty

    def recorded(*args):
        tensor = reused_empty(*args)
        buffers.append(memory._buffers[-1])  # the buffer it was carved from (held here too: not sharing its memory)
        return tensor

    monkeypatch.setattr(memory, "reused_empty", recorded)
    torch.manual_seed(0)
    reference = build(tiny_model_config(), 30, 30)
    fast = use_fast_kernels(copy.deepcopy(reference))
    src, tgt = torch.randint(4, 30, (6, 9)), torch.randint(4, 30, (6, 8))
    tgt[2, 5:] = PAD
    losses, kept = {}, []
    for name, model in (("reference", reference), ("fast", fast)):
        optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-2), loss_function(name)
        losses[name] = []
        for _ in range(4):
            logits = model(src, tgt[:, :-1])  # (B, T, V)
            loss = loss_fn(logits, tgt[:, 1:], 0.1, PAD)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
            if name == "fast":  # a caller who keeps every step's logits, and a copy to compare them with
                kept.append((logits, logits.detach().clone()))
    torch.testing.assert_close(torch.tensor(losses["fast"]), torch.tensor(losses["reference"]), rtol=1e-5, atol=0)
    assert losses["fast"][-1] < losses["fast"][0]
    for logits, copied in kept:
        assert torch.equal(logits, copied)
    assert len({id(b) for b in buffers}) < len(buffers) / 2  # most of the fast run's temporaries reused memory
    assert memory._buffers and not fast.eval().training and memory._buffers == []  # evaluation lets them go


def test_a_linear_output_in_reused_memory_can_be_changed_in_place_as_nn_linears_can(every_temporary_reused):
    ours, theirs, x = linear_pair(8, 16, 3)
    results = []
    for layer in (ours, theirs):
        y = layer(x).relu_()  # in place on the layer's output, as a learner's edit might
        results.append([y, *torch.autograd.grad((y ** 2).sum(), [x, layer.weight])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_model_with_fast_kernels_compiles_to_one_graph_as_the_reference_does():
    # under torch.compile every fast piece takes its reference code: nothing of the fast path may break the graph
    torch.manual_seed(0)
    model = build(tiny_model_config(enc_layers=1, dec_layers=1), 20, 20, kernels="fast").train()
    src, tgt_in = torch.randint(4, 20, (2, 5)), torch.randint(4, 20, (2, 4))
    explained = torch._dynamo.explain(model)(src, tgt_in)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in explained.break_reasons]

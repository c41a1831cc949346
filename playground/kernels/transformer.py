"""A drop-in for Transformer whose cached decoding multiplies by weights laid out for oneDNN once per decoding.

A decoding step puts one token per sentence through every linear layer of the decoder and the output layer:
a product of a few rows by a whole weight, for which oneDNN first lays the weight out in a blocked format of its
own, on every call (linear.py). `FastTransformer.decode` lays out those weights once, at the first step of each
decoding (offset 0, or another encoder output), and its steps multiply by them. The packed copies are made
afresh for every decoding, from the weights as they are then, and are let go with that decoding's encoder
output. Within a decoding, each step checks that every packed weight is still the same tensor at the same
version (an in-place edit under torch.no_grad(), an optimizer step, load_state_dict) and packs again if not, so an
edited weight is never decoded with a stale copy; an edit through `.data`, which no version counter sees, shows
from the next decoding on. The packs are not part of a copy or a pickle of the model (copy.deepcopy, torch.save).
Elsewhere (training, autocast, other devices, decoding without a cache, torch.compile) decode is the reference's.
Switching to evaluation (`eval()`) also lets go of the memory the training step's big temporaries keep (memory.py).
"""

import weakref

import torch

from ..model import Transformer
from .linear import OneDNNLinear, pack_weight, packed_weights
from .memory import release_all
from .support import works


class FastTransformer(Transformer):
    """Transformer whose cached decoding on the CPU in fp32 multiplies by weights packed once per decoding."""

    def train(self, mode: bool = True):
        if not mode:  # evaluation makes no gradients: the memory kept for training's logits goes back (memory.py)
            release_all()
        return super().train(mode)

    def __getstate__(self):
        # the packs belong to one decoding of this model (a weak reference to its encoder output, oneDNN's opaque
        # tensors): a copy or a pickle of the model goes without them, and packs its own at its next decoding
        state = super().__getstate__()
        state.pop("_decoding_packs_held", None)
        return state

    def decode(self, tgt_in, memory, src_mask, cache=None, offset=0):
        packs = self._decoding_packs(tgt_in, memory, cache, offset)
        if packs is None:
            return super().decode(tgt_in, memory, src_mask, cache, offset)
        with packed_weights(packs):
            return super().decode(tgt_in, memory, src_mask, cache, offset)  # (B, T, V)

    def _decoding_packs(self, tgt_in, memory, cache, offset):
        """{linear layer: its packed weight} for this decoding, packed at its first step; None where not used."""
        if (cache is None or torch.is_grad_enabled() or memory.device.type != "cpu"
                or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()
                or not works("packed_linear", "cpu", torch.float32)):
            return None
        held = self.__dict__.get("_decoding_packs_held")  # (a weak reference to the memory, the packs, the weights)
        if offset == 0 or held is None or held[0]() is not memory or not _unchanged(held[2]):
            layers = [m for m in (*self.decoder.modules(), self.generator)
                      if type(m) is OneDNNLinear and m.weight.dtype == torch.float32]
            weights = [(m._parameters, m.weight, *_version(m.weight)) for m in layers]  # what was packed, as it was
            held = (weakref.ref(memory), {m: pack_weight(m.weight, tgt_in.numel()) for m in layers}, weights)
            self.__dict__["_decoding_packs_held"] = held
            # the decoding is over: free the copies. The finalizer holds the packs' id, not the packs, so packs that
            # a later decoding (or a repack) replaced are freed at once even while this encoder output lives on
            weakref.finalize(memory, _let_go, self.__dict__, id(held))
        return held[1]


def _version(weight) -> tuple:
    """What changes when a weight is edited in place (its version counter) or given new memory (its address)."""
    return weight.data_ptr(), None if weight.is_inference() else weight._version  # (an inference tensor has none)


def _unchanged(weights) -> bool:
    """Whether every packed layer still has the weight it had, unedited since it was packed (a few microseconds
    a step: _parameters, not the module's slower attribute lookup)."""
    return all(params.get("weight") is w and w.data_ptr() == address and (version is None or w._version == version)
               for params, w, address, version in weights)


def _let_go(attributes: dict, held_id: int) -> None:
    # (should a newer decoding's packs have been given the same id, they go too, and are packed again at its next
    # step: held is None there)
    if id(attributes.get("_decoding_packs_held")) == held_id:
        del attributes["_decoding_packs_held"]

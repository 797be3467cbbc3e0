"""
CPU decoding speed: run every nn.Linear through oneDNN with a weight packed once.

    with cpu_packed_linears(model, batch_size):     # model/generate.py, around its decode loop
        ...

Decoding a batch of B rows multiplies (B, dim) by each weight: a skinny matrix product. On the CPU,
MKL's sgemm repacks the weight on every call and runs such products at a fraction of its peak
(here, B = 8: 684 us for a 576 x 1536 weight, against 158 us at B = 1). oneDNN's linear with a
weight packed once ran the same product in 347 us. So, while generating on the CPU in float32,
every plain nn.Linear runs through oneDNN with a packed copy of its weight, cached per module (in
_PACKED, so a deepcopy of the model never sees it) and repacked when the weight changes (its
version counter moves after an optimizer step) or the batch size does (oneDNN packs for an
expected batch; a weight packed for batch 1 ran batch-8 decoding about 1.4x slower). Costs: one
extra copy of those weights while the model lives (skipped above MAX_PACKED parameters), and
float32 results that differ from F.linear's in the last bits (different summation order).
Anywhere else (a GPU, bfloat16, a torch without oneDNN) the context manager does nothing.
"""
import contextlib
import functools
import weakref

import torch
import torch.nn as nn

MAX_PACKED = 1_000_000_000
_PACKED = weakref.WeakKeyDictionary()     # module -> ((address, version, batch), packed weight)
_CAN_PACK = hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()


def _packed_forward(packed, x):
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@contextlib.contextmanager
def cpu_packed_linears(model, batch_size):
    """Inside the block, every plain nn.Linear of `model` computes with its oneDNN-packed weight."""
    w = model.lm_head.weight
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not (_CAN_PACK and w.device.type == "cpu" and w.dtype == torch.float32
            and sum(m.weight.numel() for m in linears) <= MAX_PACKED):
        yield
        return
    for m in linears:
        key = (m.weight.data_ptr(), m.weight._version, batch_size)   # packed for this batch size
        if key != _PACKED.get(m, (None,))[0]:
            _PACKED[m] = (key, torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_size))
        m.forward = functools.partial(_packed_forward, _PACKED[m][1])   # shadows Linear.forward
    try:
        yield
    finally:
        for m in linears:
            del m.forward

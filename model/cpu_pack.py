"""
CPU decoding speed: run every nn.Linear through oneDNN with a weight packed once.

    with cpu_packed_linears(model, batch_size):     # model/generate.py, around its decode loop
        ...

Decoding a batch of B rows multiplies (B, dim) by each weight: a skinny matrix product. On the CPU,
MKL's sgemm repacks the weight on every call and runs such products at a fraction of its peak
(here, B = 8: 684 us for a 576 x 1536 weight, against 158 us at B = 1). oneDNN's linear with a
weight packed once ran the same product in 347 us. So, while generating on the CPU, every plain
nn.Linear runs through oneDNN with a packed copy of its weight, cached per module (in _PACKED, so a
deepcopy of the model never sees it) and repacked when the weight changes (its version counter
moves after an optimizer step) or the batch size does (oneDNN packs for an expected batch; a weight
packed for batch 1 ran batch-8 decoding about 1.4x slower). Costs: one extra copy of those weights
while the model lives (skipped above MAX_PACKED parameters), and results that differ from
F.linear's in the last bits (different summation order).

The packing is in the dtype the linear computes in: the weights' own (float32, or bfloat16 where
oneDNN has bf16 kernels), or, under CPU autocast to bfloat16, a bfloat16 copy of float32 weights
(autocast would otherwise cast all of them again at every step; and oneDNN cannot multiply a
bfloat16 input by a float32 packed weight). bfloat16 halves the bytes a step reads: SmolLM2-135M's
211 linears at batch 1 took 85-110 ms packed in bf16 against 145-160 ms in float32 (one thread, a
busy machine). Anywhere else (a GPU, float16, a torch without oneDNN) the context manager does
nothing.

Inside torch.compile (the compiled decode step, `cpu_packed_linears(model, B, traced=True)`), a
packed weight is an opaque oneDNN tensor that the compiler cannot trace, and without it inductor
calls MKL's sgemm and loses the packing. So there each linear calls the custom op
`nanoalign::packed_linear(x, weight, slot)` instead: the graph keeps the call as it is, and at run
time the op finds the module's packed weight by its slot number. The weight itself is an input of
the op, so the compiled graph sees the parameter (and its shape), and a weight that changed in place
is repacked on the next entry without a recompile.
"""
import contextlib
import functools
import weakref

import torch
import torch.nn as nn

MAX_PACKED = 1_000_000_000
_PACKED = weakref.WeakKeyDictionary()     # module -> ((address, version, batch, dtype), packed)
_CAN_PACK = hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()
_SLOTS = []                               # slot -> weakref to its nn.Linear (for the custom op)


def _packed_forward(packed, dtype, x):
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, None, "none", [], "")


def packing_dtype(w):
    """The dtype the linears of weight `w` compute in here, if oneDNN packs it; else None."""
    if not (_CAN_PACK and w.device.type == "cpu"):
        return None
    dtype = w.dtype
    if torch.is_autocast_enabled("cpu") and dtype == torch.float32:
        dtype = torch.get_autocast_dtype("cpu")
    bf16_ok = dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype if dtype == torch.float32 or bf16_ok else None


# The custom op for compiled graphs. A plain Library kernel, not torch.library.custom_op: the
# latter's Python wrappers cost ~35 us a call here, against ~6 us (211 linears a SmolLM2 step).
_LIB = torch.library.Library("nanoalign", "FRAGMENT")
_LIB.define("packed_linear(Tensor x, Tensor weight, int slot) -> Tensor")


def _packed_linear_cpu(x, weight, slot):
    return torch.ops.mkldnn._linear_pointwise(x, _PACKED[_SLOTS[slot]()][1], None, "none", [], "")


def _packed_linear_meta(x, weight, slot):       # shapes only, for the compiler's tracing
    return x.new_empty(x.shape[:-1] + weight.shape[:1])


_LIB.impl("packed_linear", _packed_linear_cpu, "CPU")
_LIB.impl("packed_linear", _packed_linear_meta, "Meta")


def _traced_forward(m, x):
    return torch.ops.nanoalign.packed_linear(x.to(m._packed_dtype), m.weight, m._packed_slot)


def _traced_forward_of(m):
    """m's forward through the custom op, and its slot number, both kept on the module: a compiled
    graph guards on the forward it traced, so it must be the same object at every entry (a new one
    each time recompiled the step at every generate call). A deepcopy's copied slot still points at
    the original module; it is checked, and a copy gets its own."""
    s = getattr(m, "_packed_slot", None)
    if s is None or _SLOTS[s]() is not m:
        m._packed_slot = len(_SLOTS)
        _SLOTS.append(weakref.ref(m))
        m._traced_forward = functools.partial(_traced_forward, m)
    return m._traced_forward


@contextlib.contextmanager
def cpu_packed_linears(model, batch_size, traced=False):
    """Inside the block, every plain nn.Linear of `model` computes with its oneDNN-packed weight;
    traced=True routes it through the custom op, for a function that torch.compile traces."""
    w = model.lm_head.weight
    dtype = packing_dtype(w)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if dtype is None or sum(m.weight.numel() for m in linears) > MAX_PACKED:
        yield
        return
    for m in linears:
        key = (m.weight.data_ptr(), m.weight._version, batch_size, dtype)   # packed for this batch
        if key != _PACKED.get(m, (None,))[0]:
            _PACKED[m] = (key, torch.ops.mkldnn._reorder_linear_weight(m.weight.detach().to(dtype),
                                                                       batch_size))
        if traced:
            m._packed_dtype = dtype
            m.forward = _traced_forward_of(m)                       # shadows Linear.forward
        else:
            m.forward = functools.partial(_packed_forward, _PACKED[m][1], dtype)
    try:
        yield
    finally:
        for m in linears:
            del m.forward

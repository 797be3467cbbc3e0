"""
CPU decoding speed: run every nn.Linear through oneDNN with a weight packed once.

    with cpu_packed_linears(model, batch_size):     # model/generate.py, around its decode loop
        ...

Decoding a batch of B rows multiplies (B, dim) by each weight: a skinny matrix product. On the CPU,
MKL's sgemm repacks the weight on every call and runs such products at a fraction of its peak
(here, B = 8: 684 us for a 576 x 1536 weight, against 158 us at B = 1). oneDNN's linear with a
weight packed once ran the same product in 347 us. So, while generating on the CPU, every plain
nn.Linear (without a bias) runs through oneDNN with a packed copy of its weight, cached per module
(in _PACKED, so a deepcopy of the model never sees it) and repacked when the weight changes (its
version counter moves after an optimizer step) or the batch size does (oneDNN packs for an expected
batch; a weight packed for batch 1 ran batch-8 decoding about 1.4x slower). Costs: one extra copy of
those weights while the model lives (skipped above MAX_PACKED parameters), and results that differ
from F.linear's in the last bits (different summation order).

The packing is in the dtype the linear computes in: the weights' own (float32, or bfloat16 where
oneDNN has bf16 kernels), or, under CPU autocast to bfloat16, a bfloat16 copy of float32 weights
(autocast would otherwise cast all of them again at every step; and oneDNN cannot multiply a
bfloat16 input by a float32 packed weight). bfloat16 halves the bytes a step reads: SmolLM2-135M's
211 linears at batch 1 took 85-110 ms packed in bf16 against 145-160 ms in float32 (one thread, a
busy machine). Anywhere else (a GPU, float16, a torch without oneDNN) the context manager does
nothing.

Sibling linears that read the same input are packed as one weight and run as one product: q, k and v
(the model's `Attention.qkv`), gate and up (`MLP.gate_up`). cpu_packed_linears replaces those two
methods for the block, as it replaces each remaining linear's forward, and splits the product's
columns back into the three (two) outputs. SmolLM2-135M's 211 linears took 23.6 ms a step in bf16
at batch 1, its 121 grouped products 20.5 ms (batch 8: 31.1 and 29.2 ms; timed alone): oneDNN
reads a larger matrix closer to the memory's bandwidth, and the step makes 90 fewer calls (the
compiled step gained more, 1.17x -> 1.65x transformers at batch 1: docs/performance.md). Each
output column is the same dot product either way, rounded as oneDNN's blocking has it.

Inside torch.compile (the compiled decode step, `cpu_packed_linears(model, B, traced=True)`), a
packed weight is an opaque oneDNN tensor that the compiler cannot trace, and without it inductor
calls MKL's sgemm and loses the packing. So there each packed product calls the custom op
`nanoalign::packed_linear(x, weights, slot)` instead: the graph keeps the call as it is, and at run
time the op finds the packed weight by its slot number. The weights themselves are inputs of the
op, so the compiled graph sees the parameters (and their shapes), and a weight that changed in
place is repacked on the next entry without a recompile.

Tested against the plain linears (F.linear, the reference) in tests/model/test_generate.py: decoding
with and without the packing, each sibling group against its linears, the traced op against the
packed forward.
"""
import contextlib
import functools
import weakref

import torch
import torch.nn as nn

MAX_PACKED = 1_000_000_000
# a parent module's method -> the linears it runs on one input, packed as one weight (model/model.py)
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "gate_up": ("gate_proj", "up_proj")}
_PACKED = weakref.WeakKeyDictionary()   # owner module -> {method: ((addresses, versions, batch, dtype), packed)}
_CAN_PACK = hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()
_SLOTS = []                             # slot -> (weakref to the owner, method), for the custom op


def packing_dtype(w):
    """The dtype the linears of weight `w` compute in here, if oneDNN packs it; else None."""
    if not (_CAN_PACK and w.device.type == "cpu"):
        return None
    dtype = w.dtype
    if torch.is_autocast_enabled("cpu") and dtype == torch.float32:
        dtype = torch.get_autocast_dtype("cpu")
    bf16_ok = dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype if dtype == torch.float32 or bf16_ok else None


def packing_units(model):
    """(owner, method, linears) for every product a decode step runs packed: each GROUPS method whose
    linears are all plain nn.Linear without a bias (a LoRA layer is not, and keeps its own forward),
    then every other such linear on its own, as (the linear, "forward", [the linear]). A biased
    linear keeps its own forward: the packed product is called without one."""
    plain = lambda lin: type(lin) is nn.Linear and lin.bias is None   # noqa: E731
    units, grouped = [], set()
    for m in model.modules():
        for method, names in GROUPS.items():
            linears = [getattr(m, n, None) for n in names]
            if hasattr(m, method) and all(map(plain, linears)):
                units.append((m, method, linears))
                grouped.update(map(id, linears))
    units += [(m, "forward", [m]) for m in model.modules() if plain(m) and id(m) not in grouped]
    return units


def _pack(owner, method, linears, batch_size, dtype):
    """The oneDNN-packed weight of one unit, packed again only when a weight or the batch changed."""
    key = (tuple(lin.weight.data_ptr() for lin in linears),
           tuple(lin.weight._version for lin in linears), batch_size, dtype)
    done = _PACKED.setdefault(owner, {})
    if done.get(method, (None,))[0] != key:
        w = torch.cat([lin.weight.detach().to(dtype) for lin in linears])   # (sum of outs, in)
        done[method] = (key, torch.ops.mkldnn._reorder_linear_weight(w, batch_size))
    return done[method][1]


def _split(y, sizes):
    """A unit's product back into its linears' outputs (views), or itself for a lone linear."""
    return y if len(sizes) == 1 else y.split(sizes, dim=-1)


def _packed_forward(packed, dtype, sizes, x):
    return _split(torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, None, "none", [], ""), sizes)


# The custom op for compiled graphs. A plain Library kernel, not torch.library.custom_op: the
# latter's Python wrappers cost ~35 us a call here, against ~6 us (121 products a SmolLM2 step).
_LIB = torch.library.Library("nanoalign", "FRAGMENT")
_LIB.define("packed_linear(Tensor x, Tensor[] weights, int slot) -> Tensor")


def _packed_linear_cpu(x, weights, slot):
    owner, method = _SLOTS[slot]
    return torch.ops.mkldnn._linear_pointwise(x, _PACKED[owner()][method][1], None, "none", [], "")


def _packed_linear_meta(x, weights, slot):       # shapes only, for the compiler's tracing
    return x.new_empty(x.shape[:-1] + (sum(w.shape[0] for w in weights),))


_LIB.impl("packed_linear", _packed_linear_cpu, "CPU")
_LIB.impl("packed_linear", _packed_linear_meta, "Meta")


def _traced_forward(owner, method, linears, dtype, x):
    out = torch.ops.nanoalign.packed_linear(x.to(dtype), [lin.weight for lin in linears],
                                            owner._packed_slots[method])
    return _split(out, [lin.weight.shape[0] for lin in linears])


def _traced_forward_of(owner, method, linears, dtype):
    """The unit's forward through the custom op, and its slot number, both kept on the owner: a
    compiled graph guards on the function it traced, so it must be the same object at every entry
    (a new one each time recompiled the step at every generate call). A deepcopy's copied slot
    still points at the original module; it is checked, and a copy gets its own."""
    slots = vars(owner).setdefault("_packed_slots", {})      # method -> slot
    fns = vars(owner).setdefault("_packed_traced", {})       # (method, dtype, linears) -> forward
    s = slots.get(method)
    if s is None or _SLOTS[s][0]() is not owner:
        slots[method] = len(_SLOTS)
        _SLOTS.append((weakref.ref(owner), method))
    key = (method, dtype, tuple(map(id, linears)))           # a linear replaced: a new forward
    if key not in fns:
        for old in [k for k in fns if k[0] == method]:       # (which keeps no old module alive)
            del fns[old]
        fns[key] = functools.partial(_traced_forward, owner, method, linears, dtype)
    return fns[key]


@contextlib.contextmanager
def cpu_packed_linears(model, batch_size, traced=False):
    """Inside the block, every plain nn.Linear of `model` without a bias computes with its
    oneDNN-packed weight (grouped as GROUPS says); traced=True routes them through the custom op, for a
    function that torch.compile traces."""
    dtype = packing_dtype(model.lm_head.weight)
    units = packing_units(model)
    if dtype is None or sum(lin.weight.numel() for _, _, ls in units for lin in ls) > MAX_PACKED:
        yield
        return
    formed = {(id(owner), method) for owner, method, _ in units}
    for m in model.modules():     # a group no longer formed (LoRA came after): drop its packed copy
        for method in set(_PACKED.get(m, ())) & set(GROUPS):
            if (id(m), method) not in formed:
                del _PACKED[m][method]
    done = []
    try:                          # (an error or Ctrl-C while packing still puts every method back)
        for owner, method, linears in units:
            packed = _pack(owner, method, linears, batch_size, dtype)
            if traced:
                fn = _traced_forward_of(owner, method, linears, dtype)
            else:
                fn = functools.partial(_packed_forward, packed, dtype, [lin.weight.shape[0] for lin in linears])
            setattr(owner, method, fn)                     # shadows the class's method
            done.append((owner, method))
        yield
    finally:
        for owner, method in done:
            delattr(owner, method)

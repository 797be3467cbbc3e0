"""
Several processes, one training loop: what train.py needs from torch.distributed, kept out of the
model and out of the methods.

    torchrun --nproc_per_node 8 train.py --method dpo --init_from DIR ...              # DDP
    torchrun --nproc_per_node 8 train.py --method orpo --parallel fsdp ...             # FSDP2

Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op and the run is
the plain single-process one. With it:
- each rank trains on its own slice of every global batch (--batch_size rows per rank), so W ranks
  at batch B take the same rows, in the same order, as one process at batch W*B;
- `ddp`: DistributedDataParallel averages gradients in backward; `fsdp`: FSDP2 `fully_shard` on
  every block and on the root, parameters, gradients and AdamW state sharded across ranks;
- the loss is divided by the units (tokens or examples) of the *global* batch, times W because both
  engines average gradients over ranks, so W ranks give exactly the single-process gradient even
  when ranks hold different numbers of tokens;
- metrics are averaged over ranks, weighted by their units; only rank 0 prints, writes metrics and
  writes checkpoints.
On-policy methods sample on every rank for that rank's own prompts (each rank seeds its RNG with
seed + 1000 * rank, and a checkpoint keeps every rank's stream), under DDP only: under FSDP every
forward is a collective, and ranks that sample different lengths would wait on each other
forever. For a 7B on-policy run use DDP with LoRA, as the Self-Judge and OSP papers did.

A CUDA run needs a GPU for each rank on the machine (two NCCL ranks cannot share one GPU): with
fewer GPUs than ranks every rank runs on the CPU with gloo instead, and rank 0 prints a one-line
note.
"""
import contextlib
import gc
import inspect
import os
import sys

import torch
import torch.distributed as dist


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


def rank_device(device, local_rank, local_ranks):
    """(the device this rank trains on, a note to print or None). A CUDA device becomes the rank's
    own GPU, cuda:<local rank>, when the machine has a GPU for each of its `local_ranks` ranks;
    with fewer GPUs every rank falls back to the CPU (and so to gloo), with a note saying why."""
    if torch.device(device).type != "cuda":
        return device, None
    gpus = torch.cuda.device_count()
    if gpus >= local_ranks:
        return f"cuda:{local_rank}", None
    return "cpu", (f"note: {local_ranks} ranks on this machine but {gpus} GPU(s); every rank runs "
                   f"on the CPU (gloo). For the GPU, launch one rank per GPU "
                   f"(torchrun --nproc_per_node {max(gpus, 1)}).")


def resolve_device(device):
    """'auto' is CUDA if there is a GPU, else the CPU; any other device name as it was given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def setup(device):
    """Join the torchrun group if launched by torchrun. Returns the device this rank uses; 'auto' is
    CUDA if there is a GPU, else the CPU."""
    device = resolve_device(device)
    if "WORLD_SIZE" not in os.environ:
        return device
    local = int(os.environ.get("LOCAL_RANK", 0))
    device, note = rank_device(device, local, int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                 os.environ["WORLD_SIZE"])))
    if not dist.is_initialized():
        if note and int(os.environ.get("RANK", 0)) == 0:
            print(note, file=sys.stderr, flush=True)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group(group_backend(device))
        if dist.get_rank() != 0:          # one log: rank 0 prints, the others keep stderr only
            sys.stdout = open(os.devnull, "w")
    return device


def group_backend(device):
    """The process group's backend for ranks on `device`. On CUDA two: NCCL for the CUDA tensors (DDP's
    gradients, FSDP's shards) and gloo for the CPU ones of our own collectives (all_sum's stop flag,
    the metrics): NCCL alone takes no CPU tensor."""
    return "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"


def cleanup():
    """Leave the group. After a run that ended normally, every rank first waits for the others (so
    nobody tears down while a peer is still in a collective) and the group is then really freed.
    destroy_process_group() alone does not free it after FSDP2: each DeviceMesh holds the group and
    DTensor's caches hold the meshes. Its gloo threads then live on into interpreter shutdown, and
    a worker thread that only then drops its finished barrier (which holds the all-gathers before
    it, whose tensors own Python objects) takes the GIL while Python is finalizing: the thread is
    made to exit inside a noexcept destructor, std::terminate, SIGABRT. Freeing the group here
    joins those threads while the interpreter is whole. With an exception on its way out nothing
    is waited for (a peer may be stuck in a collective, and this rank would hang with it)."""
    if not dist.is_initialized():
        return
    if sys.exc_info()[0] is not None:
        dist.destroy_process_group()
        return
    dist.barrier()
    dist.destroy_process_group()
    from torch.distributed.device_mesh import DeviceMesh
    for obj in gc.get_objects():          # each mesh FSDP2 made keeps its groups by name
        registry = getattr(obj, "_pg_registry", None) if issubclass(type(obj), DeviceMesh) else None
        if isinstance(registry, dict):
            registry.clear()
    gc.collect()


class DDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that still looks like the Transformer to the methods (model.lm_head, model.cfg, ...)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model, parallel):
    """The model the loop trains: itself alone, a DDP wrapper, or sharded in place by FSDP2."""
    if world() == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)   # the root group: embeddings, final norm and lm_head
        return model
    # no buffer sync in forward: the only buffer (inv_freq) is a constant, and syncing it on every
    # forward would make generation, whose step count differs per rank, a collective
    new = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters   # torch >= 2.13
    return DDP(model, **({"forward_sync_buffers": False} if new else {"broadcast_buffers": False}))


def shard_frozen(ref, parallel):
    """FSDP: shard the frozen reference model too (else every rank holds all of it). Its forwards
    are then collectives, which the offline methods call the same number of times on every rank."""
    if world() > 1 and parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for layer in ref.layers:
            fully_shard(layer)
        fully_shard(ref)
    return ref


def unwrapped(model):
    return model.module if isinstance(model, DDP) else model


def no_sync(model, last):
    """DDP: skip the gradient all-reduce on every micro-batch but the last of a step."""
    if isinstance(model, DDP) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_sum(x):
    """Sum a float over ranks."""
    if world() == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def gather(x):
    """[x of rank 0, x of rank 1, ...] on every rank (any picklable x: a tensor, a dict)."""
    if world() == 1:
        return [x]
    every = [None] * world()
    dist.all_gather_object(every, x)
    return every


def weighted_means(mets, weights, by=None):
    """{name: the mean of its values, each weighted by its dict's weight}, over the dicts in `mets`
    that hold the name: a name some lack (judge agreement where there was nothing to judge) is not
    counted as 0 there. A name in `by` is weighted instead by the value its dict holds under the
    name by[name]: a fraction by what it is a fraction of (judge agreement by the pairs the oracle
    ranked). One rule for a step's micro-batches (runlog.step_metrics) and its ranks."""
    by, out = by or {}, {}
    for k in dict.fromkeys(k for m in mets for k in m):
        got = [(m[k], m[by[k]] if k in by else w) for m, w in zip(mets, weights) if k in m]
        out[k] = sum(v * w for v, w in got) / max(sum(w for _, w in got), 1e-30)
    return out


def mean_metrics(mets, weight=1.0, by=None, sums=()):
    """Average a {name: float} dict over ranks, each rank's weighted by `weight` (its units: tokens
    or examples, so that a per-token mean is that of the global batch), a name in `by` by its own
    count, by weighted_means; a name in `sums` (a count or a rate of the whole run) summed."""
    if world() == 1:
        return mets
    every = gather((mets, float(weight)))
    means = weighted_means([m for m, _ in every], [w for _, w in every], by)
    for k in sums:
        if k in means:
            means[k] = sum(m[k] for m, _ in every if k in m)
    return {k: means[k] for k in sorted(means)}


def is_fsdp(model):
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def full_state(model, opt):
    """FSDP: gather the full model and AdamW state (collective; the tensors land on rank 0, on the
    CPU). Returns (model state dict by parameter name, optimizer state dict keyed by names)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, opt, options=opts)


def load_full_optimizer(model, opt, osd):
    """FSDP: load a full optimizer state dict (keyed by names) into the sharded AdamW."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))

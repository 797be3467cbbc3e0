"""
A run's checkpoint directory (out_dir/ckpt): the model, as model/checkpoint.py writes it (a Hugging
Face folder, or LoRA adapters on their base), plus what an exact `--resume` needs beside it:

    train_state.safetensors   AdamW's state tensors (opt.<param>.<field>) and the RNG states, each
                              rank's own under torchrun (rng.torch: rank 0's; rng.torch.rank<r>)
    state.json                step, data position, how many processes trained (world: --resume
                              needs as many), the run's config, the working directory its
                              relative paths are from (cwd: --resume reads them from there),
                              AdamW's param groups
    <name>.json               files a method keeps with its model (run.checkpoint_files)
    train_data.json           the --train_data file's sha256: --resume refuses changed rows

Only safetensors and JSON, like the model's files. train.py saves one every --ckpt_every steps, on
Ctrl-C and at the end, and loads one on --resume; nanoalign/config.py checks the saved config.
"""
import dataclasses
import hashlib
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, atomic_write_json, read_json, save_adapters, save_model
from nanoalign import dist

TRAIN_STATE = "train_state.safetensors"   # what --resume needs beside the weights (see the top)


def save_checkpoint(path, model, tok, opt, cfg, step, order, run):
    """Model in the HF layout (or LoRA adapters) + train state (safetensors + JSON), written to a
    temp dir then renamed. Under FSDP every rank helps gather the full state; rank 0 writes."""
    msd, sd = dist.full_state(model, opt) if dist.is_fsdp(model) else (None, opt.state_dict())
    # every rank's RNG streams: under torchrun each rank samples (on-policy) and drops out (LoRA)
    # with its own, and a resume that gave them all rank 0's would draw alike on every rank
    rngs = dist.gather(torch.get_rng_state())
    cuda = dist.gather(torch.cuda.get_rng_state()) if torch.cuda.is_available() else None
    model = dist.unwrapped(model)
    if dist.is_main():
        tmp, old = path + ".tmp", path + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(model, "lora", None):
            save_adapters(model, tmp, tok, cfg.init_from, msd)
        else:
            save_model(model, tmp, tok, state=msd)
        tensors = {f"opt.{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items()}
        for r, state in enumerate(rngs):
            tensors[rng_key("torch", r)] = state
        for r, state in enumerate(cuda or []):
            tensors[rng_key("cuda", r)] = state
        save_file(tensors, os.path.join(tmp, TRAIN_STATE))
        for name, value in run.checkpoint_files.items():    # what the method asked to keep with its model
            atomic_write_json(value, os.path.join(tmp, name))
        atomic_write_json({"step": step, "data_pos": order.pos, "world": dist.world(),
                           "config": dataclasses.asdict(cfg), "cwd": os.getcwd(),
                           "param_groups": sd["param_groups"]},
                          os.path.join(tmp, "state.json"))
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()   # nobody reads the checkpoint before rank 0 has finished writing it


def load_train_state(path, model, opt):
    """Load AdamW's state into `opt` and restore the RNG states; returns (step, data position).
    The data position counts global batches, --batch_size x the processes: a run goes on exactly
    only with as many processes as it had (state.json's "world"; one that does not record it, from
    before 2026-12-08, is not checked). With another number it would start at another row of its
    data and train at another batch, without a word."""
    st = read_json(os.path.join(path, "state.json"))
    if st.get("world", dist.world()) != dist.world():
        n = st["world"]
        how = f"torchrun --nproc_per_node {n} train.py" if n > 1 else "python train.py (no torchrun)"
        raise CheckpointError(f"{os.path.join(path, 'state.json')}: the run trained with {n} process(es), "
                              f"this one has {dist.world()}; its data position counts batches of "
                              f"--batch_size x {n}: resume it with {how} ... --resume")
    f = os.path.join(path, TRAIN_STATE)
    try:
        t = load_file(f)
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing, so this run cannot resume exactly (AdamW state, RNG); "
                              f"start from its weights with --init_from {path} instead") from None
    except Exception as e:   # safetensors raises its own error types for a cut or damaged file
        raise CheckpointError(f"{f}: not a readable safetensors file ({e}); was the checkpoint cut "
                              f"short? Start from its weights with --init_from {path} instead") from None
    state = {}
    for k, v in t.items():
        if k.startswith("opt."):   # opt.<param index or, from FSDP, parameter name>.<AdamW field>
            pid, name = k[4:].rsplit(".", 1)
            state.setdefault(int(pid) if pid.isdigit() else pid, {})[name] = v
    osd = {"state": state, "param_groups": st["param_groups"]}
    if dist.is_fsdp(model):
        dist.load_full_optimizer(model, opt, osd)
    else:
        opt.load_state_dict(osd)
    # this rank's own streams; a rank the saving run did not have (more ranks now) keeps the
    # stream train.py seeded it with
    if rng_key("torch", dist.rank()) in t:
        torch.set_rng_state(t[rng_key("torch", dist.rank())])
    if rng_key("cuda", dist.rank()) in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t[rng_key("cuda", dist.rank())])
    return st["step"], st["data_pos"]


def rng_key(kind, rank):
    """The name of a rank's RNG state in train_state.safetensors: rank 0's is rng.<kind>, as a
    single process writes it."""
    return f"rng.{kind}" if rank == 0 else f"rng.{kind}.rank{rank}"


def trained_config(ckpt_dir):
    """The config a checkpoint's run trained with (its state.json), {} for one train.py did not write
    (a Hugging Face download, a merged export) or whose state.json cannot be read."""
    try:
        return read_json(os.path.join(ckpt_dir, "state.json"))["config"]
    except (CheckpointError, KeyError):
        return {}


def saved_step(path):
    """The step of the run checkpoint in `path`, 0 if there is none."""
    state = os.path.join(path, "state.json")
    return read_json(state)["step"] if os.path.exists(state) else 0


DATA_FILE = "train_data.json"
# a run of several trainings (a method's driver, Method.main: MetaAligner's stages) keeps its config
# here, in its out_dir beside theirs, since it has no checkpoint of its own for --resume to read
RUN_CONFIG = "run_config.json"


def data_fingerprint(path):
    """{train_data, sha256} of a training data file, kept with every checkpoint of the run."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"train_data": path, "sha256": h.hexdigest()}


def check_same_data(path, now):
    """An exact resume reads the rows the run started with: a changed file is an error."""
    kept = os.path.join(path, DATA_FILE)
    if os.path.exists(kept) and read_json(kept)["sha256"] != now["sha256"]:
        raise CheckpointError(f"{now['train_data']} changed since the run in {path} read it (its sha256 "
                              f"differs from the one in {kept}); an exact --resume needs the same rows: "
                              f"restore the file, or start a new run from its weights with --init_from {path}")

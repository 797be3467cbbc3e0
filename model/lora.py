"""
LoRA (Hu et al. 2021), from scratch: y = x W^T + (alpha / r) * dropout(x) A^T B^T, with W frozen.

    python -m model.lora --adapter out/dpo/ckpt --out merged/     # adapters -> a full HF checkpoint

`apply_lora` swaps the chosen nn.Linear layers of a Transformer for `LoRALinear`s that keep the
*same* frozen weight Parameter under the same name (`q_proj.weight`), so the base still loads and
saves in the Hugging Face layout, and adds `lora_A` (r, in) and `lora_B` (out, r). B starts at zero,
so at initialization the model is exactly the base model. Only A and B require gradients.

With adapters `disabled(model)` the model *is* the base model again: DPO, Self-Judge and OSP use
that as their frozen reference (`AdaptersOff`), so a 7B run never holds a second copy of the weights.
A LoRA checkpoint is `adapter_model.safetensors` + `adapter_config.json` (r, alpha, dropout,
targets, and the base checkpoint's path) + the tokenizer: `save_adapters` writes it, `load_adapters`
reads it onto its base (model.checkpoint.load calls it for such a directory).
"""
import argparse
import contextlib
import math
import os
import shutil

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from model.files import CheckpointError, atomic_write_json, read_json_object, read_safetensors
from model.hf import load_model, parameters_to_save, save_model
from model.tokenizer import Tokenizer

TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r, alpha, dropout):
        super().__init__()
        self.weight = base.weight                    # the base Parameter itself, frozen, same name
        self.weight.requires_grad_(False)
        # in the weight's dtype: F.linear refuses a bfloat16 input against float32 adapters
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))   # as nn.Linear (and the paper's code)
        self.scale, self.dropout, self.enabled = alpha / r, nn.Dropout(dropout), True

    def forward(self, x):
        y = F.linear(x, self.weight)
        if not self.enabled:
            return y
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    def merged_weight(self):
        """(out, in) W + scale * B A in W's dtype, summed in float32 and rounded once."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
        return (self.weight.float() + delta).to(self.weight.dtype)


def parse_targets(spec):
    names = [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        raise ValueError(f"--lora_targets {spec!r}: unknown {bad}; choose from {','.join(TARGETS)}")
    return names


def _slots(model, targets):
    """(parent module, attribute name) of every targeted projection in every block."""
    for layer in model.layers:
        for t in targets:
            parent_name, attr = TARGETS[t].split(".")
            yield getattr(layer, parent_name), attr


def apply_lora(model, r, alpha, dropout=0.0, targets="q,k,v,o,gate,up,down"):
    """Freeze every parameter of `model`, then put trainable adapters on the target projections."""
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, attr in _slots(model, parse_targets(targets)):
        setattr(parent, attr, LoRALinear(getattr(parent, attr), r, alpha, dropout))
    model.lora = dict(r=r, alpha=alpha, dropout=dropout, targets=targets)
    return model


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def disabled(model):
    """Inside the block the model is the frozen base: no adapter term, no adapter dropout."""
    layers = lora_layers(model)
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


class AdaptersOff(nn.Module):
    """The reference policy of a LoRA run: the same module with its adapters switched off for every
    call. Looks like a Transformer to the methods (forward, logits, lm_head, cfg, the KV cache)."""

    def __init__(self, model):
        super().__init__()
        self.__dict__["base"] = model     # not a submodule: its parameters stay the policy's

    def forward(self, *args, **kw):
        with disabled(self.base):
            return self.base(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.__dict__["base"], name)

    def train(self, mode=True):          # generate() toggles eval/train on whatever it samples from
        self.base.train(mode)
        return self

    @property
    def training(self):
        return self.__dict__["base"].training

    @training.setter
    def training(self, _):               # nn.Module.__init__ sets it; the base owns the mode
        pass


def merge(model):
    """Fold every adapter into its weight and put plain nn.Linear layers back. In place."""
    for parent, attr in _slots(model, TARGETS):
        m = getattr(parent, attr)
        if isinstance(m, LoRALinear):
            lin = nn.Linear(m.weight.shape[1], m.weight.shape[0], bias=False, device=m.weight.device,
                            dtype=m.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(m.merged_weight())
            setattr(parent, attr, lin)
    # a plain model again, every weight trainable as from a full checkpoint: apply_lora froze the
    # embeddings and norms too, and a full run started from a LoRA checkpoint would leave them be
    for p in model.parameters():
        p.requires_grad_(True)
    model.__dict__.pop("lora", None)
    return model


# -- LoRA checkpoints: adapters only, on top of a base checkpoint named in adapter_config.json -----
def is_adapter_dir(d):
    return os.path.exists(os.path.join(d, "adapter_config.json"))


def save_adapters(model, d, tokenizer, base, state=None):
    """adapter_model.safetensors (the A and B tensors) + adapter_config.json + the tokenizer."""
    os.makedirs(d, exist_ok=True)
    adapters = {n: t.contiguous().cpu() for n, t in parameters_to_save(model, state).items()
                if ".lora_" in n}
    save_file(adapters, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    atomic_write_json({**model.lora, "base_model": os.path.abspath(base)},
                      os.path.join(d, "adapter_config.json"))
    tokenizer.save(d)


def load_adapters(d, dtype=torch.float32, device="cpu"):
    """The base model (itself merged, if it is a LoRA checkpoint too) with this directory's live
    adapters. Returns (model, cfg)."""
    path = os.path.join(d, "adapter_config.json")
    ac = read_json_object(path)
    for k in ("r", "alpha", "dropout", "targets", "base_model"):
        if k not in ac:
            raise CheckpointError(f"{path}: required field '{k}' is missing")
    base = ac["base_model"]
    if not isinstance(base, str) or not os.path.isdir(base):   # a checkpoint copied without its base
        raise CheckpointError(f"{path}: field 'base_model' is {base!r}, not a directory (the base "
                              f"checkpoint these adapters go on; point it at where that one is now)")
    if is_adapter_dir(base):
        model, _ = load_adapters(base, dtype, device)
        merge(model)
    else:
        model, _ = load_model(base, dtype, device)
    apply_lora(model, ac["r"], ac["alpha"], ac["dropout"], ac["targets"])
    f = os.path.join(d, "adapter_model.safetensors")
    state = {k: v.to(dtype) for k, v in read_safetensors(f).items()}
    want = {n for n, _ in model.named_parameters() if ".lora_" in n}
    if set(state) != want:
        raise CheckpointError(f"{f}: adapter tensors do not match {path} (missing "
                              f"{sorted(want - set(state))[:3]}, unexpected {sorted(set(state) - want)[:3]})")
    model.load_state_dict(state, strict=False)
    return model, model.cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--adapter", required=True, help="a LoRA checkpoint directory (adapter_config.json)")
    ap.add_argument("--out", required=True, help="where to write the merged Hugging Face checkpoint")
    a = ap.parse_args(argv)
    if not is_adapter_dir(a.adapter):
        raise SystemExit(f"error: {a.adapter}/adapter_config.json: file not found (not a LoRA checkpoint)")
    model, cfg = load_adapters(a.adapter)
    save_model(merge(model), a.out, Tokenizer.from_dir(a.adapter, cfg))
    # the JSON a run kept beside its adapters (its config in state.json, a judge's principles.json)
    # travels on, as beside a full checkpoint: sample.py --best_of judges by them. Not the adapters'
    # own file, nor one the merged model just wrote
    for name in sorted(os.listdir(a.adapter)):
        if name.endswith(".json") and name != "adapter_config.json" \
                and not os.path.exists(os.path.join(a.out, name)):
            shutil.copyfile(os.path.join(a.adapter, name), os.path.join(a.out, name))
    print(f"merged {a.adapter} -> {a.out}")


if __name__ == "__main__":
    main()

"""
Checkpoint directories in and out: the one front door the rest of nanoalign uses.

    model, tok = load("checkpoints/smollm2-135m")     # a Hugging Face directory, or LoRA adapters
    save_model(model, "out/ckpt", tok)                # config.json, model.safetensors, tokenizer
    save_adapters(model, "out/ckpt", tok, base)       # a LoRA run: the adapters alone

The pieces live one idea per module, in import order (nothing imports a module below it in this list):
  model/files.py      JSON and safetensors reading, CheckpointError (errors name the file)
  model/hf.py         Hugging Face model directories: config.json <-> ModelConfig, the weights
  model/tokenizer.py  tokenizer.json + the chat template (model/chat_template.py)
  model/lora.py       LoRA layers and LoRA checkpoints (adapters on top of a base directory)
  model/checkpoint.py this file: load() picks the right one
Only safetensors and JSON are ever read; nothing here can run code from a downloaded file.
"""
import torch

from model.files import CheckpointError, atomic_write_json, read_json
from model.hf import config_from_hf, config_to_hf, load_model, save_model
from model.lora import is_adapter_dir, load_adapters, save_adapters
from model.tokenizer import Tokenizer

# what callers import from here (defined in the modules above, re-exported)
__all__ = ["load", "save_model", "save_adapters", "load_model", "load_adapters", "config_from_hf",
           "config_to_hf", "CheckpointError", "read_json", "atomic_write_json", "Tokenizer"]


def load(d, dtype=torch.float32, device="cpu", chat_format=None):
    """(model, tokenizer) of a checkpoint directory: a full Hugging Face one, or a LoRA one on its
    base. chat_format: speak this named fallback format instead of the checkpoint's chat template."""
    model, cfg = load_adapters(d, dtype, device) if is_adapter_dir(d) else load_model(d, dtype, device)
    return model, Tokenizer.from_dir(d, cfg, chat_format)

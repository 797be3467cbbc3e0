"""
Reading and writing the files of a checkpoint: JSON and safetensors, nothing else (never pickle).

Every failure is a `CheckpointError` whose message starts with the file's path, because "size mismatch
for model.layers.3.mlp.up_proj.weight" deep in a torch traceback helps nobody. The other model/
modules read files only through these helpers, so this module imports nothing from model/.
"""
import json
import os

from safetensors import safe_open
from safetensors.torch import load_file


class CheckpointError(Exception):
    """A checkpoint file is missing, malformed or does not fit the model; the message says where."""


def read_text(path):
    """A UTF-8 text file's contents (a JSON file, a chat_template.jinja). A file in another encoding
    (UTF-16, as Windows PowerShell writes by default) names its first bad byte, not a traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except OSError as e:                 # a directory, no permission, ...
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                              f"{e.start}); save it as UTF-8") from None


def read_json(path):
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") \
            from None


def read_json_object(path):
    """A JSON file that must hold an object (config.json, tokenizer_config.json, ...): a list or a
    number there is an error naming the file, not an AttributeError in whoever reads a field."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def read_json_if_exists(path):
    """The parsed object, or {} when there is no such file (optional files: generation_config.json)."""
    return read_json_object(path) if os.path.exists(path) else {}


def atomic_write_json(obj, path):
    """Write to path.tmp, then rename: a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def open_safetensors(path):
    """A lazy handle (safetensors.safe_open) on a .safetensors file: .keys(), .get_tensor(name)."""
    try:
        return safe_open(path, framework="pt")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:  # truncated or corrupt header
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None


def read_safetensors(path):
    """All tensors of a .safetensors file: {name: tensor}."""
    try:
        return load_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None

"""nanoalign: self-judging preference alignment, one readable file per method.

REGISTRY maps every `--method` name to its Method (nanoalign/common.py). A new method is a module
with a METHODS list, added to the import line below.
"""
from nanoalign import dpo, mo_orpo, orpo, sft

REGISTRY = {m.name: m for mod in (sft, orpo, dpo, mo_orpo) for m in mod.METHODS}

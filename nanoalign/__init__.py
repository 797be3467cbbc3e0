"""nanoalign: self-judging preference alignment, one readable file per method.

REGISTRY maps every `--method` name to its Method (nanoalign/common.py). A new method is a module
with a METHODS list, added to the import line below.
"""
from nanoalign import dpo, meta_aligner, mo_orpo, orpo, osp, self_judge, sft

REGISTRY = {m.name: m for mod in (sft, orpo, dpo, mo_orpo, self_judge, osp, meta_aligner)
            for m in mod.METHODS}

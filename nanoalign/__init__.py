"""nanoalign: self-judging preference alignment, one readable file per method.

Importing the package imports every method file; each ends with `register(Method(...))`, which fills
`REGISTRY` (name -> Method, nanoalign/common.py). A new method is a module that registers itself:
add it to the import line below, or import it yourself before calling train.py's functions.
"""
# the order of --method list; each import registers its file's methods
from nanoalign import sft, orpo, dpo, mo_orpo, self_judge, osp, meta_aligner  # noqa: F401, I001
from nanoalign.common import REGISTRY, Method, option, register  # noqa: F401

DEFAULT_METHOD = "orpo"   # train.py's --method when none is given

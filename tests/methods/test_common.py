"""What every method shares (nanoalign/common.py): options and their defaults, the method registry, the
frozen reference copy and its log-probs, and batch_logps under autocast."""
from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from nanoalign.common import reference_logps
from nanoalign.data import make_batch
from nanoalign.testing import tiny_model
from tests.helpers import EXAMPLES, examples, response_token_logps, tiny


# -- the frozen copy and batch_logps ---------------------------------------------------------------
def test_frozen_copy_is_a_separate_model_in_eval_mode_without_grads():
    from nanoalign.common import frozen_copy
    from nanoalign.testing import tiny_model
    m = tiny_model(0).train()
    ref = frozen_copy(m)
    assert m.training and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in m.parameters())
    for (n, p), (n2, q) in zip(m.named_parameters(), ref.named_parameters()):
        assert n == n2 and torch.equal(p, q) and p.data_ptr() != q.data_ptr()


def test_batch_logps_hands_the_kernel_the_autocast_dtype(monkeypatch):
    """Autocast does not reach inside the kernel: under it, batch_logps casts the hidden states and
    the LM head to the autocast dtype itself; outside it, both stay float32."""
    from nanoalign import common
    from nanoalign.data import make_batch
    from nanoalign.testing import tiny_model
    seen, real = [], common.sequence_logprob

    def spy(h, w, *a, **k):
        seen.append((h.dtype, w.dtype))
        return real(h, w, *a, **k)
    monkeypatch.setattr(common, "sequence_logprob", spy)
    model = tiny_model(0)
    batch = make_batch([{"ids": [5, 6, 7, 8], "n_prompt": 1}, {"ids": [5, 9], "n_prompt": 1}], "sft", 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = common.batch_logps(model, batch)
    plain = common.batch_logps(model, batch)
    assert seen == [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]
    assert torch.allclose(low, plain, rtol=0.05, atol=0.05)


row_lengths = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=5)


@settings(max_examples=examples(25), deadline=None)
@given(lengths=row_lengths, seed=st.integers(0, 1000), window=st.sampled_from([None, 3]))
@example(lengths=[(1, 1)], seed=0, window=None).via("a single row of one token")
@example(lengths=[(1, 1), (12, 4), (1, 1), (2, 1)], seed=1, window=3).via("length-1 rows, a window")
def test_batch_logps_runs_a_packed_batch_padding_free_to_the_padded_log_probs_and_gradients(lengths, seed,
                                                                                           window):
    """A packed batch (make_batch(..., packed=True), train.py --packed) runs one forward on its real
    tokens only: one (1, N) row of ids, N the batch's real tokens, with the rows' boundaries
    cu_seqlens and no attention mask; a padded batch runs (B, T) ids with their mask. Against the
    padded batch (GQA, and a sliding window shorter than a row): each row's summed and mean log-prob,
    and the gradients of every weight. (The model's hidden states on packed rows:
    tests/model/test_model.py.)"""
    import inspect
    from nanoalign.common import batch_logps
    model = tiny(seed, sliding_window=window)
    g = torch.Generator().manual_seed(seed)
    ex = [{"ids": torch.randint(3, 101, (n,), generator=g).tolist(), "n_prompt": max(1, min(p, n))}
          for n, p in lengths]
    padded, packed = make_batch(ex, "sft", 0), make_batch(ex, "sft", 0, packed=True)
    n_tokens = [n for n, _ in lengths]
    seen = []

    def record(module, args, kwargs):
        seen.append(inspect.signature(module.forward).bind(*args, **kwargs).arguments)
    params = list(model.parameters())
    up = torch.randn(len(ex), generator=torch.Generator().manual_seed(seed))
    for reduction in ("sum", "mean"):
        handle = model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            seen.clear()
            a, b = batch_logps(model, padded, reduction), batch_logps(model, packed, reduction)
        finally:
            handle.remove()
        pad_call, pack_call = seen
        assert pad_call["idx"].shape == (len(ex), max(n_tokens)) and pad_call.get("cu_seqlens") is None
        assert pack_call["idx"].shape == (1, sum(n_tokens)) and pack_call.get("attn_mask") is None
        assert pack_call["cu_seqlens"].tolist() == [sum(n_tokens[:i]) for i in range(len(ex) + 1)]
        assert b.shape == (len(ex),) and torch.allclose(b, a, rtol=1e-5, atol=1e-5), reduction
        ga = torch.autograd.grad((a * up).sum(), params, allow_unused=True)
        gb = torch.autograd.grad((b * up).sum(), params, allow_unused=True)
        for x, y in zip(ga, gb):
            assert (x is None) == (y is None)
            assert x is None or torch.allclose(y, x, rtol=1e-4, atol=1e-6), reduction


@given(seed=st.integers(0, 1000))
def test_batch_logps_ignores_targets_outside_the_mask(seed):
    """Every loss reads log-probs through batch_logps: a target outside the mask (the prompt's, a
    pad's) changes nothing, one inside it does."""
    from nanoalign.common import batch_logps
    m = tiny(seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 101, (2, 10), generator=g)
    mask = torch.zeros(2, 10)
    mask[:, 4:9] = 1                               # targets 4..8 are response tokens
    batch = {"ids": ids, "attn": torch.ones_like(ids), "targets": torch.roll(ids, -1, 1), "mask": mask}
    a = batch_logps(m, batch)
    t2 = batch["targets"].clone()
    t2[:, :4] = torch.randint(3, 101, (2, 4), generator=g)   # change masked targets only
    b = batch_logps(m, {**batch, "targets": t2})
    assert torch.equal(a, b)
    t3 = batch["targets"].clone()
    t3[:, 5] = (t3[:, 5] + 1) % 101                           # change a response target
    assert not torch.equal(a, batch_logps(m, {**batch, "targets": t3}))


# -- code that runs at import time, run again at test time ------------------------------------------------
# mutmut's workers are forked from a process that has already imported nanoalign, so a function
# called only while a module loads (an option declaration, a method's registration, a loss built by
# a factory) keeps its import-time result under every mutant. These tests call those functions
# again, at test time, and check what they build.
def test_option_is_a_field_with_its_default_and_its_declaration():
    import dataclasses
    from nanoalign.common import option

    @dataclasses.dataclass
    class Opts:
        mode: str = option("b", "which mode", choices=("a", "b"))
        size: int = option(3, "how many", minimum=1)
    f = {x.name: x for x in dataclasses.fields(Opts)}
    assert Opts() == Opts("b", 3)
    none = dict(minimum=None, maximum=None, above=None, below=None)
    assert dict(f["mode"].metadata) == {"help": "which mode", "choices": ("a", "b"), **none}
    assert dict(f["size"].metadata) == {"help": "how many", "choices": None, **{**none, "minimum": 1}}


def test_with_defaults_changes_only_the_named_defaults():
    import dataclasses
    from nanoalign.common import with_defaults
    from nanoalign.mo_orpo import TwoWeights
    New = with_defaults(TwoWeights, "NewWeights", w2=0.05)
    assert New.__name__ == "NewWeights"
    old, new = dataclasses.fields(TwoWeights), dataclasses.fields(New)
    assert [(f.name, f.type, dict(f.metadata)) for f in new] == [(f.name, f.type, dict(f.metadata)) for f in old]
    got = {f.name: f.default for f in new}
    assert got == {**{f.name: f.default for f in old}, "w2": 0.05}
    with pytest.raises(ValueError) as e:
        with_defaults(TwoWeights, "Bad", w3=1.0, w0=2.0)
    assert str(e.value) == "with_defaults(TwoWeights): unknown options ['w0', 'w3']"


def test_register_adds_each_method_once():
    from nanoalign.common import REGISTRY, Method, NoOptions, register
    from nanoalign.mo_orpo import TwoWeights                 # options declared with option(): registered
    a, b = (Method(name=f"_mutants_{k}", reads="sft", eats="sft", unit="n_tokens", loss=None,
                   help="a test method", options=o) for k, o in (("a", NoOptions), ("b", TwoWeights)))
    try:
        register(a, b)
        assert REGISTRY[a.name] is a and REGISTRY[b.name] is b
        with pytest.raises(ValueError, match=r"Method\(name='_mutants_a'\): a method of this name is "
                                             r"registered already \(its help: 'a test method'\)"):
            register(a)
        assert REGISTRY[a.name] is a
    finally:
        REGISTRY.pop(a.name, None), REGISTRY.pop(b.name, None)


@dataclass
class PlainOptions:
    toy_weight: float = 0.5            # a plain field, not option(): no help, no bounds


@pytest.mark.parametrize("kw, says", [
    ({"name": "ipo"}, "Method(name='ipo'): a method of this name is registered already (its help: 'IPO"),
    ({"reads": "preference"}, "reads='preference' is no row kind a file holds; one of sft, pref, prompt"),
    ({"eats": "preference"}, "eats='preference' is no example kind; one of sft, pref, prompt, mo"),
    ({"unit": "examples"}, "unit='examples' is none of n_tokens, n_examples"),
    ({"options": PlainOptions}, "option 'toy_weight' of PlainOptions is a plain field; declare it with "
                                "option(default, help)"),
])
def test_register_refuses_a_method_the_loop_could_not_run_naming_the_field(kw, says):
    """A new method file's slip showed minutes into its first run (after the SFT warm-up), as an error
    far from it ('unknown data kind' for each row, `int + list` in the loop, a bare KeyError: 'help'
    from --help), or never: a copied file that kept name='ipo' replaced IPO under python -O, where
    register's assert was gone."""
    from nanoalign.common import REGISTRY, Method, register
    with pytest.raises(ValueError) as e:
        register(Method(**{"name": "toy_slip", "reads": "sft", "eats": "sft", "unit": "n_tokens", "loss": None,
                           "help": "a toy", **kw}))
    assert says in str(e.value), str(e.value)
    assert "toy_slip" not in REGISTRY and REGISTRY["ipo"].loss.__module__ == "nanoalign.dpo"


# -- the frozen reference's log-probs --------------------------------------------------------------
def rows_of(examples):
    """The batch's rows in order (chosen rows first, then rejected): (ids, n_prompt)."""
    return ([(e["chosen"], e["n_prompt_chosen"]) for e in examples]
            + [(e["rejected"], e["n_prompt_rejected"]) for e in examples])


@pytest.mark.parametrize("reduction", ["default", "sum", "mean"])
def test_reference_logps_sums_by_default_and_honours_mean(reduction):
    ref = tiny_model(seed=3, init_std=0.3)
    batch = make_batch(EXAMPLES, "pref", 0)
    got = reference_logps(ref, batch) if reduction == "default" else reference_logps(ref, batch, reduction)
    per_token = [response_token_logps(ref, ids, n) for ids, n in rows_of(EXAMPLES)]
    agg = (lambda t: t.mean()) if reduction == "mean" else (lambda t: t.sum())
    want = torch.stack([agg(t) for t in per_token])
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4)

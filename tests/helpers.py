"""Small shared test helpers.

Every place where a test builds a method's config and run state, calls a method's loss, installs a
stub judge or looks inside an on-policy step goes through one function here (call_method,
method_config, judge_by_rule, record_on_policy), so an API change is adapted here once.
"""
import contextlib
import dataclasses
import importlib
import types

import torch

from model.model import ModelConfig, Transformer


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine, two threads per op spin and
    cost 10-20x. Used by the tests of tiny models (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(vocab_size=101, dim=48, n_layers=2, hidden_dim=72, max_seq_len=64, n_heads=4,
                n_kv_heads=2, bos_token_id=1, eos_token_id=2)
    return Transformer(ModelConfig(**{**base, **kw}))


def byte_tokenizer():
    """The built-in task's byte-level tokenizer (ids 0-255 = bytes, 256 bos, 257 eos, 258 pad)."""
    try:
        from experiments.task import build_tokenizer
    except ImportError:
        from nanoalign.task import build_tokenizer
    return build_tokenizer()


# -- calling a method's loss the way train.py does ----------------------------------------------------
def method_config(name, **options):
    """The config a method's loss sees: the training config's defaults, the method's own defaults,
    then `options` (each must be a known option)."""
    import train
    from nanoalign import REGISTRY
    m = REGISTRY[name]
    base = dataclasses.asdict(train.TrainConfig())
    base.update(getattr(m, "defaults", None) or {})
    opts = getattr(m, "options", None)
    if opts is not None and dataclasses.is_dataclass(opts):
        base.update(dataclasses.asdict(opts()))
    unknown = set(options) - set(base)
    assert not unknown, f"unknown options for {name}: {sorted(unknown)}"
    base.update(options)
    return types.SimpleNamespace(**base)


def call_method(name, model, batch, tok=None, ref=None, epoch=0.0, epochs=1.0, **options):
    """(loss summed over the micro-batch, metrics) of method `name`, as the training loop calls it.
    tok / ref: the tokenizer and frozen reference model; epoch / epochs: where the run is."""
    from nanoalign import REGISTRY, common
    cfg = method_config(name, **options)
    if hasattr(common, "Run"):
        run = common.Run(tok=tok, ref=ref, epoch=epoch, epochs=epochs)
    else:
        run = {"tok": tok, "ref": ref, "step": 0, "epoch": epoch, "epochs": epochs}
    return REGISTRY[name].loss(model, batch, run, cfg)


# -- the on-policy methods' judge and samples ----------------------------------------------------------
ON_POLICY_MODULES = ("nanoalign.self_judge", "nanoalign.osp")


def judge_by_rule(monkeypatch, rule):
    """Replace the judge probability of the on-policy methods (Self-Judge, OSP) by a known rule:
    rule(prompt_text, a_text, b_text) -> p(a > b). Returns the list of calls, (judge model, items)."""
    calls = []

    def stub(model, tok, t, items, batch_size=64):
        items = list(items)
        calls.append((model, items))
        return torch.tensor([float(rule(it[0], it[1], it[2])) for it in items], dtype=torch.float32)

    for mod in ON_POLICY_MODULES:
        monkeypatch.setattr(importlib.import_module(mod), "swapped_probs", stub)
    return calls


class OnPolicyRecord:
    """What an on-policy step did: samples = [per call: [per prompt: [response ids, ...]]];
    pairs = [per call: (prompt ids, winner ids, loser ids)], the pairs trained on, in batch order;
    sft = [per call: (prompt ids, response ids)] (OSP's RAFT)."""

    def __init__(self):
        self.samples, self.pairs, self.sft = [], [], []


def record_on_policy(monkeypatch):
    rec = OnPolicyRecord()
    for name in ON_POLICY_MODULES:
        mod = importlib.import_module(name)

        def sample(*a, _real=mod.sample_responses, **kw):
            out = _real(*a, **kw)
            rec.samples.append([[list(y) for y in row] for row in out])
            return out

        def pairs(prompts, wins, losses, *a, _real=mod.pair_batch, **kw):
            rec.pairs.append(([list(p) for p in prompts], [list(w) for w in wins],
                              [list(lo) for lo in losses]))
            return _real(prompts, wins, losses, *a, **kw)

        monkeypatch.setattr(mod, "sample_responses", sample)
        monkeypatch.setattr(mod, "pair_batch", pairs)
        if hasattr(mod, "response_batch"):
            def sft(prompts, responses, *a, _real=mod.response_batch, **kw):
                rec.sft.append(([list(p) for p in prompts], [list(r) for r in responses]))
                return _real(prompts, responses, *a, **kw)
            monkeypatch.setattr(mod, "response_batch", sft)
    return rec


# -- log-probs computed without the library ----------------------------------------------------------
@torch.no_grad()
def response_token_logps(model, ids, n_prompt):
    """float64 log p(token | everything before it) for the response tokens ids[n_prompt:] of ONE
    unpadded sequence: the model's logits, log_softmax, gather. No mask, no padding, no kernel."""
    x = torch.tensor([list(ids)])
    logits = model.logits(model(x, torch.ones_like(x))).double()[0]        # (T, V)
    lp = torch.log_softmax(logits, -1)
    pos = torch.arange(n_prompt - 1, len(ids) - 1)                         # predicts ids[pos + 1]
    return lp[pos, x[0, pos + 1]]


# -- kernels -------------------------------------------------------------------------------------------
def kernel_inputs(B, T, d, V, dtype, seed, p_mask=0.6, masked_row=False, device="cpu"):
    """hidden (B, T, d), LM-head weight (V, d) (both requiring grad), targets and a random 0/1 mask."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, d, generator=g).to(dtype).to(device).requires_grad_()
    w = (torch.randn(V, d, generator=g) * d ** -0.5 * 3).to(dtype).to(device).requires_grad_()
    y = torch.randint(0, V, (B, T), generator=g).to(device)
    m = (torch.rand(B, T, generator=g) < p_mask).float().to(device)
    if masked_row:
        m[0] = 0
    return h, w, y, m


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6)).item()


def grads(out, h, w, upstream):
    return torch.autograd.grad((out * upstream).sum(), [h, w])

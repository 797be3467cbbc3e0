"""Small shared test helpers.

Every place where a test builds a method's config and run state, calls a method's loss, installs a
stub judge or looks inside an on-policy step goes through one function here (call_method,
method_config, judge_by_rule, record_on_policy), so an API change is adapted here once.
"""
import contextlib
import dataclasses

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


def examples(n):
    """max_examples for a heavy end-to-end property test: n under the 'ci' profile (25 examples),
    scaled down with a smaller profile (HYPOTHESIS_PROFILE=dev: 10), at least 2."""
    from hypothesis import settings
    return max(2, n * settings().max_examples // 25)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(vocab_size=101, dim=48, n_layers=2, hidden_dim=72, max_seq_len=64, n_heads=4,
                n_kv_heads=2, bos_token_id=1, eos_token_id=2)
    return Transformer(ModelConfig(**{**base, **kw}))


def byte_tokenizer():
    """The built-in task's byte-level tokenizer (ids 0-255 = bytes, 256 bos, 257 eos, 258 pad)."""
    from experiments.task import build_tokenizer
    return build_tokenizer()


# -- calling a method's loss the way train.py does ----------------------------------------------------
def method_config(name, **options):
    """The config a method's loss sees: the shared defaults, the method's own options' defaults,
    then `options` (each must be an option of this method: train.make_config silently drops the
    options of other methods, a test must not)."""
    import train
    cfg = train.make_config(method=name, **options)
    unknown = set(options) - {f.name for f in dataclasses.fields(cfg)}
    assert not unknown, f"{sorted(unknown)} are not options of --method {name}"
    return cfg


def call_method(name, model, batch, tok=None, ref=None, epoch=0.0, epochs=1.0, **options):
    """(loss summed over the micro-batch, metrics) of method `name`, as the training loop calls it.
    tok / ref: the tokenizer and frozen reference model; epoch / epochs: where the run is."""
    from nanoalign import REGISTRY
    from nanoalign.common import Run
    cfg = method_config(name, **options)
    return REGISTRY[name].loss(model, batch, Run(tok=tok, ref=ref, epoch=epoch, epochs=epochs), cfg)


# -- the on-policy methods' judge and samples ----------------------------------------------------------
def judge_by_rule(monkeypatch, rule):
    """Replace the judge of the on-policy methods (Self-Judge, OSP: nanoalign.onpolicy.judge_probs)
    by a known rule: rule(prompt_text, a_text, b_text) -> p(a > b), returned as float32 like a real
    judge's, whatever the likelihood rule and principle combination asked for. Returns the list of
    calls, (judge model, [(prompt, a, b), ...])."""
    from nanoalign import onpolicy
    calls = []

    def stub(judge, tok, template, prompts, a, b, principles=None, likelihood=None, combine=None):
        items = list(zip(prompts, a, b))
        calls.append((judge, items))
        return torch.tensor([float(rule(*it)) for it in items], dtype=torch.float32)

    monkeypatch.setattr(onpolicy, "judge_probs", stub)
    return calls


class OnPolicyRecord:
    """What an on-policy step did: samples = [per call: [per prompt: [response ids, ...]]];
    pairs = [per call: (prompt ids, winner ids, loser ids)], the pairs trained on, in batch order;
    sft = [per call: (prompt ids, response ids)] (OSP's RAFT)."""

    def __init__(self):
        self.samples, self.pairs, self.sft = [], [], []


def record_on_policy(monkeypatch):
    """Record the samples, pairs and SFT rows of the on-policy round (nanoalign.onpolicy)."""
    from nanoalign import onpolicy
    rec = OnPolicyRecord()

    def sample(*a, _real=onpolicy.sample, **kw):
        out = _real(*a, **kw)
        rec.samples.append([[list(y) for y in row] for row in out])
        return out

    def pairs(prompts, wins, losses, *a, _real=onpolicy.pair_batch, **kw):
        rec.pairs.append(([list(p) for p in prompts], [list(w) for w in wins], [list(lo) for lo in losses]))
        return _real(prompts, wins, losses, *a, **kw)

    def sft(prompts, responses, *a, _real=onpolicy.response_batch, **kw):
        rec.sft.append(([list(p) for p in prompts], [list(r) for r in responses]))
        return _real(prompts, responses, *a, **kw)

    monkeypatch.setattr(onpolicy, "sample", sample)
    monkeypatch.setattr(onpolicy, "pair_batch", pairs)
    monkeypatch.setattr(onpolicy, "response_batch", sft)
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

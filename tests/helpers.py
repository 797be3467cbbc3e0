"""Small shared test helpers.

Every place where a test builds a method's config and run state, calls a method's loss, installs a
stub judge or looks inside an on-policy step goes through one function here (call_method,
method_config, judge_by_rule, record_on_policy), so an API change is adapted here once.
"""
import contextlib
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import time
import types

import torch

import train
from model.model import ModelConfig, Transformer
from nanoalign.data import make_batch, tokenize_rows
from nanoalign.testing import tiny_model


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


def spy_on_attention(model, monkeypatch):
    """(seen, into_o), filled while `model` runs: each SDPA call's (q, k, v dtypes, whether autocast
    was on) and the dtypes its layers' o_proj received. For the tests of the dtype attention runs in."""
    import torch.nn.functional as F
    seen, into_o, real = [], set(), F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled(q.device.type)))
        return real(q, k, v, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    for layer in model.layers:
        layer.self_attn.o_proj.register_forward_pre_hook(lambda mod, a: into_o.add(a[0].dtype))
    return seen, into_o


def sharp(m):
    """m with its weights at std 0.2 rather than the init's 0.02 (norms kept at 1), so attention is
    peaked: at 0.02 it is nearly uniform, and a RoPE position off by one changed no greedy token."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    return m.eval()


def greedy_equal_up_to_ties(model, prompt, a, b, tol=1e-5):
    """Two greedy continuations `a`, `b` of `prompt` (token lists) by `model` are the same, or part
    at a step where the model's two best logits tie within `tol`: there float rounding (another batch
    shape, a left pad) decides the argmax either way. 8 new tokens of a random tiny model gave
    logits 0.26130080 and 0.26130083 once. A masking or position bug moves logits by far more."""
    for t, (x, y) in enumerate(zip(a, b)):
        if x != y:
            with torch.no_grad():
                lg = model.logits(model(torch.tensor([prompt + a[:t]])))[0, -1]     # (V,)
            return bool(abs(lg[x] - lg[y]) < tol and lg.max() - min(lg[x], lg[y]) < tol)
    return len(a) == len(b)


def byte_tokenizer():
    """The built-in task's byte-level tokenizer (ids 0-255 = bytes, 256 bos, 257 eos, 258 pad)."""
    from nanoalign.tasks.arith import build_tokenizer
    return build_tokenizer()


# -- calling a method's loss the way train.py does ----------------------------------------------------
def method_config(name, **options):
    """The config a method's loss sees: the shared defaults, the method's own options' defaults,
    then `options`, each an option of this method (train.make_config refuses another method's, as
    the command line does; own_options keeps a method's own of a set meant for several)."""
    import train
    return train.make_config(method=name, **options)


def own_options(name, **options):
    """Those of `options` that are options of method `name` (a config refuses another method's): one
    set of settings for a test over every method, e.g. the on-policy methods' sampling length."""
    have = {f.name for f in dataclasses.fields(train.make_config(method=name))}
    return {k: v for k, v in options.items() if k in have}


def call_method(name, model, batch, tok=None, ref=None, epoch=0.0, epochs=1.0, **options):
    """(loss summed over the micro-batch, metrics) of method `name`, as the training loop calls it:
    a method with a rollout first turns the batch of prompts into its pairs, with no gradients.
    tok / ref: the tokenizer and frozen reference model; epoch / epochs: where the run is."""
    from nanoalign import REGISTRY
    from nanoalign.common import Run
    cfg = method_config(name, **options)
    return method_step(REGISTRY[name], model, batch, Run(tok=tok, ref=ref, epoch=epoch, epochs=epochs), cfg)


def method_step(method, model, batch, run, cfg):
    """(loss, metrics) of one micro-batch in the loop's order: a method with a rollout first turns
    the batch of prompts into the batch its loss eats, with no gradients; then its loss."""
    if not method.rollout:
        return method.loss(model, batch, run, cfg)
    with torch.no_grad():
        batch, rolled = method.rollout(model, batch, run, cfg)
    loss, mets = method.loss(model, batch, run, cfg)
    return loss, {**rolled, **mets}


# -- the on-policy methods' judge and samples ----------------------------------------------------------
def judge_by_rule(monkeypatch, rule):
    """Replace the judge of the on-policy methods (Self-Judge, OSP: nanoalign.onpolicy.judge_probs)
    by a known rule: rule(prompt_text, a_text, b_text) -> p(a > b), returned as float32 like a real
    judge's, whatever the likelihood rule and principle combination asked for. Returns the list of
    calls, (judge model, [(prompt, a, b), ...], the principles it was asked to judge under)."""
    from nanoalign import onpolicy
    calls = []

    def stub(judge, tok, template, prompts, a, b, principles=None, likelihood=None, combine=None):
        items = list(zip(prompts, a, b))
        calls.append((judge, items, principles))
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


# -- TOK: the built-in task's byte-level tokenizer; a tiny model's settings for its ids --------------
TOK = byte_tokenizer()
# the vocabulary of a model over TOK's ids: its special tokens where TOK numbers them (tiny_model(seed,
# **BYTE_VOCAB, ...))
BYTE_VOCAB = dict(vocab_size=262, bos_token_id=256, eos_token_id=257, pad_token_id=258)


# -- a stub judge whose logits are a known function of what it read (RuleJudge) --------------------
ID_A, ID_B = TOK.encode("A")[0], TOK.encode("B")[0]
SLOPE, BIAS, OFF_CUE = 0.1, 0.75, -4.0   # small enough that p stays below 1 in float32
VOCAB = 262
CUE = re.compile(r"Better( for '[^']*')?: $")


class RuleJudge(torch.nn.Module):
    """The interface of model.model.Transformer (forward(ids, attn) -> hidden, logits(hidden),
    lm_head.weight, cfg.eos_ids) with known behaviour; hidden states are the two label logits."""

    def __init__(self, vocab=VOCAB):
        super().__init__()
        self.lm_head = torch.nn.Linear(2, vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight.zero_()
            self.lm_head.weight[ID_A, 0] = 1.0
            self.lm_head.weight[ID_B, 1] = 1.0
        self.cfg = types.SimpleNamespace(eos_ids=[TOK.eos_id], max_seq_len=1 << 20)

    @staticmethod
    def judgment(text):
        """(logit A, logit B) after reading `text` (bytes as latin-1 characters)."""
        cue = CUE.search(text)
        if not cue:
            return OFF_CUE, 0.0
        a0 = text.index("\nA: ") + 4
        b0 = text.rindex("\nB: ")
        end = text.rindex("\nChoose")
        s = sign(cue.group(1)) * SLOPE * ((b0 - a0) - (end - b0 - 4))
        return s + BIAS, -s

    def forward(self, ids, attn=None):
        attn = torch.ones_like(ids) if attn is None else attn
        out = torch.zeros(ids.shape[0], ids.shape[1], 2)
        for b in range(ids.shape[0]):
            text = ""
            for t in range(ids.shape[1]):
                if attn[b, t]:                                   # padding is not read
                    i = int(ids[b, t])
                    text += chr(i) if i < 256 else "\0"          # special tokens: one placeholder
                out[b, t] = torch.tensor(self.judgment(text))
        return out

    def logits(self, h):
        return self.lm_head(h).float()


def sign(principle):
    return -1.0 if principle and "short" in principle else 1.0


JUDGE = RuleJudge()


# -- the methods' equations written out in float64; an on-policy setup with a known judge ----------
RTOL, ATOL = 1e-4, 1e-5


def close(got, want, rtol=RTOL, atol=ATOL):
    return abs(got - want) <= atol + rtol * abs(want)


def assert_metrics(got, want):
    for k, v in want.items():
        assert k in got, f"metric {k} missing"
        assert close(got[k], v), f"metric {k}: {got[k]} != {v}"


def lp_sum(model, ids, n_prompt):
    return response_token_logps(model, ids, n_prompt).sum().item()


def lp_mean(model, ids, n_prompt):
    return response_token_logps(model, ids, n_prompt).mean().item()


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def log_odds(a):
    """ORPO eq. 2: log(p / (1 - p)) of a mean log-prob a < 0."""
    return a - math.log(-math.expm1(a))


def mean(xs):
    return sum(xs) / len(xs)


def swapped(examples):
    """The same examples with chosen and rejected exchanged."""
    return [{"chosen": e["rejected"], "n_prompt_chosen": e["n_prompt_rejected"],
             "rejected": e["chosen"], "n_prompt_rejected": e["n_prompt_chosen"]} for e in examples]


def orpo_terms(model, examples, lam, prompt_loss=False):
    """ORPO eq. 1-4 per example: L_SFT, L_OR, z, logp_w, logp_l and L = L_SFT + lam * L_OR."""
    out = []
    for e in examples:
        a = lp_mean(model, e["chosen"], e["n_prompt_chosen"])
        b = lp_mean(model, e["rejected"], e["n_prompt_rejected"])
        z = log_odds(a) - log_odds(b)                            # eq. 3
        l_or = -log_sigmoid(z)                                   # eq. 4
        # eq. 1's NLL: the chosen response's tokens (with prompt_loss: every token after the first)
        l_sft = -(lp_mean(model, e["chosen"], 1) if prompt_loss else a)
        out.append({"L_SFT": l_sft, "L_OR": l_or, "z": z, "logp_w": a, "logp_l": b,
                    "L": l_sft + lam * l_or})
    return out


def score(y):
    """The stub judge's taste: longer responses, ties broken by a fixed function of the text."""
    return len(y) + (sum(map(ord, y)) % 997) / 1000


def longer_rule(prompt, a, b):
    """p(a > b) = sigmoid((score(a) - score(b)) / 10): a soft, antisymmetric preference for longer
    text (gentle enough not to round to 1 for a sample against the blank), rounded to float32 as a
    real judge's probabilities are (so ties and p = 1/2 read the same here)."""
    return torch.tensor(1 / (1 + math.exp(-(score(a) - score(b)) / 10)), dtype=torch.float32).item()


PROMPTS = ["What is 3 + 4?", "What is 12 + 9?", "What is 7 + 15?", "What is 1 + 1?"]


def on_policy_setup(seed, n_prompts):
    tok = byte_tokenizer()
    kw = dict(BYTE_VOCAB, max_seq_len=64, init_std=0.3)
    policy, ref = tiny_model(seed, **kw), tiny_model(seed + 1, **kw)
    ex, _ = tokenize_rows([{"prompt": p} for p in PROMPTS[:n_prompts]], tok, "prompt", 64)
    return tok, policy, ref, make_batch(ex, "prompt", tok.pad_id)


def pair_h(policy, ref, prompt, w, lo):
    n = len(prompt)
    return (lp_sum(policy, prompt + w, n) - lp_sum(ref, prompt + w, n)) - \
        (lp_sum(policy, prompt + lo, n) - lp_sum(ref, prompt + lo, n))


# -- a small model with room for the judge prompts -------------------------------------------------
def small_model(seed=0):  # test_train's small model with room for the judge prompts
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=264, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   hidden_dim=48, max_seq_len=512, tie_embeddings=True,
                                   bos_token_id=256, eos_token_id=257, pad_token_id=258))


# -- the repository's paths; a short run's config, its gradients -----------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


def run_cfg(tmp_path, **kw):
    base = dict(method="orpo", init_from="scratch", model_preset="tiny", out_dir=str(tmp_path / "run"),
                max_steps=6, batch_size=4, grad_accum=2, n_train=64, n_val=16, log_every=1,
                eval_every=3, eval_batches=1, final_eval=False, warmup_steps=2, lr=1e-3, seed=3)
    return train.make_config(**{**base, **kw})


# -- random token ids ------------------------------------------------------------------------------
def ids(seed, B=3, T=11, V=101):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# -- principles; a short run from the command line -------------------------------------------------
PRINCIPLES = [("correct", "the sum is right"), ("concise", "short"), ("format", "ends with a period")]


def _short_run(tmp_path, capsys, **kw):
    argv = ["--method", "sft", "--init_from", "scratch", "--max_steps", "2", "--batch_size", "4",
            "--out_dir", str(tmp_path / "run"), "--final_eval", "false", "--log_every", "1"]
    if "train_data" not in kw:        # the built-in task's rows; a file's are all read (cli.py refuses it)
        argv += ["--n_train", "16"]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    train.main(argv)
    return capsys.readouterr().out


# -- labelled preference rows; an off-policy setup, a task's stand-in, its judge rule --------------
def pref_rows(n=2):
    return [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": "no", "_where": f"f:{i + 1}",
             "labels": {"correct": "1", "format": "equal"},
             "objectives": {"correct": "the sum is right", "format": "ends with a period"}} for i in range(n)]


def offpolicy_setup():
    from nanoalign.data import make_batch, tokenize_rows
    from nanoalign.testing import tiny_model
    tok = byte_tokenizer()
    kw = dict(BYTE_VOCAB, max_seq_len=64)
    ex, _ = tokenize_rows([{"prompt": p} for p in ("What is 1 + 2?", "What is 3 + 4?")], tok, "prompt", 64)
    return tok, tiny_model(0, **kw), tiny_model(1, **kw), tiny_model(2, **kw), make_batch(ex, "prompt", tok.pad_id)


class OracleTask:
    """A built-in task's stand-in for metrics: the oracle prefers the text with the larger score."""
    @staticmethod
    def score(y):
        return len(y) + sum(map(ord, y)) / 1e5

    def oracle_scores(self, prompt, response):
        return {"overall": self.score(response)}


def by_score(x, a, b):
    return float(OracleTask.score(a) > OracleTask.score(b))


# -- a MetaAligner row: per-objective labels ---------------------------------------------------------
def meta_row(labels, y1="good", y2="bad", where=None):
    """A row of MetaAligner's data: the prompt 'q?', y1 chosen and y2 rejected, `labels` {objective:
    1|2|equal} with each labelled objective described as 'marker <name>'; `where`: its file and line."""
    r = {"prompt": "q?", "chosen": y1, "rejected": y2, "labels": labels,
         "objectives": {k: f"marker {k}" for k in labels}}
    if where:
        r["_where"] = where
    return r


# -- two preference examples, as token ids ---------------------------------------------------------
EXAMPLES = [  # prompt + chosen, prompt + rejected: token ids, prompts of 2-4 tokens, unequal lengths
    {"chosen": [5, 6, 7, 8, 9], "n_prompt_chosen": 2, "rejected": [5, 6, 10], "n_prompt_rejected": 2},
    {"chosen": [11, 12, 13, 14, 15, 16, 17], "n_prompt_chosen": 4,
     "rejected": [11, 12, 13, 14, 18, 19], "n_prompt_rejected": 4},
]


# -- Ctrl-C while a program starts ------------------------------------------------------------------
def ctrl_c_while_starting(prog, *args):
    """(exit code, stderr) of `python prog args` sent Ctrl-C 0.3 s after it starts: while torch is
    still importing (seconds), before the program's own Ctrl-C handling exists. Either way, the
    answer must be one line and exit code 130."""
    p = subprocess.Popen([sys.executable, prog, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    return p.wait(timeout=120), p.stderr.read()

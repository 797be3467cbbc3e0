"""The training path's fast modes (train.py --packed, --dtype): padding-free batches give the padded
batch's training step, and every method's run its losses; bf16 autocast stays close to float64 and
really runs in bf16, each forward of every method's run; the automatic choices follow the model size
and the device. (Under a packed batch, the model's hidden states are tested in
tests/model/test_model.py, batch_logps's log-probs and gradients in tests/methods/test_common.py.)"""
import dataclasses
import functools
import math
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nanoalign import REGISTRY
from tests.helpers import examples, one_thread, tiny


# -- the training path's fast modes: padding-free batches and bf16 autocast (train.py --packed, --dtype)
def _rows(lengths, seed, room=0):
    """SFT examples of the given (length, prompt length) with random ids: a prompt of at least 1
    token, leaving `room` response tokens where the row is long enough."""
    g = torch.Generator().manual_seed(seed)
    return [{"ids": torch.randint(3, 101, (n,), generator=g).tolist(), "n_prompt": max(1, min(p, n - room))}
            for n, p in lengths]


def _pref(lengths, seed):
    """Preference examples: chosen and rejected rows of the given lengths, prompts shared."""
    rows = _rows(lengths + lengths[::-1], seed, room=1)
    n = len(lengths)
    return [{"chosen": c["ids"], "n_prompt_chosen": c["n_prompt"], "rejected": r["ids"],
             "n_prompt_rejected": r["n_prompt"]} for c, r in zip(rows[:n], rows[n:])]


def _step(name, model, ex, kind, **options):
    """(loss, gradients) of one accumulate_gradients call, as train.py makes and runs a micro-batch."""
    import train
    from nanoalign import REGISTRY
    from nanoalign.common import Run, frozen_copy
    from nanoalign.data import make_batch
    from tests.helpers import method_config
    cfg = method_config(name, **options)
    model.zero_grad(set_to_none=True)
    run = Run(tok=None, ref=frozen_copy(model) if REGISTRY[name].needs_ref else None)
    batch = make_batch(ex, kind, 0, packed=train.packed_batches(cfg, model))
    loss, _ = train.accumulate_gradients(model, REGISTRY[name], [batch], run, cfg)
    return loss, [p.grad.clone() for p in model.parameters()]


METHODS = [("sft", "sft", {}), ("orpo", "pref", {"prompt_loss": True}), ("dpo", "pref", {}),
           ("conjoined", "mo", {})]


def _examples(kind, lengths, seed):
    if kind == "sft":
        return _rows(lengths, seed, room=1)       # every row trains on at least one token
    pref = _pref(lengths, seed)
    return pref if kind == "pref" else [{"align": a, "sj": s} for a, s in zip(pref, _pref(lengths, seed + 1))]


@pytest.mark.parametrize("name,kind,options", METHODS)
@settings(max_examples=examples(8), deadline=None)
@given(lengths=st.lists(st.tuples(st.integers(2, 12), st.integers(1, 11)), min_size=1, max_size=3),
       seed=st.integers(0, 1000))
def test_training_step_on_packed_batches_equals_the_padded_one(name, kind, options, lengths, seed):
    """train.py --packed true against --packed false, through the training path (make_batch, the
    method's loss, accumulate_gradients): the same loss and gradients. ORPO's --prompt_loss reads a
    mask built in the padded layout, which the packed batch must read at the right tokens."""
    with one_thread():
        ex = _examples(kind, lengths, seed)
        a = _step(name, tiny(seed), ex, kind, packed="false", **options)
        b = _step(name, tiny(seed), ex, kind, packed="true", **options)
    assert abs(a[0] - b[0]) <= 1e-5 * max(1.0, abs(a[0]))
    for x, y in zip(a[1], b[1]):
        assert torch.allclose(y, x, rtol=1e-4, atol=1e-6)


# bf16 keeps 8 significant bits (relative rounding 2^-9): through a 2-layer model, a loss within 2%
# and gradients within 10% of float64's; float32 within 1e-5 and 1e-4
DTYPE_TOL = {"float32": (1e-5, 1e-4), "bfloat16": (2e-2, 1e-1)}


@pytest.mark.parametrize("name,kind,options", METHODS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@settings(max_examples=examples(5), deadline=None)
@given(seed=st.integers(0, 1000))
def test_bf16_autocast_losses_and_gradients_stay_close_to_float64(name, kind, options, dtype, seed):
    """--dtype through the training path, against the same step of a float64 copy of the model: the
    loss and every gradient within the dtype's tolerance (relative to the largest entry). The
    weights and their gradients stay float32 under autocast (AdamW's state is made from them)."""
    with one_thread():
        ex = _examples(kind, [(9, 4), (6, 2), (11, 5)], seed)
        ref_loss, ref_grads = _step(name, tiny(seed).double(), ex, kind, dtype="float32", **options)
        model = tiny(seed)
        loss, grads = _step(name, model, ex, kind, dtype=dtype, **options)
    tol_loss, tol_grad = DTYPE_TOL[dtype]
    assert abs(loss - ref_loss) <= tol_loss * max(1.0, abs(ref_loss))
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        assert (g.double() - r).abs().max() <= tol_grad * r.abs().max().clamp(min=1e-3)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_autocast_really_runs_in_bf16():
    """The bf16 setting is not float32 in disguise: its loss differs from float32's (and the float32
    one from float64's by far less)."""
    with one_thread():
        ex = _examples("pref", [(9, 4), (6, 2)], 0)
        f64 = _step("orpo", tiny(0).double(), ex, "pref", dtype="float32")[0]
        f32 = _step("orpo", tiny(0), ex, "pref", dtype="float32")[0]
        bf16 = _step("orpo", tiny(0), ex, "pref", dtype="bfloat16")[0]
    assert abs(bf16 - f64) > 10 * abs(f32 - f64)


def _bits(x):
    return x.view(torch.int32)


@settings(max_examples=examples(50), deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**31 - 1), st.booleans()), min_size=1, max_size=64))
def test_weights_on_bf16_ties_move_onto_the_value_bf16_reads_and_no_other_weight_moves(words):
    """compute.off_bf16_ties: a float32 weight exactly halfway between two bf16 values (its low 16
    bits 0x8000) becomes the one bf16 rounds it to, so every bf16 matmul reads what it read before;
    every other weight keeps its bits. Random finite float32 bit patterns, some forced onto ties."""
    from nanoalign.compute import off_bf16_ties
    raw = [(w & 0xFFFF0000) | 0x8000 if tie else w for w, tie in words]
    raw = [w if (w >> 23) & 0xFF < 0xFE else w & ~(0x40 << 23) for w in raw]   # finite, and no tie rounds to inf
    x = torch.tensor(raw, dtype=torch.int32).view(torch.float32) * torch.tensor(
        [(-1) ** i for i in range(len(raw))])                       # both signs
    model = torch.nn.Linear(len(raw), 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(x[None])
    off_bf16_ties(model.parameters())
    y = model.weight.detach()[0]
    tie = (_bits(x) & 0xFFFF) == 0x8000
    assert torch.equal(y.bfloat16().view(torch.int16), x.bfloat16().view(torch.int16))
    assert torch.equal(_bits(y)[~tie], _bits(x)[~tie])
    assert ((_bits(y)[tie] & 0xFFFF) == 0).all()


def test_a_start_with_weights_on_bf16_ties_moves_in_bf16_no_further_than_its_rate(tmp_path):
    """A float16 checkpoint (1 in 8 weights exactly halfway between two bf16 values) or a dequantized
    GGUF (SmolLM2-135M-Instruct's Q4_1: 8.1%) trained under bf16 autocast: the first update of any
    size, however small the rate, tipped those weights a whole bf16 step toward the gradient; one ORPO
    step at a rate of 5e-8 took SmolLM2's held-out loss from 2.94 to 2.06. The run's start (train.
    init_model) now has them on the value its forward reads: a step at 1e-9 changes no bf16 value
    of a weight above 1e-4, whose bf16 neighbours are 2e-7 or more away."""
    import train
    from model.checkpoint import load
    from model.hf import save_model
    from tests.helpers import run_cfg
    with one_thread():
        train.train(run_cfg(tmp_path / "a", method="sft", max_steps=1, dtype="float32"))
        model, tok = load(str(tmp_path / "a" / "run" / "ckpt"))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())                       # a float16 checkpoint's weights
        start = tmp_path / "fp16"
        save_model(model, str(start), tokenizer=tok)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        tied = sum(((_bits(p) & 0xFFFF) == 0x8000).sum().item() for p in before.values())
        assert tied > 0.1 * sum(p.numel() for p in before.values())
        train.train(run_cfg(tmp_path / "b", method="sft", init_from=str(start), max_steps=1, warmup_steps=1,
                            grad_accum=1, lr=1e-9, dtype="bfloat16"))
        after, _ = load(str(tmp_path / "b" / "run" / "ckpt"))
    for n, p in after.named_parameters():
        big = before[n].abs() > 1e-4
        assert torch.equal(p.detach()[big].bfloat16(), before[n][big].bfloat16()), n


# -- the same modes through the whole loop, for every method ----------------------------------------
LOOP_METHODS = [m for m in REGISTRY if not REGISTRY[m].main]   # MetaAligner's chain: train() per stage


def _run_losses(out, name, **modes):
    """The losses of a 2-step run of `name` through train.train: 2 micro-batches of 2 a step, an
    on-policy method's rollouts of 4 new tokens, an off-policy method's held-out loss at the end."""
    import train
    from tests.helpers import own_options, run_cfg
    cfg = run_cfg(out, method=name, max_steps=2, batch_size=2, n_train=8, n_val=4, eval_every=0,
                  **own_options(name, gen_max_tokens=4, osp_k=4), **modes)
    with one_thread():
        return train.train(cfg)


@pytest.fixture(scope="module")
def float32_padded(tmp_path_factory):
    """name -> the losses of its run in float32 on padded batches, run once for the tests below."""
    return functools.cache(lambda name: _run_losses(tmp_path_factory.mktemp(name), name, dtype="float32",
                                                    packed="false"))


@pytest.mark.parametrize("name", LOOP_METHODS)
def test_every_methods_run_on_padding_free_batches_gives_the_padded_runs_losses(name, tmp_path, monkeypatch,
                                                                                float32_padded):
    """--packed true through the loop: every batch a method's loss eats (the held-out ones too) is
    padding-free, and the run's losses are the padded run's. The loop makes each micro-batch in the
    layout asked for, but an on-policy method's rollout makes the batch its loss eats and must ask
    for the layout itself (onpolicy.pair_batch's `packed`): had it not, its updates would run
    padded under --packed, and no loss would tell."""
    want, layouts, real = float32_padded(name), [], REGISTRY[name].loss

    def loss(model, batch, run, cfg):
        layouts.extend("packed" in b for b in (batch, *batch.values()) if isinstance(b, dict) and "attn" in b)
        return real(model, batch, run, cfg)
    monkeypatch.setattr(REGISTRY[name], "loss", loss)
    got = _run_losses(tmp_path, name, dtype="float32", packed="true")
    assert layouts and all(layouts)
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", LOOP_METHODS)
def test_every_methods_run_in_bf16_runs_each_forward_in_bf16_and_stays_close(name, tmp_path, monkeypatch,
                                                                             float32_padded):
    """--dtype bfloat16 through the loop: each forward of the run is under bf16 autocast, the loss's
    and the reference's (in accumulate_gradients), an on-policy method's sampling and judging (in
    its rollout, which runs outside accumulate_gradients and sets up its own) and the held-out
    loss's; the losses are finite, and within bf16's tolerance of float32's where the batches are
    the data's (an on-policy method trains on its own samples, which bf16 may draw otherwise)."""
    from model.model import Transformer
    want, in_bf16, real = float32_padded(name), [], Transformer.forward

    def forward(self, *a, **kw):
        in_bf16.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real(self, *a, **kw)
    monkeypatch.setattr(Transformer, "forward", forward)
    got = _run_losses(tmp_path, name, dtype="bfloat16")
    assert in_bf16 and all(in_bf16)
    assert all(math.isfinite(x) for x in got)
    if not REGISTRY[name].rollout:
        assert got == pytest.approx(want, rel=DTYPE_TOL["bfloat16"][0])


def test_auto_dtype_packing_and_checkpointing_follow_the_model_size_and_the_cpu(monkeypatch):
    """'auto': float32, padded and no checkpointing for a small model (the built-in task's); for one
    of FAST_MIN_PARAMS or more, packed, every other block checkpointed, and bf16 on a CPU whose bf16
    matmuls are the faster, float32 on another; an explicit choice wins."""
    from nanoalign import compute
    from model.model import Transformer, config_from_preset
    from tests.helpers import method_config
    with torch.device("meta"):
        big = Transformer(config_from_preset("smollm2-135m"))
    small, auto = tiny(0), method_config("orpo")
    assert big.num_params() >= compute.FAST_MIN_PARAMS > small.num_params()
    for has_bf16 in (True, False):
        monkeypatch.setattr(compute, "cpu_bf16_trains_faster", lambda: has_bf16)
        monkeypatch.setattr(compute, "cpu_has_bf16", lambda: not has_bf16)   # decoding's rule, not this
        assert compute.autocast_dtype(auto, small) is None and not compute.packed_batches(auto, small)
        assert compute.autocast_dtype(auto, big) == (torch.bfloat16 if has_bf16 else None)
        assert compute.packed_batches(auto, big)
        assert compute.autocast_dtype(method_config("orpo", dtype="bfloat16"), small) == torch.bfloat16
        assert compute.autocast_dtype(method_config("orpo", dtype="float32"), big) is None
        assert compute.packed_batches(method_config("orpo", packed="true"), small)
        assert not compute.packed_batches(method_config("orpo", packed="false"), big)
        assert (compute.checkpoint_every(auto, small), compute.checkpoint_every(auto, big)) == (0, 2)
        assert compute.compute_of(auto, small) == "float32, padded"          # train.py's start line
        assert compute.compute_of(auto, big) == ("bfloat16" if has_bf16 else "float32") + \
            ", packed, grad checkpointing half"
        assert compute.compute_of(method_config("orpo", grad_checkpoint="true", packed="true",
                                               dtype="bfloat16"), small) == \
            "bfloat16, packed, grad checkpointing"
        for choice, every in (("false", 0), ("half", 2), ("true", 1)):
            for m in (small, big):
                assert compute.checkpoint_every(method_config("orpo", grad_checkpoint=choice), m) == every


def test_lr_auto_is_the_built_in_tasks_rate_for_a_small_model_and_trls_for_a_pretrained_one(monkeypatch):
    """--lr 0 (the default): 3e-4 for a model under FAST_MIN_PARAMS (the built-in tasks' tiny one);
    for a larger (pretrained) one TRL's defaults, 2e-5 for methods that train on SFT examples and 1e-6
    for the preference losses. It was 3e-4 for every model: a full fine-tune of a pretrained model at
    that rate is wrecked within steps. An lr that is given wins."""
    from nanoalign import REGISTRY, compute
    from tests.helpers import method_config
    small, auto, dpo, sft = tiny(0), method_config("dpo"), REGISTRY["dpo"], REGISTRY["sft"]
    assert auto.lr == 0
    assert compute.peak_lr(auto, small, dpo) == compute.peak_lr(auto, small, sft) == 3e-4
    monkeypatch.setattr(compute, "FAST_MIN_PARAMS", 0)          # the tiny model counts as a large one
    assert compute.peak_lr(auto, small, dpo) == 1e-6 and compute.peak_lr(auto, small, sft) == 2e-5
    assert compute.peak_lr(method_config("dpo", lr=5e-5), small, dpo) == 5e-5


# TRL's default learning rates, read from its source (trl 1.16.0, the version docs/performance.md
# measures against): trl/trainer/sft_config.py, trl/trainer/dpo_config.py,
# trl/experimental/orpo/orpo_config.py, trl/experimental/online_dpo/online_dpo_config.py
TRL_SFT, TRL_DPO, TRL_ORPO, TRL_ONLINE_DPO = 2e-5, 1e-6, 1e-6, 5e-7
# each method (and option that changes what its loss is) with the TRL trainer that trains that loss
TRL_RATE = [
    ("sft", {}, TRL_SFT), ("jsft", {}, TRL_SFT), ("pref_aug", {}, TRL_SFT), ("meta_aligner", {}, TRL_SFT),
    ("osp", {"pairing": "raft"}, TRL_SFT),                  # RAFT: SFT on each prompt's best sample
    ("dpo", {}, TRL_DPO), ("ipo", {}, TRL_DPO),             # DPOConfig(loss_type="ipo") for IPO
    ("self_judge_offpolicy", {}, TRL_DPO),                  # its pairs are sampled once: offline DPO
    ("orpo", {}, TRL_ORPO), ("scalarization", {}, TRL_ORPO), ("conjoined", {}, TRL_ORPO),
    ("conditional", {}, TRL_ORPO), ("epoch_by_epoch", {}, TRL_ORPO), ("task_by_task", {}, TRL_ORPO),
    ("sj_sft", {}, TRL_ORPO),                               # ORPO on the pairs, SFT on the judgements
    # on-policy: DPO (or a DPO-family loss) on the policy's own samples, judged as it trains
    ("self_judge", {}, TRL_ONLINE_DPO), ("self_judge", {"judge": "policy"}, TRL_ONLINE_DPO),
    ("osp", {}, TRL_ONLINE_DPO), ("osp", {"osp_loss": "dpo"}, TRL_ONLINE_DPO),
    ("osp", {"osp_loss": "ipo", "pairing": "random"}, TRL_ONLINE_DPO),
]


def _auto_lr(name, model, **options):
    from nanoalign import REGISTRY, compute
    from tests.helpers import method_config
    return compute.peak_lr(method_config(name, **options), model, REGISTRY[name])


@pytest.mark.parametrize("name, options, trl", TRL_RATE, ids=lambda x: str(x) if x else "")
def test_lr_auto_for_a_pretrained_model_is_trls_default_for_what_the_loss_is(monkeypatch, name, options, trl):
    """--lr 0 on a model of FAST_MIN_PARAMS or more: the default rate of the TRL trainer of the same
    loss. It went by the example kind alone, so `osp --pairing raft` (an SFT loss) got DPO's 1e-6
    instead of SFTConfig's 2e-5, and Self-Judge's on-policy DPO got DPOConfig's 1e-6 instead of
    OnlineDPOConfig's 5e-7. A model under FAST_MIN_PARAMS (the arith task's) trains at 3e-4 whatever
    the method: every documented built-in table was made at that rate."""
    from nanoalign import compute
    small = tiny(0)
    assert _auto_lr(name, small, **options) == 3e-4
    monkeypatch.setattr(compute, "FAST_MIN_PARAMS", 0)          # the tiny model counts as a large one
    assert _auto_lr(name, small, **options) == trl


def test_every_method_has_its_trl_rate_in_the_table_above():
    from nanoalign import REGISTRY
    assert set(REGISTRY) == {name for name, _, _ in TRL_RATE}


def lr_help_rates(text):
    """What the --lr help says --lr 0 gives: (the small model's rate, {(method, ((option, value),
    ...)): rate} for each method it names in a rate's parentheses, e.g. '2e-5 for SFT (sft, osp
    --pairing raft)', and the rate it gives 'every other method')."""
    text = " ".join(text.split())
    small = float(re.search(r"0 = auto: (\S+) for a model under", text).group(1))
    named, other = {}, None
    for rate, what, inside in re.findall(r"(\d\S*) for ([^(;]*)\(([^)]*)\)", text):
        if "every other" in what:
            other = float(rate)
        for item in inside.split(","):
            m = re.match(r"(\w+)(?:'s)?((?: --\w+ [\w.-]+)*)", item.strip())
            if m and m.group(1) in REGISTRY:
                named[(m.group(1), tuple(re.findall(r"--(\w+) ([\w.-]+)", m.group(2))))] = float(rate)
    return small, named, other


@pytest.mark.parametrize("name, options, trl", TRL_RATE, ids=lambda x: str(x) if x else "")
def test_the_lr_help_states_the_rate_lr_0_gives_each_method(monkeypatch, name, options, trl):
    """`train.py --help` says what --lr 0 trains each method at: the small model's rate, then per
    method (an option such as `osp --pairing raft` where it changes the loss) the rate of TRL's
    trainer of the same loss. The most specific mention of a method wins; a method it does not name
    is among 'every other method'. It named only osp's RAFT and self_judge, so a reader had to guess
    that jsft, pref_aug and meta_aligner train at SFT's rate and self_judge_offpolicy at DPO's."""
    from nanoalign import compute
    from nanoalign.config import SharedConfig
    from tests.helpers import method_config
    lr = {f.name: f for f in dataclasses.fields(SharedConfig)}["lr"]
    small, named, other = lr_help_rates(lr.metadata["help"])
    assert _auto_lr(name, tiny(0), **options) == small
    cfg = method_config(name, **options)
    said = [(len(opts), rate) for (n, opts), rate in named.items()
            if n == name and all(str(getattr(cfg, k)) == v for k, v in opts)]
    monkeypatch.setattr(compute, "FAST_MIN_PARAMS", 0)          # the tiny model counts as a large one
    assert _auto_lr(name, tiny(0), **options) == (max(said)[1] if said else other)


def test_the_lr_help_reader_finds_a_wrong_rate_or_group():
    text = ("peak learning rate; 0 = auto: 3e-4 for a model under 20M parameters (the arith task's); "
            "for a larger one: 2e-5 for SFT (sft, jsft, osp --pairing raft), 5e-7 for on-policy DPO "
            "(self_judge, osp's pair losses), 1e-6 for every other method (DPO, MO-ORPO's)")
    small, named, other = lr_help_rates(text)
    assert (small, other) == (3e-4, 1e-6)
    assert named == {("sft", ()): 2e-5, ("jsft", ()): 2e-5, ("osp", (("pairing", "raft"),)): 2e-5,
                     ("self_judge", ()): 5e-7, ("osp", ()): 5e-7}


def test_a_run_from_a_large_checkpoint_trains_at_the_auto_rate_and_says_so(monkeypatch, tmp_path, capsys):
    import json
    import train
    from nanoalign import compute
    from tests.helpers import run_cfg
    monkeypatch.setattr(compute, "FAST_MIN_PARAMS", 0)
    monkeypatch.setattr(compute, "cpu_bf16_trains_faster", lambda: False)
    train.train(run_cfg(tmp_path, method="sft", lr=0.0, warmup_steps=1, max_steps=2, eval_every=0))
    assert "peak lr 2e-05 (--lr 0: auto" in capsys.readouterr().out
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl") if '"train"' in x]
    assert recs[0]["lr"] == 2e-5                                   # the peak, after one warm-up step


def test_auto_dtype_on_a_gpu_is_bf16_only_where_the_gpu_has_it(monkeypatch):
    """--dtype auto on CUDA: bf16 on a GPU that multiplies in it (sm_80 and later), float32 on one
    that torch can only emulate it on (T4, V100: is_bf16_supported() is True there by emulation,
    False with including_emulation=False). Emulated bf16 runs slower than float32, and the Triton
    kernel's bf16 dot and the packed rows' flash-attention varlen kernel need sm_80. Emulated on the
    CPU: a stand-in model whose parameters say they are on CUDA."""
    from types import SimpleNamespace
    from nanoalign import compute
    from tests.helpers import method_config
    on_gpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(is_cuda=True, numel=lambda: 10)]))
    auto = method_config("orpo")
    for native, want in ((True, torch.bfloat16), (False, None)):
        # emulation is always possible on CUDA; native bf16 only from sm_80
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: native or including_emulation)
        assert compute.autocast_dtype(auto, on_gpu) == want
        assert compute.autocast_dtype(auto, on_gpu, decoding=True) == want       # sample.py's rule
        assert compute.autocast_dtype(method_config("orpo", dtype="bfloat16"), on_gpu) == torch.bfloat16


@pytest.mark.parametrize("amx, bf16, vendor, faster", [
    (True, True, "GenuineIntel", True),              # AMX tiles: bf16 GEMMs outrun float32's
    (False, True, "AuthenticAMD", True),             # AVX512-BF16 on an AMD EPYC
    (False, True, "GenuineIntel", False),            # AVX512-BF16 alone on an Intel Xeon: slower
    (False, False, "AuthenticAMD", False),           # no bf16 instructions: emulated, slower
    (False, True, "", False),                        # no /proc/cpuinfo: don't guess
])
def test_training_takes_bf16_only_where_its_matmuls_were_measured_faster(monkeypatch, amx, bf16,
                                                                         vendor, faster):
    from nanoalign import compute
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(compute, "cpu_has_bf16", lambda: bf16 or amx)
    monkeypatch.setattr(compute, "cpu_vendor", lambda: vendor)
    assert compute.cpu_bf16_trains_faster() is faster


def test_the_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    from nanoalign import compute
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert compute.cpu_vendor(str(info)) == "AuthenticAMD"
    (tmp_path / "none").write_text("processor\t: 0\n")
    assert compute.cpu_vendor(str(tmp_path / "none")) == ""                 # no vendor_id line
    assert compute.cpu_vendor(str(tmp_path / "missing")) == ""              # no such file


def test_dtype_packed_and_grad_checkpoint_are_options_in_help(capsys):
    """Each with its choices; the two switches may also stand alone (--packed means --packed true)."""
    import train
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "orpo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--dtype STR" in out and "one of auto, float32, bfloat16" in out
    assert "--packed [STR]" in out and "one of auto, true, false" in out
    assert "--grad_checkpoint [STR]" in out and "one of auto, false, half, true" in out
    assert train.parse_config(["--method", "orpo", "--packed"]).packed == "true"
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "orpo", "--dtype", "float16"])


def test_adamw_is_fused_exactly_where_the_fast_paths_are(monkeypatch):
    """make_optimizer: foreach AdamW for a small CPU model (the arithmetic the built-in task's table
    was made with), fused at FAST_MIN_PARAMS or more; its state is float32 either way."""
    from nanoalign import compute
    from tests.helpers import method_config
    model, cfg = tiny(0), method_config("orpo")
    assert not compute.make_optimizer(model, cfg).defaults["fused"]
    monkeypatch.setattr(compute, "FAST_MIN_PARAMS", 0)
    opt = compute.make_optimizer(model, cfg)
    assert opt.defaults["fused"]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(v.dtype == torch.float32 for st in opt.state.values() for k, v in st.items() if k != "step")


def test_deterministic_algorithms_are_set_up_on_cuda_only(monkeypatch):
    """--deterministic (default true) turns on torch's deterministic algorithms on CUDA, with cuBLAS's
    workspace for them; false turns them off; on the CPU nothing is touched (train.train and the
    speed bench's rows both set it up through compute.set_deterministic)."""
    import os
    import train
    from nanoalign.compute import set_deterministic
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda on, warn_only=False: calls.append((on, warn_only)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert set_deterministic(train.make_config(method="orpo"), "cpu") is False and calls == []
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert set_deterministic(train.make_config(method="orpo"), "cuda") is True
    # enforced, not warn_only: under warn_only torch keeps flash and memory-efficient attention on
    # their nondeterministic backward (and cuDNN attention eligible), so the step would not repeat
    assert calls == [(True, False)] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert set_deterministic(train.make_config(method="orpo", deterministic=False), "cuda:0") is False
    assert calls[-1] == (False, False)

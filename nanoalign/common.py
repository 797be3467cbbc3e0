"""
What every method shares, written once: the Method record and the registry, how a method declares
its options, the state a run hands to a loss, sequence log-probs of a padded batch, and the frozen
reference model.

A method is a `Method`: which JSONL rows it reads, which kind of example its loss eats, what its loss
is a sum over (tokens or examples), its own options, and `loss(model, batch, run, cfg)` returning
(loss summed over the micro-batch, metrics). The training loop divides by the number of units in
the whole effective batch, so gradient accumulation over N micro-batches equals one step on their
concatenation (data.py, train.py). A method file ends with `register(Method(...), ...)`; importing
`nanoalign` imports every method file, so `REGISTRY` is complete. train.py knows no method by name.
"""
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from kernels import sequence_logprob
from nanoalign.data import KINDS


# -- options: one dataclass per method, each field with its default, help and allowed values ---------
def option(default, help, choices=None, minimum=None, maximum=None, above=None, below=None):
    """A field of an options dataclass; train.py turns it into a --flag with this help, and checks
    `choices` and the bounds (minimum <= v <= maximum, above < v < below) for every value, whether it
    came from a flag, a JSON config or a resume."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum,
                                            "maximum": maximum, "above": above, "below": below})


def with_defaults(options, name, **defaults):
    """A copy of an options dataclass with other defaults (a paper's per-variant values), same help."""
    fields = []
    for f in dataclasses.fields(options):
        default = defaults.pop(f.name, f.default)
        fields.append((f.name, f.type, field(default=default, metadata=f.metadata)))
    if defaults:      # not an assert: python -O would drop it, and the misspelt default with it
        raise ValueError(f"with_defaults({options.__name__}): unknown options {sorted(defaults)}")
    return dataclasses.make_dataclass(name, fields)


@dataclass
class NoOptions:
    """A method without options of its own."""


@dataclass(kw_only=True)
class Method:
    """A method, declared by keyword in its file: Method(name=..., reads=..., eats=..., ...)."""
    name: str
    reads: str                # the JSONL row kind read from --train_data: "sft", "pref" or "prompt"
    eats: str                 # the example kind its loss eats (a key of nanoalign.data.KINDS)
    unit: str                 # "n_tokens" or "n_examples": the loss is a sum over these
    loss: Callable            # (model, batch, run, cfg) -> (loss_sum, {metric: float})
    help: str
    options: type = NoOptions  # the method's own options (a dataclass built with `option`)
    needs_ref: bool = False   # a frozen copy of the initial model goes in run.ref (under --lora_r:
                              # the policy itself with its adapters off, the same start)
    setup: Callable = None    # (run, cfg, device) -> None, before the data: what the method needs
                              # beside the model (a --judge_from judge, the principles it judges by)
    prepare: Callable = None  # (rows, cfg, split, run) -> rows of kind `eats` (e.g. add SJ triples)
    check_row: Callable = None  # cfg -> None or a (row, where) -> row check of every row read, for
                                # what prepare reads beyond the row kind (MetaAligner's labels): a row
                                # it refuses is a bad row when read, skipped and counted with
                                # --skip_bad_rows (prepare sees all rows at once: nothing skips there)
    tokenize_options: Callable = lambda cfg: {}  # cfg -> its kind's own length limits beside
                                                 # max_length, for data.tokenize_rows to hand its
                                                 # tokenize (MO-ORPO's sj_max_length)
    rollout: Callable = None  # (model, batch, run, cfg) -> (batch for `loss`, metrics): the on-policy
                              # round (sample, judge), called by the loop before `loss`, no gradients
    main: Callable = None     # (cfg, train) -> the checkpoint it ends with; replaces one train(cfg)
                              # call (MetaAligner's stages)
    sample_flags: Callable = None  # (cfg, ckpt) -> sample.py's flags that use the result, when they
                                   # are not `--init_from ckpt` (an aligner corrects a policy's answers)
    metrics: dict = None      # {metric name: what it means}, printed as the log's legend
    trl_rate: Callable = None  # cfg -> the TRL trainer whose default rate --lr 0 gives a model of
                               # 20M parameters or more: a key of compute.AUTO_LR ('sft', 'preference',
                               # 'online'), for a loss that is not what its example kind says
                               # (None: 'sft' for SFT examples, 'preference' for any other)
    start_defaults: Callable = None  # cfg -> {option: value} for its options left '' that take their
                                     # value from a checkpoint the run reads (an on-policy judge's
                                     # template and rule: those its checkpoint records); the config
                                     # fills them in, so the saved config, which --resume keeps,
                                     # holds what the run used
    trains_judge: Callable = None  # cfg -> whether this run trains a judge (JSFT unless --jsft_judge
                                   # false, pref_aug): its end says how to judge with the result, and
                                   # an on-policy run judged by a checkpoint of a run that did not is
                                   # told so
    check_config: Callable = None  # cfg -> None, or why the method refuses this combination of
                                   # options (one it would otherwise quietly ignore): an error
                                   # wherever a config is made (flags, --config, make_config)


REGISTRY = {}
UNITS = ("n_tokens", "n_examples")


def register(*methods):
    """Add methods to REGISTRY, each checked first: a slip in a new method file (a kind misspelt, a
    plain dataclass field for an option, a copied file's name) is refused here, naming the field,
    not met minutes into a run as an error far from it, or never (a name registered twice)."""
    readable = [k for k, kind in KINDS.items() if kind.read]
    for m in methods:
        where = f"Method(name={m.name!r})"
        if m.name in REGISTRY:
            raise ValueError(f"{where}: a method of this name is registered already "
                             f"(its help: {REGISTRY[m.name].help!r}); name this one otherwise")
        if m.reads not in readable:
            raise ValueError(f"{where}: reads={m.reads!r} is no row kind a file holds; one of "
                             f"{', '.join(readable)} (nanoalign/rows.py)")
        if m.eats not in KINDS:
            raise ValueError(f"{where}: eats={m.eats!r} is no example kind; one of {', '.join(KINDS)} "
                             f"(nanoalign/data.py KINDS)")
        if m.unit not in UNITS:
            raise ValueError(f"{where}: unit={m.unit!r} is none of {', '.join(UNITS)}: what its loss is a "
                             f"sum over, which the loop divides by")
        for f in dataclasses.fields(m.options):
            if "help" not in f.metadata:
                raise ValueError(f"{where}: option '{f.name}' of {m.options.__name__} is a plain field; "
                                 f"declare it with option(default, help), which gives its --flag its help")
        REGISTRY[m.name] = m


@dataclass
class Run:
    """What a loss may use besides the model and the batch. Built once by the training loop."""
    tok: Any                             # model.tokenizer.Tokenizer
    ref: Optional[torch.nn.Module] = None    # the frozen start (methods with needs_ref)
    judge: Optional[torch.nn.Module] = None  # a judge model of its own (--judge_from), else None
    judge_tok: Any = None                # that judge's own tokenizer and chat template (None: tok)
    task: Any = None                     # a built-in task lent by the caller: .oracle_scores(prompt,
                                         # response) for metrics, .rationale(...) for the targets of
                                         # the rationale judge templates; None on the user's own data
    epoch: float = 0.0                   # epochs of data seen (fractional)
    epochs: float = 1.0                  # epochs the whole run will see
    principles: Optional[list] = None    # [(name, description)] an on-policy judge judges under
    memory: dict = field(default_factory=dict)  # a method's own state across steps (the off-policy
                                                # baseline's cached pairs)
    checkpoint_files: dict = field(default_factory=dict)  # {file name: JSON value} written into
                                                # every checkpoint of the run (a judge's principles)


def batch_logps(model, batch, reduction="sum", mask=None):
    """Per-row log p(response | prompt) of a batch, via the fused kernel: a right-padded batch as it
    is (the readable reference), a packed one (batch["packed"], nanoalign/data.py pack) on its real
    tokens only, to the same per-row values. `mask` (default: the response mask) is in the padded
    layout either way. reduction: 'sum' (DPO family) or 'mean' (ORPO family), see
    kernels/seq_logprob.py."""
    mask = batch["mask"] if mask is None else mask                      # (B, T)
    p, rows = batch.get("packed"), None
    if p is None:
        hidden, targets = model(batch["ids"], batch["attn"]), batch["targets"]   # (B, T, dim)
    else:
        hidden = model(p["ids"], cu_seqlens=p["cu_seqlens"])[0]          # (N, dim)
        targets, rows = p["targets"], p["cu_seqlens"]
        mask = mask.reshape(-1)[p["slot"]]                               # (N,): at each real token
    weight = model.lm_head.weight
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        # autocast does not reach inside the kernel: hand it the autocast dtype. On CUDA it runs a
        # bf16 tensor-core dot, on the CPU bf16 products shifted before they round (see
        # kernels/seq_logprob.py); either way the log-sum-exp and the log-probs are float32
        dt = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(dt), weight.to(dt)
    return sequence_logprob(hidden, weight, targets, mask, reduction, cu_seqlens=rows)


def frozen_copy(model):
    """The reference policy: a copy that never trains (eval mode, no grads)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class evaluating:
    """`with evaluating(model):` eval mode (no dropout) and no grads, train mode restored after. Every
    judge and reference forward runs in it: a LoRA judge with dropout would otherwise be noisy."""

    def __init__(self, model):
        self.model, self.was = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self.no_grad.__enter__()
        return self.model

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was)


def reference_logps(ref, batch, reduction="sum"):
    with evaluating(ref):
        return batch_logps(ref, batch, reduction)

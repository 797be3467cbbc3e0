"""
The command line of train.py: a parser of the chosen method's and task's options, built from their
declarations (nanoalign/config.py config_class), so that --help lists exactly the flags that run
takes, each with its default, choices and bounds; `--method list`; and the refusals of an unknown
flag or method, with the closest one, whose option it is, or the method file left unimported.
The values it reads are checked where every config is, config.config_from_dict (or
config.resume_config for --resume).
"""
import argparse
import dataclasses
import os
import sys

from model.checkpoint import CheckpointError, read_json
from nanoalign import REGISTRY
from nanoalign.config import (SharedConfig, bounds, config_class, config_from_dict, is_switch, known_keys,
                              listed, owners, resume_config, saved_config, tname)
from nanoalign.suggest import ArgumentParser, did_you_mean
from nanoalign.tasks import TASKS, get_task

METHODS_DIR = os.path.dirname(os.path.abspath(__file__))    # nanoalign/: where a method file is


def unknown_method(method):
    """Why --method is unknown: the methods there are, the closest, and where a file of its name sits
    in nanoalign/ unimported (a new method file whose import line was forgotten)."""
    msg = f"--method {method!r} is unknown; choose from {', '.join(REGISTRY)} (or 'list')"
    path = os.path.join(METHODS_DIR, method + ".py")
    if method.isidentifier() and method != "__init__" and f"nanoalign.{method}" not in sys.modules \
            and os.path.exists(path) and "register(" in open(path, encoding="utf-8").read():
        return msg + (f"; nanoalign/{method}.py is there, but nanoalign/__init__.py does not import it, so "
                      f"the methods it registers are not known: add it to that file's import line")
    return msg + did_you_mean(method, [*REGISTRY, "list"])


def flag_note(name, flags):
    """What train.py adds to its refusal of an unknown flag --name, given the `flags` its parser has:
    whose option it is, else the closest flag of any method or task, and whose that is if not this
    run's."""
    if who := owners(name):
        return f"it is an option of {who}"
    return did_you_mean(name, set(flags) | known_keys(), sep="",
                        show=lambda k: f"--{k}" + ("" if k in flags else f" (an option of {owners(k)})"))


def _switch(s):
    """A switch's flag value: a bool's spellings (True, no, 1, ...) as 'true' / 'false', else as given."""
    try:
        return "true" if _bool(s) else "false"
    except argparse.ArgumentTypeError:
        return s


def _bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def describe(name):
    """One method and its options, for --method list."""
    m = REGISTRY[name]
    lines = [f"{name:22s} {m.help}"]
    for f in dataclasses.fields(m.options):
        lines.append(f"    --{f.name} (default {f.default!r}): {f.metadata['help']}")
    return "\n".join(lines)


def parse_config(argv=None, description=None):
    """Flags -> the chosen method's config. First the method and the task (from the flags, the
    --config file or the checkpoint being resumed), then a parser of their options, so --help shows
    exactly them. `description` heads --help (train.py's docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--method")
    pre.add_argument("--task")
    pre.add_argument("--out_dir")
    pre.add_argument("--resume", nargs="?", const="true")
    early, _ = pre.parse_known_args(argv)
    saved = saved_config(early.out_dir or "")
    try:
        d = read_json(early.config) if early.config else {}
        if not isinstance(d, dict):
            raise CheckpointError(f"{early.config}: a config file holds one JSON object "
                                  f"{{\"key\": value, ...}}, got {type(d).__name__}")
        if early.resume not in (None, "false") and os.path.exists(saved):   # the run's method, task
            run = read_json(saved)["config"]
            d = {**d, **{k: run[k] for k in ("method", "task") if k in run and not getattr(early, k)}}
    except CheckpointError as e:
        pre.exit(2, f"error: {e}\n")
    method = early.method or d.get("method", SharedConfig.method)
    task = early.task or d.get("task", SharedConfig.task)
    if method == "list":
        print("\n\n".join(describe(n) for n in REGISTRY))
        sys.exit(0)
    ap = ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False, note=flag_note,
        epilog=f"These are the options of --method {method} on --task {task} (the shared ones first, "
               f"then the method's, then the task's). `python train.py --method NAME --help` shows "
               f"another method's.")
    if method not in REGISTRY:
        ap.error(unknown_method(method))
    if task not in TASKS:
        ap.error(f"--task {task!r} is unknown; choose from {', '.join(TASKS)}" + did_you_mean(task, TASKS))
    ap.add_argument("--config", default=None, help="a JSON file of config values (flags override)")
    conv = {"int": int, "float": float, "bool": _bool, "str": str}
    for f in dataclasses.fields(config_class(method, task)):
        kw = dict(nargs="?", const=True) if tname(f) == "bool" else {}
        if is_switch(f):                         # --grad_checkpoint alone means 'true', as a bool's
            kw = dict(nargs="?", const="true")
        ch = f.metadata.get("choices")
        if f.name == "method":                   # checked by the registry, not argparse: names listed
            ch = tuple(REGISTRY) + ("list",)
        ap.add_argument(f"--{f.name}", type=_switch if is_switch(f) else conv[tname(f)], default=None,
                        metavar=tname(f).upper(),
                        help=f"{f.metadata['help']} (default: {f.default!r}"
                             + (f"; one of {listed(ch)}" if ch else "")
                             + "".join(f"; {op} {b}" for op, b, _ in bounds(f))
                             + ("; the flag alone = true" if "const" in kw else "") + ")", **kw)
    a = ap.parse_args(argv)
    flags = {k: v for k, v in vars(a).items() if k != "config" and v is not None}
    given = {**d, **flags}
    try:
        out_dir = given.get("out_dir") or os.path.join("out", method)
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise SystemExit(f"error: --out_dir {out_dir} exists and is not a directory")
        if d:
            config_from_dict({**d, "method": method, "task": task}, a.config)
        if given.get("resume"):
            return resume_config(given, a.config or "flags")
        cfg = config_from_dict({**given, "method": method, "task": task}, "flags")
    except SystemExit as e:   # one line, exit code 2, as argparse does for a bad flag
        ap.exit(2, f"{e}\n")
    if cfg.parallel == "fsdp" and REGISTRY[cfg.method].rollout:
        ap.error(f"--method {cfg.method} samples on-policy, and under FSDP every forward is a "
                 f"collective: ranks sampling different lengths would hang. Use --parallel ddp "
                 f"(with --lora_r for a large model)")
    if cfg.val_data not in ("auto", "") and REGISTRY[cfg.method].rollout:   # train.py reads none
        ap.error(f"--val_data: --method {cfg.method} samples on-policy and has no held-out loss (it "
                 f"would need a rollout per evaluation); drop --val_data")
    if cfg.train_data != "builtin" and cfg.val_data != "builtin":   # the task's rows: none read
        unused = [k for k in get_task(cfg.task).ROW_OPTIONS if k in given]
        if unused:
            ap.error(f"--{unused[0]} shapes the built-in task's rows, and this run reads none: "
                     f"--train_data {cfg.train_data} trains on every row of the file (cut the file to "
                     f"train on fewer); drop --{unused[0]}")
    if cfg.chat_format and cfg.init_from == "scratch":   # init_model never reads it: the task's tokenizer
        ap.error(f"--chat_format {cfg.chat_format}: --init_from scratch starts with the task's byte "
                 f"tokenizer, which speaks selfjudge; drop --chat_format")
    return dataclasses.replace(cfg, out_dir=cfg.out_dir or os.path.join("out", cfg.method))

"""
"Did you mean": the guess a command line adds where it refuses a name it does not know: a mistyped
flag of train.py or sample.py (ArgumentParser), train.py's config key, method, task or choice
(nanoalign/config.py), sample.py's judge template and --objectives (nanoalign/meta_aligner.py). The
refusal's own words stay as they were; the guess goes after them, and only where a known name is
close.
"""
import argparse
import difflib


def did_you_mean(name, known, show=repr, sep="; "):
    """'; did you mean 'dpo'?' (the closest of `known`, as `show` writes it) to append to the message
    that refuses an unknown `name`, or '' where none is close (difflib's similarity ratio below 0.6):
    a far-off name gets no guess rather than a wrong one."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"{sep}did you mean {show(close[0])}?" if close else ""


def closest_flag(name, flags):
    """'did you mean --max_steps?' for an unknown flag --name among a parser's `flags`, or ''."""
    return did_you_mean(name, flags, show=lambda k: f"--{k}", sep="")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose refusal of the flags it does not know ('unrecognized arguments:
    --max_stepz 3', argparse's words) goes on with a guess at each: note(name, flags), for a name
    without its dashes and the parser's own flags, by default the closest of them. argparse sends
    every refusal through error(), which a program may override to change its messages."""

    def __init__(self, *args, note=closest_flag, **kw):
        super().__init__(*args, **kw)
        self.note = note

    def error(self, message):
        said = "unrecognized arguments: "
        if message.startswith(said):
            flags = [s[2:] for a in self._actions for s in a.option_strings if s.startswith("--")]
            # the flags among the leftovers, not their values ('--foo -1': -1 is no flag to guess at)
            names = [x[2:].split("=")[0] for x in message[len(said):].split() if x.startswith("--")]
            notes = [(n, self.note(n, flags)) for n in names]
            message += "".join(f"; --{n}: {t}" if len(names) > 1 else f"; {t}" for n, t in notes if t)
        super().error(message)

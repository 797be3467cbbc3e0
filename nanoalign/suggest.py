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
    a far-off name gets no guess rather than a wrong one. Case is ignored ('MAX_STEPS' finds
    --max_steps): difflib would count each capital as a letter wrong."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    return f"{sep}did you mean {show(by_lower[close[0]])}?" if close else ""


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
        self.note, self.leftovers = note, []

    def parse_known_args(self, args=None, namespace=None):
        # what parse_args refuses, kept as given for error(): its message joins them with spaces,
        # where the words of a value ('--promt "what does --temperature do?"') read as flags
        ns, self.leftovers = super().parse_known_args(args, namespace)
        return ns, self.leftovers

    def error(self, message):
        if message.startswith("unrecognized arguments: "):   # parse_args' refusal of the leftovers
            message += self.guesses(self.leftovers)
        super().error(message)

    def guesses(self, leftovers):
        """'; did you mean --max_steps?' for one unknown flag, '; --name: ...' for each of several
        (a flag given twice counts once), '' where none is close. A value is no flag to guess at:
        neither a negative number ('--foo -1') nor words with a space between them, which argparse
        reads as a value too."""
        flags = [s[2:] for a in self._actions for s in a.option_strings if s.startswith("--")]
        names = [n for n in dict.fromkeys(x[2:].split("=")[0] for x in leftovers if x.startswith("--"))
                 if n and not any(c.isspace() for c in n)]
        notes = [(n, self.note(n, flags)) for n in names]
        return "".join(f"; --{n}: {t}" if len(names) > 1 else f"; {t}" for n, t in notes if t)

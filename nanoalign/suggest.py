"""
"Did you mean": the guess a command line adds where it refuses a name it does not know: a mistyped
flag of train.py or sample.py (parse_flags), train.py's config key, method, task or choice
(nanoalign/config.py), sample.py's judge template and --objectives (nanoalign/meta_aligner.py). The
refusal's own words stay as they were; the guess goes after them, and only where a known name is
close.
"""
import difflib


def did_you_mean(name, known, show=repr, sep="; "):
    """'; did you mean 'dpo'?' (the closest of `known`, as `show` writes it) to append to the message
    that refuses an unknown `name`, or '' where none is close (difflib's similarity ratio below 0.6):
    a far-off name gets no guess rather than a wrong one."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"{sep}did you mean {show(close[0])}?" if close else ""


def parse_flags(ap, argv=None, note=None):
    """ap.parse_args(argv), whose refusal of the flags the parser does not know ('unrecognized
    arguments: --max_stepz 3', argparse's words) goes on with a note on each: note(name) for a name
    without its dashes, by default the closest of the parser's flags. With several, each note names
    its flag."""
    flags = [s[2:] for s in ap._option_string_actions if s.startswith("--")]
    note = note or (lambda n: did_you_mean(n, flags, show=lambda k: f"--{k}", sep=""))
    known_args = ap.parse_known_args

    # parse_args is parse_known_args, then a refusal of what is left over that takes no addition:
    # this parser's parse_known_args refuses it first. Not a parse of its own before parse_args:
    # tests/test_docs.py catches each parser at parse_args, before anything is parsed
    def parse_known_args(args=None, namespace=None):
        a, extra = known_args(args, namespace)
        if extra:
            names = [x.lstrip("-").split("=")[0] for x in extra if x.startswith("-")]  # not values
            notes = [(n, note(n)) for n in names]
            said = [f"--{n}: {t}" if len(names) > 1 else t for n, t in notes if t]
            ap.error(f"unrecognized arguments: {' '.join(extra)}" + "".join(f"; {t}" for t in said))
        return a, extra
    ap.parse_known_args = parse_known_args
    return ap.parse_args(argv)

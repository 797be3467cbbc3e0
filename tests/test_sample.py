"""sample.py's command line: every flag explains itself and shows its default, greedy decoding is the
default, prefixes of flags are errors, and the help's example commands are printed intact."""
import re
import shlex

import pytest

import sample


@pytest.fixture
def help_text(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")       # argparse wraps to the terminal width
    with pytest.raises(SystemExit) as e:
        sample.parse_args(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def flag_blocks(text):
    """{'--flag': its help text, whitespace collapsed} from the options section of --help."""
    options = text.split("\noptions:\n", 1)[1]
    blocks = re.split(r"\n(?=  -)", options)
    return {b.split()[0].rstrip(","): " ".join(b.split()) for b in blocks if b.startswith("  --")}


def test_help_explains_every_flag_and_shows_its_default(help_text):
    blocks = flag_blocks(help_text)
    defaults = vars(sample.parse_args(["--init_from", "DIR"]))
    assert set(blocks) == {f"--{k}" for k in defaults}            # every flag is in the help
    for flag, block in blocks.items():
        default = defaults[flag[2:]]
        words = block.split(" (default: ")[0].split()
        assert len(words) >= 4, f"{flag} is not explained: {block!r}"
        assert "(default: " in block, f"{flag} does not show its default: {block!r}"
        if default not in (None, False, []) and flag != "--init_from":
            assert str(default) in block.split("(default: ", 1)[1], (flag, default, block)


def test_greedy_decoding_is_the_default(help_text):
    assert sample.parse_args(["--init_from", "DIR"]).temperature == 0
    assert "0 is greedy decoding" in flag_blocks(help_text)["--temperature"]


@pytest.mark.parametrize("argv,prefix", [(["--temp", "0"], "--temp"),
                                         (["--best", "4"], "--best"),
                                         (["--max_new", "8"], "--max_new")])
def test_a_prefix_of_a_flag_is_an_error(argv, prefix, capsys):
    with pytest.raises(SystemExit) as e:
        sample.parse_args(["--init_from", "DIR"] + argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {prefix}" in capsys.readouterr().err


def test_help_examples_are_printed_intact(help_text):
    description = help_text.split("\noptions:\n", 1)[0]
    lines = description.splitlines()
    commands, current, indent = [], None, 0
    for line in lines:
        if current is not None:                       # the continuation of a `\`-ended line
            assert len(line) - len(line.lstrip()) > indent, f"a broken continuation: {line!r}"
            current += " " + line.strip()
        elif line.lstrip().startswith("python sample.py "):
            current, indent = line.strip(), len(line) - len(line.lstrip())
        else:
            assert "python sample.py" not in line, f"an example that lost its start: {line!r}"
            continue
        # two spaces inside an example: a `\` newline that Python, not the shell, swallowed
        assert "  " not in line.strip(), f"a garbled example line: {line!r}"
        if current.endswith(" \\"):
            current = current[:-2]
        else:
            commands.append(current)
            current = None
    assert current is None and len(commands) >= 5
    for cmd in commands:                              # each one is a command line sample.py accepts
        argv = shlex.split(cmd)
        assert argv[:2] == ["python", "sample.py"]
        sample.parse_args(argv[2:])

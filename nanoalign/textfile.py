"""
A data file's lines, bytes to text one line at a time, every error naming the file and the line:
UTF-8 whatever the platform's default encoding, a byte order mark dropped, and a file that is no
UTF-8 text at all (Parquet, gzip, an Arrow file, zip, UTF-16, binary) said to be what it is at
once, not as a bad first row; so is a text file that is no JSONL (a JSON document, CSV), when
its first line that is not blank is no JSON object (`not_jsonl`). nanoalign/data.py reads JSONL
rows through it; sample.py its --prompts_file and --answers_file.
"""
import codecs
import itertools
import json
import shlex


class DataError(ValueError):
    """A bad data row; the message names the file, the line and the field."""


class NotJSONL(DataError):
    """A file that is no JSONL at all (`not_jsonl`): one error, never a bad row to skip."""


UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# what a researcher may hand over in JSONL's place, by its first bytes: (what it is, how to make JSONL)
NOT_JSONL = {b"PAR1": ("a Parquet file", "convert it first, e.g. "
                       "pandas.read_parquet(path).to_json('rows.jsonl', orient='records', lines=True)"),
             b"\x1f\x8b": ("gzip-compressed", "gunzip it first"),
             b"ARROW1": ("an Arrow file", "convert it first, e.g. datasets' Dataset.from_file(path)"
                         ".to_json('rows.jsonl')"),
             b"PK\x03\x04": ("a zip archive", "unzip it first")}


def decode_line(raw, where):
    """One line of a JSONL file, bytes -> text: UTF-8, whatever the platform's default encoding,
    with a byte order mark at its start dropped (Windows editors write one). A line that is not
    UTF-8 (a Latin-1 line) is a bad row naming the first byte that is not, and its column."""
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        col = len(raw[:e.start].decode("utf-8")) + 1      # the bytes before e.start are UTF-8
        raise DataError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {col}; Latin-1 "
                        f"or Windows-1252?); re-save the file as UTF-8") from None


def not_text(raw):
    """Why a file whose line 1 is `raw` is no UTF-8 text, or None: a binary format by its
    first bytes (NOT_JSONL), UTF-16 (what Windows PowerShell's `>` writes: a byte order mark, or a
    NUL beside each of the first two characters, which in JSON are ASCII), or other binary data."""
    for magic, (what, todo) in NOT_JSONL.items():
        if raw.startswith(magic):
            return f"{what}, not UTF-8 text; {todo}"
    head = raw[:4]
    if raw.startswith(UTF16_BOMS) or len(head) == 4 and (head[1] == head[3] == 0 or head[0] == head[2] == 0):
        return ("the file looks like UTF-16 (what Windows PowerShell's '>' writes), not UTF-8; "
                "re-save it as UTF-8")
    if b"\x00" in raw:
        return "binary data (NUL bytes), not UTF-8 text"
    return None


# how to make JSONL of a JSON array, of one JSON object, of objects back to back (json.load fails on
# them, 'Extra data': each is decoded where the last one ended, in a comprehension, as no loop statement
# may follow a ';' on python -c's one line), of CSV (blank lines before its header dropped:
# csv.DictReader would take the first, empty, for it): a command run on the file
TO_JSONL = {"array": "import json, sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1], "
                     "encoding='utf-8-sig'))]",
            "object": "import json, sys; print(json.dumps(json.load(open(sys.argv[1], "
                      "encoding='utf-8-sig'))))",
            "objects": "import json, re, sys; s = open(sys.argv[1], encoding='utf-8-sig').read(); "
                       "gap, d = re.compile(r'\\s*'), json.JSONDecoder(); i = gap.match(s).end(); "
                       "[print(json.dumps(v)) for _ in iter(lambda: i < len(s), False) "
                       "for v, end in [d.raw_decode(s, i)] if (i := gap.match(s, end).end()) >= 0]",
            "csv": "import csv, itertools, json, sys; [print(json.dumps(r)) for r in csv.DictReader("
                   "itertools.dropwhile(str.isspace, open(sys.argv[1], encoding='utf-8-sig', newline='')))]"}


def not_jsonl(path, line, whole):
    """What a text file whose first line that is not blank, `line`, is no JSON object (malformed, or
    an array; `whole`: the line parsed as JSON on its own) looks like when it is no JSONL, or None: a
    JSON document (an array, or an object over several lines), such objects back to back (`jq . f`),
    or CSV (commas and no braces), each with a command that makes JSONL of it. Only a file that is
    one counts: a JSONL file whose first row lacks its '}', or is a whole array on its line with rows
    after it, keeps that row's own error."""
    s = line.strip()
    if s.startswith("["):   # pretty-printed (no whole array on line 1), or json.dump's one line alone
        if whole and not _one_line(path):
            return None
        what, how = "a JSON document", TO_JSONL["array"]
    elif s.startswith("{"):
        past, rest = _first_value(path)
        if past and not rest:
            what, how = "a JSON document", TO_JSONL["object"]
        elif past and rest.startswith("{"):
            what, how = ("several JSON objects, each written over several lines (what jq prints without "
                         "-c)", TO_JSONL["objects"])
        else:
            return None
    elif "," in s and "{" not in s and "}" not in s:
        what, how = "CSV (comma-separated text)", TO_JSONL["csv"]
    else:
        return None
    return (f"{what}, not JSONL (one JSON object per line); convert it, e.g. python -c \"{how}\" "
            f"{shlex.quote(path)} > rows.jsonl")


def _one_line(path):
    """Whether the file holds no more than one line that is not blank."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return len(list(itertools.islice((x for x in f if x.strip()), 2))) < 2


def _first_value(path):
    """(whether the file's first JSON value goes on past the line it starts on, what follows it, stripped),
    read from its first MiB. A JSON string holds no newline, so any newline in the value is between its
    tokens; a value that does not end within that MiB is no answer (False, ...): then its line keeps
    its own error."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(1 << 20)
    start = len(head) - len(head.lstrip())
    try:
        end = json.JSONDecoder().raw_decode(head, start)[1]
    except ValueError:
        return False, ""
    return "\n" in head[start:end], head[end:].strip()


def raw_lines(path):
    """("file:N", the line's bytes) of a text file, each line ending at "\n", to be decoded on its own
    (`decode_line`). A file that cannot be opened is an error, and so is one whose line 1 says it is
    no text (`not_text`: Parquet, gzip, UTF-16, ...): every line of it would be bad."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for i, raw in enumerate(f, 1):
            if i == 1 and (why := not_text(raw)):
                raise DataError(f"{path}:1: {why}")
            yield f"{path}:{i}", raw

"""
A data file's lines, bytes to text one line at a time, every error naming the file and the line:
UTF-8 whatever the platform's default encoding, a byte order mark dropped, and a file that is no
UTF-8 text at all (Parquet, gzip, an Arrow file, zip, UTF-16, binary) said to be what it is at
once, not as a bad first row; so is a text file that is no JSONL (a JSON document, CSV), when
its first line that is not blank is no JSON object (`not_jsonl`). A trailing comma, which Python's
JSON errors name by what they expected after it, is named as one (`malformed`), in a row and in a
JSON document handed over as JSONL. nanoalign/data.py reads JSONL rows through it; sample.py its
--prompts_file and --answers_file.
"""
import codecs
import itertools
import json
import re
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


JSON_SPACE = " \t\n\r"      # JSON's whitespace: str.strip() would take more


def trailing_comma(text, pos):
    """(the comma's index, the '}' or ']' after it, or '' where the text ends) where JSON that does
    not decode fails at text[pos] because of a trailing comma; else None. Python's decoder fails
    after such a comma where the next name or value should begin (3.11 and 3.12: at the '}' or ']',
    'Expecting property name enclosed in double quotes', 'Expecting value'; at the text's end too),
    or at the comma itself (3.13: 'Illegal trailing comma before end of object'; and 'Extra data'
    at a comma after a whole value): either way a comma with nothing but whitespace between it and a
    closing '}' or ']', or the text's end. A comma inside a string is never found: the decoder
    fails at a string's opening quote, or after its closing one, never at a closer inside it."""
    if text[pos:pos + 1] == ",":
        comma = pos
    elif text[pos:pos + 1] in ("}", "]", ""):
        comma = len(text[:pos].rstrip(JSON_SPACE)) - 1
        if comma < 0 or text[comma] != ",":
            return None
    else:
        return None
    after = text[comma + 1:].lstrip(JSON_SPACE)[:1]
    return (comma, after) if after in ("}", "]", "") else None


def malformed(line, e):
    """Why json.loads refused a line (e: its JSONDecodeError): 'malformed JSON (Python's words at
    column C)', or, for a trailing comma (`trailing_comma`), that, at the comma's column: Python's
    words for one ('Expecting property name enclosed in double quotes at column 447') name what it
    expected after it. A comma at the line's end follows a whole row (then it is one to drop) or
    leaves the row unclosed (a row cut short, or one written over several lines). The line has no
    newline, so a column is its index + 1, as e.colno counts."""
    found = trailing_comma(line, e.pos)
    if found is None:
        return f"malformed JSON ({e.msg} at column {e.colno})"
    comma, after = found
    if after:
        return f"malformed JSON: a trailing comma before '{after}' at column {comma + 1} (JSON allows none)"
    try:
        json.loads(line[:comma])
    except json.JSONDecodeError:
        return (f"malformed JSON: the line ends after a comma at column {comma + 1}, before the row is closed "
                f"(a JSONL row is one whole line)")
    return f"malformed JSON: a trailing comma after the row at column {comma + 1} (JSON allows none)"


def not_jsonl(path, line, whole):
    """What a text file whose first line that is not blank, `line`, is no JSON object (malformed, or
    an array; `whole`: the line parsed as JSON on its own) looks like when it is no JSONL, or None: a
    JSON document (an array, or an object over several lines), such objects back to back (`jq . f`),
    or CSV (commas and no braces), each with a command that makes JSONL of it. Only a file that is
    one counts: a JSONL file whose first row lacks its '}', or is a whole array on its line with rows
    after it, keeps that row's own error. A JSON document with a trailing comma (in its first MiB)
    is said to be no valid JSON, where the comma is, and no command given: json.load would fail on it.
    An object that does not decode is a document only where its comma is on a later line than its
    start: a JSONL file's first row with one keeps that row's own error (`malformed`)."""
    s = line.strip()
    comma = None
    if s.startswith("["):   # pretty-printed (no whole array on line 1), or json.dump's one line alone
        if whole and not _one_line(path):
            return None
        what, how = "a JSON document", TO_JSONL["array"]
        if not whole:       # whole: it decoded on its line, and its line is the file
            head, values, error = _json_values(path)
            comma = None if values else _comma_in(head, error)
    elif s.startswith("{"):
        head, values, error = _json_values(path)
        comma = _comma_in(head, error)
        if not values:      # the first value does not decode: a document if at a trailing comma past its first line
            start = len(head) - len(head.lstrip())
            if not (comma and "\n" in head[start:comma[0]]):
                return None
            what, how = "a JSON document", None
        else:
            (start, end), rest = values[0], head[values[0][1]:].strip()
            if "\n" not in head[start:end]:        # a row on its line (what follows it: that row's error)
                return None
            if not rest:
                what, how = "a JSON document", TO_JSONL["object"]
            elif rest.startswith("{"):
                what, how = ("several JSON objects, each written over several lines (what jq prints without "
                             "-c)", TO_JSONL["objects"])
            else:
                return None
    elif "," in s and "{" not in s and "}" not in s:
        what, how = "CSV (comma-separated text)", TO_JSONL["csv"]
    else:
        return None
    if comma:
        at, after, line_no, column = comma
        return (f"{what}, not JSONL (one JSON object per line), and is no valid JSON either: a trailing comma "
                f"before '{after}' at line {line_no}, column {column} (JSON allows none); remove it, and this "
                f"error will then say how to convert the file")
    return (f"{what}, not JSONL (one JSON object per line); convert it, e.g. python -c \"{how}\" "
            f"{shlex.quote(path)} > rows.jsonl")


def _one_line(path):
    """Whether the file holds no more than one line that is not blank."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return len(list(itertools.islice((x for x in f if x.strip()), 2))) < 2


def _json_values(path):
    """(the file's first MiB of text, the (start, end) of each JSON value in it back to back, as
    TO_JSONL's commands read them, the JSONDecodeError that stopped them, or None where they fill
    it). Whether the first value goes on past the line it starts on tells a document from a JSONL
    row: a JSON string holds no newline, so any newline in a value is between its tokens. A value
    that does not end within that MiB is no answer (an error): then the first line keeps its own."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(1 << 20)
    gap, decoder, values = re.compile(r"\s*"), json.JSONDecoder(), []
    at = gap.match(head).end()
    while at < len(head):
        try:
            end = decoder.raw_decode(head, at)[1]
        except json.JSONDecodeError as e:
            return head, values, e
        values.append((at, end))
        at = gap.match(head, end).end()
    return head, values, None


def _comma_in(head, error):
    """(the comma's index, the '}' or ']' after it, its line, its column) where a JSON document's
    text `head` stopped decoding (error) at a trailing comma before a closer, else None: a comma
    before the text's end is no answer, as the MiB read may end anywhere. Lines count from the
    file's first (blank ones too, as a row's 'file:N' does), columns from 1."""
    found = error and trailing_comma(head, error.pos)
    if not found or not found[1]:
        return None
    at, after = found
    return at, after, head.count("\n", 0, at) + 1, at - head.rfind("\n", 0, at)


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

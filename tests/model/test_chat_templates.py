"""Chat templates render as transformers renders them (strings for six model families, strings and
token ids for SmolLM2-135M-Instruct's own template), the prompt/response split puts the end of turn in
the response, templates run sandboxed, and every way a template reaches us (tokenizer_config.json,
chat_template.jinja, GGUF metadata, a named format) loads, saves back unchanged, or fails naming
the file. No model weights are read: SmolLM2's tokenizer comes from the GGUF metadata alone.
transformers runs in its own process (the `hf` fixture, tests/hf_reference.py)."""
import json
import os

import pytest
from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

from model.chat_template import FORMATS, TemplateError
from model.files import CheckpointError
from model.tokenizer import MessagesError, Tokenizer
from tests.helpers import ROOT

SHARED = os.path.join(ROOT, "..", "shared", "chat_templates")
# the special tokens each family's tokenizer_config.json gives its template
FAMILIES = {
    "llama-3.2-instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen2.5-instruct": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "gemma-it": {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
    "mistral-instruct": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "phi-3": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
    "zephyr": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
}
SYSTEM = {"role": "system", "content": "You are terse."}
CONVERSATIONS = {
    "one_turn": [{"role": "user", "content": "What is the capital of France?"}],
    "one_turn_system": [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
    "two_turns": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. "},
                  {"role": "user", "content": "  Name a colour.\n"}],
    "answered": [SYSTEM, {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
}


def byte_tokenizer(specials=()):
    """A small byte-level BPE (no merges) with `specials` as special added tokens."""
    vocab = {chr(c): i for i, c in enumerate(range(33, 127))} | {"Ġ": 94, "Ċ": 95}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


@pytest.fixture(scope="module")
def smollm2_ref(smollm2, hf):
    """transformers' tokenizer around the same `tokenizers` tokenizer, template and special tokens."""
    return hf.tokenizer(smollm2.tok, smollm2.chat_template, smollm2.special_tokens)


# -- rendering equals transformers ---------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_shared_templates_render_as_transformers(family, conv, add_generation_prompt, hf):
    path = os.path.join(SHARED, f"{family}.jinja")
    if not os.path.exists(path):
        pytest.skip(f"{path} not found (shared/ sits beside the repository in CI)")
    with open(path, encoding="utf-8") as f:
        template = f.read()
    if family == "gemma-it" and conv in ("one_turn_system", "answered"):
        pytest.skip("Gemma refuses system messages: test_gemma_system_message_is_a_template_error")
    hf_tok = byte_tokenizer()
    ours = Tokenizer(hf_tok, chat_template=template, special_tokens=FAMILIES[family])
    ref = hf.tokenizer(hf_tok, template, FAMILIES[family])
    msgs = CONVERSATIONS[conv]
    want = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(msgs, add_generation_prompt) == want


@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_renders_and_tokenizes_as_transformers(smollm2, smollm2_ref, conv, add_generation_prompt):
    msgs = CONVERSATIONS[conv]
    want = smollm2_ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert smollm2.apply_chat_template(msgs, add_generation_prompt) == want
    assert smollm2.apply_chat_template(msgs, add_generation_prompt, tokenize=True) == \
        smollm2_ref.apply_chat_template(msgs, tokenize=True, add_generation_prompt=add_generation_prompt)


def test_smollm2_default_system_message_comes_from_its_template(smollm2):
    text = smollm2.apply_chat_template(CONVERSATIONS["one_turn"], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert smollm2.decode(smollm2.encode_prompt("Hi", system="Be brief."), skip_special=False) == \
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# -- the prompt / response split -----------------------------------------------------------------
ANSWERS = ["Paris.", "The capital of France is Paris.", "42", "1. red\n2. blue\n", " leading space",
           "\nleading newline", "trailing space ", "ünïcödé 🙂"]


@pytest.mark.parametrize("answer", ANSWERS)
def test_smollm2_pair_ids_equal_the_whole_conversation(smollm2, smollm2_ref, answer):
    """Prompt and response are tokenized separately; at SmolLM2's boundary (after the generation
    prompt's newline) the concatenation equals transformers' ids of the whole conversation."""
    prompt = CONVERSATIONS["one_turn"]
    p, r = smollm2.encode_pair(prompt, answer)
    assert p == smollm2.encode_prompt(prompt) == \
        smollm2_ref.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
    assert p + r == smollm2_ref.apply_chat_template(prompt + [{"role": "assistant", "content": answer}],
                                                    tokenize=True)
    assert smollm2.decode(r, skip_special=False) == answer + "<|im_end|>\n"   # the end of turn is scored
    assert r[-2] == smollm2.token_id("<|im_end|>") and smollm2.end_of_turn_id == r[-2]


def test_answer_starting_with_two_whitespace_characters_keeps_every_character(smollm2):
    """The one place the boundary does not allow equality: byte-level BPE would merge the prompt's
    final newline with the answer's leading whitespace. The split keeps the prompt ids the model is
    prompted with at sampling time, and the response ids still spell the answer exactly."""
    for answer in ("  indented", "\n\ntwo newlines"):
        p, r = smollm2.encode_pair("Hi", answer)
        assert p == smollm2.encode_prompt("Hi")
        assert smollm2.decode(p + r, skip_special=False).endswith("assistant\n" + answer + "<|im_end|>\n")


def test_response_messages_use_the_last_assistant_turn(smollm2):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "first"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": "second"}]
    assert smollm2.encode_pair("Hi", conv)[1] == smollm2.encode_pair("Hi", "second")[1]
    with pytest.raises(MessagesError, match=r"without an assistant turn \(roles: user\)") as e:
        smollm2.encode_pair("Hi", [{"role": "user", "content": "no answer here"}])
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_prompt_that_is_not_a_prefix_is_an_error_naming_the_template():
    template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}<start>{% endif %}")
    tok = Tokenizer(byte_tokenizer(), chat_template=template, template_origin="ckpt/tokenizer_config.json")
    with pytest.raises(TemplateError, match=r"ckpt/tokenizer_config\.json: the prompt rendered with "
                                            r"add_generation_prompt=True is not the beginning"):
        tok.encode_pair("Hi", "Hello")


def test_selfjudge_format_keeps_the_built_in_task_ids():
    """The named format the built-in task trains with: prompt '<|user|>\\nQ\\n<|assistant|>\\n',
    response = answer + EOS, exactly as the hand-written renderer it replaces produced."""
    hf = byte_tokenizer(["<|bos|>", "<|end|>", "<|pad|>"])
    tok = Tokenizer(hf, bos_id=hf.token_to_id("<|bos|>"), eos_id=hf.token_to_id("<|end|>"),
                    pad_id=hf.token_to_id("<|pad|>"), chat_format="selfjudge")
    p, r = tok.encode_pair([SYSTEM, {"role": "user", "content": "What is 2 + 2?"}], "4.")
    assert tok.decode(p, skip_special=False) == \
        "<|system|>\nYou are terse.\n<|user|>\nWhat is 2 + 2?\n<|assistant|>\n"
    assert r == tok.encode("4.") + [tok.eos_id]
    assert tok.stop_ids == [tok.eos_id]
    raw = Tokenizer(hf, eos_id=hf.token_to_id("<|end|>"), chat_format="raw")
    assert raw.encode_pair("Q: ", "A")[1] == raw.encode("A") + [raw.eos_id]


# -- template errors reach the user --------------------------------------------------------------
def test_gemma_system_message_is_a_template_error():
    path = os.path.join(SHARED, "gemma-it.jinja")
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    with open(path, encoding="utf-8") as f:
        tok = Tokenizer(byte_tokenizer(), chat_template=f.read(), special_tokens=FAMILIES["gemma-it"],
                        template_origin="gemma/tokenizer_config.json")
    with pytest.raises(TemplateError, match=r"gemma/tokenizer_config\.json: the chat template raised: "
                                            r"System role not supported"):
        tok.encode_pair(CONVERSATIONS["one_turn_system"], "Paris.")
    # the data layer catches it as a ValueError and names the row
    from nanoalign.data import DataError, tokenize_pair
    with pytest.raises(DataError, match=r"^train\.jsonl:7: gemma/tokenizer_config\.json: .*System role"):
        tokenize_pair(tok, CONVERSATIONS["one_turn_system"], "Paris.", 512, "train.jsonl:7")


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__ }}",
                                    "{{ messages.__class__.__base__.__subclasses__() }}",
                                    "{{ messages[0]['content'].__len__() }}",
                                    "{% set ns = namespace(__init__=1) %}"])
def test_templates_cannot_reach_python_internals(source):
    tok = Tokenizer(byte_tokenizer(), chat_template=source, template_origin="evil.jinja")
    with pytest.raises(TemplateError, match=r"evil\.jinja: the chat template tried something the "
                                            r"sandbox forbids"):
        tok.apply_chat_template(CONVERSATIONS["one_turn"])


def test_template_helpers_as_transformers_defines_them(hf):
    template = ("{{ messages | tojson }}|{{ {'k': 'é'} | tojson(indent=1) }}"
                "|{{ strftime_now('%Y') | length }}"
                "|{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}"
                "{% endfor %}|{% set ns = namespace(n=0) %}{% for m in messages %}"
                "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
                "|{% generation %}{{ tools }}{{ documents }}{% endgeneration %}")
    hf_tok = byte_tokenizer()
    msgs = CONVERSATIONS["two_turns"]
    ours = Tokenizer(hf_tok, chat_template=template).apply_chat_template(msgs)
    assert ours.split("|")[2] == "4" and ours.split("|")[3] == "user" and ours.split("|")[4] == "3"
    assert ours == hf.tokenizer(hf_tok, template).apply_chat_template(msgs)


@pytest.mark.parametrize("fields", [
    {"reasoning": "r"},                                   # an older name: both others filled
    {"thinking": "t"},                                    # gpt-oss's name: reasoning_content filled
    {"reasoning_content": "c", "thinking": "t"},          # both given: each keeps its own
    {"thinking": "t", "reasoning": "r"},                  # the first name present wins
    {"reasoning_content": None, "reasoning": "r"},        # a None is no reasoning
    {},                                                   # none: nothing added
], ids=["reasoning", "thinking", "both", "order", "none-value", "absent"])
def test_a_messages_reasoning_reaches_the_template_under_every_name_transformers_gives(fields, hf):
    """transformers 5 hands a template a message's reasoning as both 'reasoning_content' (what Qwen3-
    style templates read) and 'thinking' (gpt-oss's), from whichever of reasoning_content, thinking,
    reasoning the message has: a row's reasoning must render the same here."""
    template = ("{% for m in messages %}{{ m.role }}:{{ m.reasoning_content if m.reasoning_content is "
                "defined else '-' }}/{{ m.thinking if m.thinking is defined else '-' }}/{{ m.reasoning "
                "if m.reasoning is defined else '-' }};{% endfor %}")
    hf_tok = byte_tokenizer()
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello.", **fields}]
    ours = Tokenizer(hf_tok, chat_template=template).apply_chat_template(msgs)
    assert ours == hf.tokenizer(hf_tok, template).apply_chat_template(msgs)
    assert msgs[1] == {"role": "assistant", "content": "Hello.", **fields}     # the row is not changed


# -- where templates come from, and back ---------------------------------------------------------
def checkpoint_dir(tmp_path, **tokenizer_config):
    """A directory with a tokenizer.json and this tokenizer_config.json (no weights needed)."""
    os.makedirs(tmp_path, exist_ok=True)
    hf = byte_tokenizer(["<s>", "</s>", "<|im_end|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, **tokenizer_config}))
    return str(tmp_path)


CHATML = FORMATS["chatml"]


def test_template_sources_and_priority(tmp_path):
    d = checkpoint_dir(tmp_path, chat_template=[{"name": "tool_use", "template": "tools"},
                                                {"name": "default", "template": CHATML}])
    tok = Tokenizer.from_dir(d)
    assert tok.apply_chat_template(CONVERSATIONS["one_turn"]).startswith("<|im_start|>user\n")
    assert tok.chat_format is None and tok.end_of_turn_id == tok.token_id("<|im_end|>")
    (tmp_path / "chat_template.jinja").write_text(
        "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}")
    assert Tokenizer.from_dir(d).apply_chat_template(CONVERSATIONS["one_turn"]) == \
        "<s>What is the capital of France?</s>"                # the .jinja file wins, as in transformers


def test_saved_checkpoint_keeps_its_template_byte_for_byte(tmp_path, smollm2):
    smollm2.save(str(tmp_path / "a"))
    saved = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == smollm2.chat_template and "nanoalign_chat_format" not in saved
    again = Tokenizer.from_dir(str(tmp_path / "a"))
    again.save(str(tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())["chat_template"] == \
        smollm2.chat_template
    assert again.apply_chat_template(CONVERSATIONS["two_turns"], True) == \
        smollm2.apply_chat_template(CONVERSATIONS["two_turns"], True)
    # a list of named templates and a chat_template.jinja file come back as they were
    named = [{"name": "default", "template": CHATML}, {"name": "rag", "template": "{{ documents }}"}]
    d = checkpoint_dir(tmp_path / "c", chat_template=named)
    Tokenizer.from_dir(d).save(str(tmp_path / "c2"))
    assert json.loads((tmp_path / "c2" / "tokenizer_config.json").read_text())["chat_template"] == named
    (tmp_path / "c" / "chat_template.jinja").write_text(smollm2.chat_template + "\n")
    Tokenizer.from_dir(d).save(str(tmp_path / "c3"))
    assert Tokenizer.from_dir(str(tmp_path / "c3")).chat_template == smollm2.chat_template + "\n"


def test_named_format_is_saved_and_chosen_explicitly(tmp_path):
    d = checkpoint_dir(tmp_path)
    with pytest.raises(CheckpointError, match=r"no chat template .*\"nanoalign_chat_format\""):
        Tokenizer.from_dir(d).encode_prompt("Hi")
    assert Tokenizer.from_dir(d).encode("Hi") == Tokenizer.from_dir(d).encode("Hi")   # plain text still works
    tok = Tokenizer.from_dir(d, chat_format="selfjudge")
    tok.save(str(tmp_path / "out"))
    back = Tokenizer.from_dir(str(tmp_path / "out"))
    assert back.chat_format == "selfjudge" and back.encode_pair("Q", "A") == tok.encode_pair("Q", "A")
    saved = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == FORMATS["selfjudge"]          # transformers renders the same
    with pytest.raises(CheckpointError,
                       match=r"tokenizer_config\.json: field 'nanoalign_chat_format' is 'chatlm'"):
        Tokenizer.from_dir(checkpoint_dir(tmp_path / "bad", nanoalign_chat_format="chatlm"))


def test_old_nanoalign_checkpoints_still_load(tmp_path, smollm2):
    from model.tokenizer import _OLD_FORMAT_TEMPLATES
    d = checkpoint_dir(tmp_path / "tiny", chat_template=_OLD_FORMAT_TEMPLATES["selfjudge"],
                       nanoalign_chat_format="selfjudge", nanoalign_default_system=None)
    assert Tokenizer.from_dir(d).chat_format == "selfjudge"       # trained in the named format
    d = checkpoint_dir(tmp_path / "smol", chat_template=smollm2.chat_template,
                       nanoalign_chat_format="chatml",
                       nanoalign_default_system="You are a helpful AI assistant named SmolLM, "
                                                "trained by Hugging Face")
    tok = Tokenizer.from_dir(d)                        # its real template, default system included
    assert tok.chat_format is None and tok.apply_chat_template(CONVERSATIONS["one_turn"], True) == \
        smollm2.apply_chat_template(CONVERSATIONS["one_turn"], True)


@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.jinja"])
def test_template_that_does_not_parse_names_the_file(tmp_path, where):
    bad = "{% for m in messages %}{{ m['content'] }"
    d = checkpoint_dir(tmp_path, **({"chat_template": bad} if where == "tokenizer_config.json" else {}))
    if where == "chat_template.jinja":
        (tmp_path / where).write_text(bad)
    with pytest.raises(CheckpointError,
                       match=rf"{where.replace('.', '[.]')}: the chat template does not parse"):
        Tokenizer.from_dir(d)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "generation_config.json"])
def test_a_json_file_that_is_not_an_object_names_the_file(tmp_path, name):
    d = checkpoint_dir(tmp_path)
    (tmp_path / name).write_text('["</s>"]')
    with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}: expected a JSON object"):
        Tokenizer.from_dir(d)


def test_stop_ids_read_generation_config(tmp_path):
    d = checkpoint_dir(tmp_path, chat_template=CHATML)
    im_end, eos, s = (Tokenizer.from_dir(d).token_id(t) for t in ("<|im_end|>", "</s>", "<s>"))
    assert Tokenizer.from_dir(d).stop_ids == [eos, im_end]       # EOS, then the template's end of turn
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, s]}))
    assert Tokenizer.from_dir(d).stop_ids == [eos, im_end, s]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": s}))
    assert Tokenizer.from_dir(d).stop_ids == [eos, im_end, s]


def test_a_named_format_says_which_template_of_the_checkpoints_it_replaces(tmp_path):
    """Tokenizer.replaced, which train.py and sample.py print a note from: the checkpoint's own
    template (tokenizer_config.json's, chat_template.jinja, or its own named format) a chat_format
    replaces; None where it replaces nothing."""
    d = checkpoint_dir(tmp_path / "own", chat_template=CHATML)
    assert Tokenizer.from_dir(d, chat_format="inst").replaced == os.path.join(d, "tokenizer_config.json")
    assert Tokenizer.from_dir(d).replaced is None
    assert Tokenizer.from_dir(checkpoint_dir(tmp_path / "none"), chat_format="inst").replaced is None
    fmt = checkpoint_dir(tmp_path / "fmt", nanoalign_chat_format="selfjudge")
    assert Tokenizer.from_dir(fmt, chat_format="selfjudge").replaced is None
    assert "'nanoalign_chat_format': 'selfjudge'" in Tokenizer.from_dir(fmt, chat_format="raw").replaced

"""
Tokenizer: a Hugging Face `tokenizers` tokenizer.json plus what training and sampling need from the
checkpoint's other files: the special tokens, the chat template, and the ids that end a turn.

Chat: the checkpoint's own Jinja template (model/chat_template.py), rendered as transformers renders
it. Where it comes from: the chat_format argument (--chat_format), when given, replaces whatever the
checkpoint has; else the first found of
  1. chat_template.jinja                 (where transformers 5 saves a template; it wins there too)
  2. tokenizer_config.json "chat_template" (a string, or a list of named templates: 'default')
  3. tokenizer_config.json "nanoalign_chat_format": one of nanoalign's named fallback formats
     (chatml, inst, selfjudge, raw) for a checkpoint without a template (the built-in task's tiny
     model speaks selfjudge). Never guessed from anything else.
A GGUF file's `tokenizer.chat_template` reaches us through model/gguf_import.py.

Prompt and response of a training pair (encode_pair):
  prompt text   = render(prompt messages, add_generation_prompt=True)
  full text     = render(prompt messages + [assistant answer], add_generation_prompt=False)
  response text = full text minus the prompt text: the answer *and* what the template writes after
                  it, so the end-of-turn marker (<|im_end|>, <|eot_id|>, <end_of_turn>, <|end|>,
                  </s>) is a scored response token and the model learns to stop.
If the prompt text is not the beginning of the full text, there is no clean split: a TemplateError.
The two texts are tokenized separately and their ids concatenated: tokenizing the joined text could
merge characters across the boundary into one token that belongs to neither side, and the prompt ids
of a pair stay exactly the ids the model is prompted with when sampling (encode_prompt). With a
template the boundary sits right after the generation prompt (a newline or a special token, where
byte-level BPE splits anyway), so for SmolLM2 prompt ids + response ids equal the ids of the full
text, except for an answer that starts with two or more whitespace characters, which BPE would merge
with the prompt's final newline (tests/model/test_chat_templates.py checks both cases).

Token ids follow transformers' apply_chat_template(tokenize=True): the rendered text is encoded with
add_special_tokens=False, so a BOS appears only where the template writes {{ bos_token }}. (Only the
named formats honour tokenizer_config.json's add_bos_token, as nanoalign always did.)

The ids are tokenizer.json's, as the `tokenizers` library and transformers 4.x's fast tokenizers give
them. One known difference: for a SentencePiece-style checkpoint whose tokenizer_config.json names
LlamaTokenizer with "legacy": false (Llama-2, Mistral v0.x), transformers 5 rebuilds the tokenizer
and drops the "▁" it would put after a special token, so the ids after [INST] or </s> can differ from
ours (seen with transformers 5.25 on a small tokenizer of that kind). We keep tokenizer.json's ids:
it is the file the checkpoint ships, and transformers' rebuild of LlamaTokenizer still had open
upstream fixes in 2026.
"""
import os
from functools import cached_property

from tokenizers import Tokenizer as HFTokenizer

from model.chat_template import FORMATS, ChatTemplate, TemplateError, pick_template
from model.files import CheckpointError, atomic_write_json, read_json_if_exists, read_text

# the special tokens transformers hands a template (its SPECIAL_TOKENS_ATTRIBUTES)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")

class NoChatTemplate(CheckpointError):
    """A chat asked of a tokenizer with no chat template and no named format. The message says how to
    name one, `how`: by default the library's way, load()'s argument; a command line says its own flag
    instead (sample.py --chat_format), not a Python API its user never called."""

    def __init__(self, name, how="load(..., chat_format=...)"):
        super().__init__(
            f"{name}: no chat template (no chat_template.jinja, no 'chat_template' in "
            f"tokenizer_config.json) and no named chat format; name a fallback format with {how} "
            f"(one of {', '.join(FORMATS)}), or add the model's template to tokenizer_config.json "
            f"(or \"nanoalign_chat_format\": one of those formats)")
        self.name = name


class MessagesError(ValueError):
    """A prompt or response that is not a usable conversation (e.g. a response list without an
    assistant turn)."""


def as_messages(x, role="user"):
    """A string or a list of {"role", "content"} dicts -> a list of message dicts."""
    return [{"role": role, "content": x}] if isinstance(x, str) else list(x)


def answer_text(response):
    """The answer of a response: the string itself, or the last assistant message of a list."""
    if isinstance(response, str):
        return response
    answers = [m.get("content") for m in response if isinstance(m, dict) and m.get("role") == "assistant"]
    if not answers:
        roles = ", ".join(str(m.get("role")) if isinstance(m, dict) else type(m).__name__ for m in response)
        raise MessagesError(f"the response is a list of messages without an assistant turn (roles: "
                            f"{roles or 'none'}); the response is its last assistant message")
    return answers[-1]


def _token_ids(x):
    """generation_config/config eos_token_id: a number, a list of numbers, or absent."""
    return [] if x is None else [x] if isinstance(x, int) else [i for i in x if isinstance(i, int)]


class Tokenizer:
    def __init__(self, tok: HFTokenizer, bos_id=None, eos_id=None, pad_id=None, add_bos=False,
                 chat_format=None, chat_template=None, special_tokens=None, extra_stop_ids=(),
                 name=None, template_origin=None):
        """
        tok: the `tokenizers` tokenizer. chat_template: the checkpoint's Jinja (a string, or
        tokenizer_config.json's list of named templates); chat_format: a named fallback format
        instead (FORMATS). special_tokens: {"bos_token": "<s>", ...} as the template sees them
        (None: the tokens of bos_id/eos_id/pad_id). extra_stop_ids: more ids that end
        generation (generation_config.json). name / template_origin: for error messages.
        """
        if chat_format is not None and chat_format not in FORMATS:
            raise ValueError(f"chat_format {chat_format!r} is unknown; choose from {', '.join(FORMATS)}")
        if chat_format is not None and chat_template is not None:
            raise ValueError("give a chat_template or a named chat_format, not both")
        self.tok = tok
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.pad_id = pad_id if pad_id is not None else eos_id
        self.name = name or "tokenizer"
        self.chat_format = chat_format
        self.replaced = None     # from_dir: the checkpoint's own template a chat_format replaces
        self.chat_template = FORMATS[chat_format] if chat_format else chat_template   # saved as is
        self.extra_stop_ids = list(extra_stop_ids)
        if special_tokens is None:   # built in code from ids: name the tokens of those ids
            special_tokens = {key: tok.id_to_token(i) for key, i in (
                ("bos_token", bos_id), ("eos_token", eos_id), ("pad_token", self.pad_id)) if i is not None}
        self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}
        self.template = None
        if self.chat_template is not None:
            origin = (f"the '{chat_format}' chat format" if chat_format
                      else template_origin or f"{self.name}: chat_template")
            self.template = ChatTemplate(pick_template(self.chat_template, origin), origin)

    # -- loading and saving ---------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path, model_cfg=None, chat_format=None):
        """The tokenizer of a checkpoint directory. chat_format: use this named format instead of
        the checkpoint's template (an explicit choice; see the module docstring)."""
        tj = os.path.join(path, "tokenizer.json")
        if not os.path.exists(tj):
            raise CheckpointError(f"{tj}: missing (nanoalign needs the fast-tokenizer tokenizer.json)")
        try:
            tok = HFTokenizer.from_file(tj)
        except Exception as e:
            raise CheckpointError(f"{tj}: not a valid tokenizers file ({e})") from None
        if model_cfg is not None:   # an id past the embedding fails the first forward, naming nothing
            beyond = sorted((i, t) for t, i in tok.get_vocab().items() if i >= model_cfg.vocab_size)
            if beyond:
                n = len(beyond)
                shown = ", ".join(f"{t!r} (id {i})" for i, t in beyond[:5]) + (", ..." if n > 5 else "")
                raise CheckpointError(
                    f"{tj}: {n} token{'s have' if n > 1 else ' has'} an id the model has no embedding "
                    f"for: {shown}; its config.json says vocab_size {model_cfg.vocab_size}. Tokens "
                    f"added to a tokenizer need the embedding resized with them (transformers: "
                    f"model.resize_token_embeddings(len(tokenizer)), then save both), or this "
                    f"tokenizer is not this model's")
        tc_path = os.path.join(path, "tokenizer_config.json")
        tc = read_json_if_exists(tc_path)
        special = {}
        for key in SPECIAL_TOKENS:
            t = tc.get(key)
            t = t.get("content") if isinstance(t, dict) else t
            if isinstance(t, str):
                special[key] = t
        tid = lambda key: tok.token_to_id(special[key]) if key in special else None  # noqa: E731
        bos, eos = tid("bos_token"), tid("eos_token")
        extra = _token_ids(read_json_if_exists(os.path.join(path, "generation_config.json"))
                           .get("eos_token_id"))
        if model_cfg is not None:  # config.json is the authority on BOS when it names one
            bos = model_cfg.bos_token_id if model_cfg.bos_token_id is not None else bos
            eos = eos if eos is not None else (model_cfg.eos_ids or [None])[0]
            extra += model_cfg.eos_ids
        template, origin, fmt = _find_template(path, tc, tc_path, chat_format)
        try:
            out = cls(tok, bos_id=bos, eos_id=eos, pad_id=tid("pad_token"),
                      add_bos=bool(tc.get("add_bos_token", False)), chat_format=fmt,
                      chat_template=template, special_tokens=special, extra_stop_ids=extra,
                      name=path, template_origin=origin)
        except TemplateError as e:       # a template that does not parse: the message names the file
            raise CheckpointError(str(e)) from None
        # a named format chosen over the checkpoint's own template: where that template was, so a
        # command line can say it is not used (a template's default system prompt goes with it)
        own, own_origin, own_fmt = _find_template(path, tc, tc_path, None) if chat_format else (None,) * 3
        out.replaced = own_origin if own is not None else (
            f"{tc_path} ('nanoalign_chat_format': {own_fmt!r})" if own_fmt not in (None, chat_format) else None)
        return out

    def save(self, path):
        """tokenizer.json + tokenizer_config.json (special tokens, the chat template exactly as
        loaded, and the named format if there is one), readable by transformers."""
        os.makedirs(path, exist_ok=True)
        self.tok.save(os.path.join(path, "tokenizer.json"))
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens,
              "add_bos_token": self.add_bos, "model_max_length": 1 << 30}
        if self.chat_template is not None:
            tc["chat_template"] = self.chat_template
        if self.chat_format is not None:
            tc["nanoalign_chat_format"] = self.chat_format
        atomic_write_json(tc, os.path.join(path, "tokenizer_config.json"))

    # -- text <-> ids ---------------------------------------------------------------------------
    @property
    def vocab_size(self):
        return self.tok.get_vocab_size()

    def encode(self, text):
        """Ids of `text`; special tokens written in it (<|im_end|>) become their ids, no BOS added."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special=True):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, text):
        """The id of `text` if it is exactly one token, else None."""
        ids = self.encode(text)
        return ids[0] if len(ids) == 1 else None

    # -- chat -----------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        """As transformers' tokenizer.apply_chat_template: the rendered string, or with tokenize=True
        its ids (encoded with add_special_tokens=False; transformers 5 returns them in a dict unless
        told return_dict=False)."""
        if self.template is None:
            raise NoChatTemplate(self.name)
        text = self.template.render(list(messages), add_generation_prompt, self.special_tokens)
        return self.encode(text) if tokenize else text

    def _conversation(self, prompt, system):
        msgs = as_messages(prompt)
        return msgs if system is None else [{"role": "system", "content": system}] + msgs

    def _with_bos(self, ids):
        # templates write their own BOS; the named formats prepend it when add_bos_token says so
        if self.chat_format and self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            return [self.bos_id] + ids
        return ids

    def encode_prompt(self, prompt, system=None):
        """Ids of a prompt (string or messages, optionally after a system message) up to where the
        assistant starts speaking: the rendering with add_generation_prompt=True."""
        return self._with_bos(self.apply_chat_template(self._conversation(prompt, system),
                                                       add_generation_prompt=True, tokenize=True))

    def encode_pair(self, prompt, response, system=None):
        """(prompt_ids, response_ids) of a training pair (see the module docstring). prompt: a
        string or messages; response: a string or messages (the last assistant turn is the answer)."""
        msgs = self._conversation(prompt, system)
        answer = {"role": "assistant", "content": answer_text(response)}
        prompt_text = self.apply_chat_template(msgs, add_generation_prompt=True)
        full_text = self.apply_chat_template(msgs + [answer], add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            i = next(i for i, (a, b) in enumerate(zip(prompt_text, full_text + "\0")) if a != b)
            raise TemplateError(
                f"{self.template.origin}: the prompt rendered with add_generation_prompt=True is not "
                f"the beginning of the conversation rendered with the answer (they differ at "
                f"character {i}: {prompt_text[i:i + 30]!r} vs {full_text[i:i + 30]!r}), so prompt "
                f"and response tokens cannot be split")
        return (self._with_bos(self.encode(prompt_text)), self.encode(full_text[len(prompt_text):]))

    def encode_response(self, response, add_eos=True, prompt=""):
        """Response ids: as in encode_pair (answer + the template's end of turn), or with
        add_eos=False the answer's ids alone."""
        if not add_eos:
            return self.encode(answer_text(response))
        return self.encode_pair(prompt, response)[1]

    # -- where generation stops -----------------------------------------------------------------
    @cached_property
    def end_of_turn_id(self):
        """The first special token the template writes after an answer (<|im_end|>, <|eot_id|>,
        <end_of_turn>, <|end|>, </s>, ...), found by rendering a probe conversation; None if none."""
        if self.template is None:
            return None
        try:
            msgs = [{"role": "user", "content": "Hi"}]
            prompt_text = self.apply_chat_template(msgs, add_generation_prompt=True)
            full = self.apply_chat_template(msgs + [{"role": "assistant", "content": "Hello"}])
        except (ValueError, CheckpointError):   # a template that needs more than a plain turn
            return None
        response = full[len(prompt_text):]
        if "Hello" not in response:
            return None
        after = response[response.index("Hello") + len("Hello"):]
        special = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        return next((i for i in self.encode(after) if i in special), None)

    @property
    def stop_ids(self):
        """Ids that end a sampled answer: EOS, the template's end-of-turn token, and the
        eos_token_id of generation_config.json / config.json (a number or a list)."""
        ids = [self.eos_id, self.end_of_turn_id, *self.extra_stop_ids]
        return list(dict.fromkeys(i for i in ids if i is not None))


# What nanoalign wrote as `chat_template` beside "nanoalign_chat_format" before it rendered templates
# (2026-11): a checkpoint carrying one of these was trained in that named format and loads as it.
_OLD_FORMAT_TEMPLATES = {
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
               "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "inst": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + "
             "m['content'] + ' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] "
             "+ eos_token }}{% endif %}{% endfor %}"),
    "selfjudge": ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] }}"
                  "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
    "raw": ("{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}"
            "{{ eos_token }}{% endif %}{% endfor %}"),
}


def _find_template(path, tc, tc_path, chat_format):
    """(chat_template, where it came from, named format) of a checkpoint directory; exactly one of
    the template and the format is set, or neither (a tokenizer without chat)."""
    if chat_format is not None:
        return None, None, chat_format
    jinja_path = os.path.join(path, "chat_template.jinja")
    if os.path.exists(jinja_path):
        return read_text(jinja_path), jinja_path, None
    template, saved = tc.get("chat_template"), tc.get("nanoalign_chat_format")
    if saved is not None and saved not in FORMATS:
        raise CheckpointError(f"{tc_path}: field 'nanoalign_chat_format' is {saved!r}; choose from "
                              f"{', '.join(FORMATS)}")
    if saved is not None and (template is None or template in (FORMATS[saved], _OLD_FORMAT_TEMPLATES[saved])):
        return None, None, saved              # nanoalign's own format, saved by nanoalign
    return template, tc_path, None            # the checkpoint's template (or none at all)

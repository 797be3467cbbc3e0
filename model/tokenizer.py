"""
Tokenizer and chat templates.

`Tokenizer` wraps a Hugging Face `tokenizers` tokenizer.json plus the few facts from
tokenizer_config.json / config.json that training needs: the BOS/EOS ids, whether BOS is prepended,
and which chat format the checkpoint speaks.

Chat templates are rendered in plain Python, not Jinja: a reader can see exactly which string the
model is trained on, and no template engine runs code from a downloaded file. We recognize the
format from the checkpoint's Jinja `chat_template` (or take `chat_format` explicitly):

  chatml     <|im_start|>user\\n{u}<|im_end|>\\n<|im_start|>assistant\\n{a}<|im_end|>   (Qwen, SmolLM2)
  inst       <s>[INST] {sys}\\n\\n{u} [/INST] {a}</s>                                (Llama-2, Mistral)
  selfjudge  <|system|>\\n{sys}\\n<|user|>\\n{u}\\n<|assistant|>\\n{a}[EOS]\\n          (Self-Judge A.5)
  raw        {u}{a}[EOS]                                                          (no template)

Prompts and responses are tokenized separately and their ids concatenated (METHODS.md): tokenizing the
joined text can merge tokens across the boundary and shift the response mask by one.
"""
import json
import os

from tokenizers import Tokenizer as HFTokenizer

FORMATS = ("chatml", "inst", "selfjudge", "raw")

# Jinja equivalents, written into tokenizer_config.json on save so `transformers` renders the same.
JINJA = {
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


def detect_format(chat_template):
    """Guess our format name from a checkpoint's Jinja chat template (None -> raw)."""
    if not chat_template:
        return "raw"
    if isinstance(chat_template, list):  # some configs hold a list of named templates
        chat_template = next((t["template"] for t in chat_template if t.get("name") == "default"),
                             chat_template[0]["template"])
    if "<|im_start|>" in chat_template:
        return "chatml"
    if "[INST]" in chat_template:
        return "inst"
    if "<|user|>" in chat_template:
        return "selfjudge"
    return "raw"


def as_messages(x, role="user"):
    """A string or a list of {"role", "content"} dicts -> a list of message dicts."""
    return [{"role": role, "content": x}] if isinstance(x, str) else list(x)


class Tokenizer:
    def __init__(self, tok: HFTokenizer, bos_id=None, eos_id=None, pad_id=None, add_bos=False,
                 chat_format="raw", default_system=None, chat_template=None):
        assert chat_format in FORMATS, f"chat_format must be one of {FORMATS}"
        self.tok = tok
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.pad_id = pad_id if pad_id is not None else eos_id
        self.chat_format, self.default_system = chat_format, default_system
        self.chat_template = chat_template  # the checkpoint's own Jinja, written back on save

    # -- loading and saving ---------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path, model_cfg=None):
        from model.checkpoint import CheckpointError, read_json  # one place for file errors
        tj = os.path.join(path, "tokenizer.json")
        if not os.path.exists(tj):
            raise CheckpointError(f"{tj}: missing (nanoalign needs the fast-tokenizer tokenizer.json)")
        try:
            tok = HFTokenizer.from_file(tj)
        except Exception as e:
            raise CheckpointError(f"{tj}: not a valid tokenizers file ({e})") from None
        tc_path = os.path.join(path, "tokenizer_config.json")
        tc = read_json(tc_path) if os.path.exists(tc_path) else {}

        def tid(key):
            t = tc.get(key)
            t = t.get("content") if isinstance(t, dict) else t
            return tok.token_to_id(t) if t else None

        bos = tid("bos_token")
        eos = tid("eos_token")
        if model_cfg is not None:  # config.json is the authority on ids when the config has them
            bos = model_cfg.bos_token_id if model_cfg.bos_token_id is not None else bos
            eos = eos if eos is not None else (model_cfg.eos_ids or [None])[0]
        fmt = tc.get("nanoalign_chat_format") or detect_format(tc.get("chat_template"))
        return cls(tok, bos_id=bos, eos_id=eos, pad_id=tid("pad_token"),
                   add_bos=bool(tc.get("add_bos_token", False)), chat_format=fmt,
                   default_system=tc.get("nanoalign_default_system"),
                   chat_template=tc.get("chat_template"))

    def save(self, path):
        self.tok.save(os.path.join(path, "tokenizer.json"))
        name = lambda i: None if i is None else self.tok.id_to_token(i)  # noqa: E731
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(self.bos_id),
              "eos_token": name(self.eos_id), "pad_token": name(self.pad_id),
              "add_bos_token": self.add_bos,
              "chat_template": self.chat_template or JINJA[self.chat_format],
              "nanoalign_chat_format": self.chat_format,
              "nanoalign_default_system": self.default_system, "model_max_length": 1 << 30}
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(tc, f, indent=2)

    # -- text <-> ids ---------------------------------------------------------------------------
    @property
    def vocab_size(self):
        return self.tok.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special=True):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, text):
        """The id of `text` if it is exactly one token, else None."""
        ids = self.encode(text)
        return ids[0] if len(ids) == 1 else None

    # -- chat templates -------------------------------------------------------------------------
    def eos_text(self):
        return self.tok.id_to_token(self.eos_id) if self.eos_id is not None else ""

    def render_prompt(self, prompt, system=None):
        """Render a prompt (string or messages) up to where the assistant starts speaking."""
        msgs = as_messages(prompt)
        if system is None and self.default_system and not any(m["role"] == "system" for m in msgs):
            system = self.default_system
        if system is not None:
            msgs = [{"role": "system", "content": system}] + msgs
        eos, f, out = self.eos_text(), self.chat_format, []
        sys_text = ""
        for m in msgs:
            role, c = m["role"], m["content"]
            if f == "chatml":
                out.append(f"<|im_start|>{role}\n{c}<|im_end|>\n")
            elif f == "selfjudge":
                out.append(f"<|{role}|>\n{c}" + (eos if role == "assistant" else "") + "\n")
            elif f == "inst":
                if role == "system":
                    sys_text = c + "\n\n"
                elif role == "user":
                    out.append(f"[INST] {sys_text}{c} [/INST]")
                    sys_text = ""
                else:
                    out.append(f" {c}{eos}")
            else:
                out.append(c + (eos if role == "assistant" else ""))
        if f == "chatml":
            out.append("<|im_start|>assistant\n")
        elif f == "selfjudge":
            out.append("<|assistant|>\n")
        elif f == "inst":
            out.append(" ")
        return "".join(out)

    def encode_prompt(self, prompt, system=None):
        ids = self.encode(self.render_prompt(prompt, system))
        if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def encode_response(self, response, add_eos=True):
        """Response ids; the EOS that ends the turn is part of the response (METHODS.md)."""
        if not isinstance(response, str):  # a list of messages: the last assistant turn
            response = [m for m in response if m["role"] == "assistant"][-1]["content"]
        ids = self.encode(response)
        return ids + [self.eos_id] if add_eos and self.eos_id is not None else ids

"""
Chat templates: a checkpoint's own Jinja `chat_template`, rendered the way transformers'
`apply_chat_template(messages, tokenize=False)` renders it, inside jinja2's sandbox.

    template = ChatTemplate(source, origin="ckpt/tokenizer_config.json")
    template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                    special_tokens={"bos_token": "<s>", "eos_token": "</s>"})   # -> str

What a template sees is what transformers gives it:
  variables  messages (each a plain dict, keys whose value is None dropped, its reasoning under
             both 'reasoning_content' and 'thinking': reasoning_aliased), add_generation_prompt,
             tools=None, documents=None, and the special tokens of tokenizer_config.json
             (bos_token, eos_token, unk_token, pad_token, ...) as strings
  helpers    raise_exception(msg), strftime_now(fmt), tojson (json.dumps, non-ASCII kept),
             namespace(...), dict(...), {% break %} / {% continue %}, {% generation %} blocks
  settings   trim_blocks=True, lstrip_blocks=True (a newline after a block tag is dropped, and so is
             the indentation before one)

A template is a downloaded program, so it runs in jinja2's ImmutableSandboxedEnvironment: no access
to underscore attributes (`''.__class__`), no mutation of lists and dicts. Whatever goes wrong while
rendering (raise_exception, an unsafe access, an attribute or item of an undefined variable) is a
`TemplateError`, a ValueError whose message names the template; the data layer prefixes it with the
row's file:line. An undefined variable printed alone renders as '', as jinja2's default (which
transformers keeps) has it.

FORMATS: nanoalign's own named templates, for checkpoints that have no template of their own (the
built-in task speaks `selfjudge`). They are ordinary templates, rendered the same way.
"""
import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox


class TemplateError(ValueError):
    """A chat template could not render a conversation; the message names the template."""


# The named fallback formats (chosen explicitly, never guessed). `selfjudge` ends the final assistant
# turn at EOS without the newline that separates turns, so the response tokens are answer + EOS.
FORMATS = {
    # <|im_start|>user\n{u}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n      (Qwen, SmolLM2)
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
               "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|im_start|>assistant\n' }}{% endif %}"),
    # <s>[INST] {sys}\n\n{u} [/INST] {a}</s>                                   (Llama-2, Mistral)
    "inst": ("{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
             "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
             "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.system + m['content'] + ' [/INST]' }}"
             "{% set ns.system = '' %}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}"
             "{% endfor %}"),
    # <|system|>\n{sys}\n<|user|>\n{u}\n<|assistant|>\n{a}[EOS]                  (Self-Judge A.5)
    "selfjudge": ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] }}"
                  "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
                  "{% if not (loop.last and m['role'] == 'assistant') %}{{ '\n' }}{% endif %}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
    # {u}{a}[EOS]                                                                (no template)
    "raw": ("{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}"
            "{{ eos_token }}{% endif %}{% endfor %}"),
}
# --chat_format (train.py's, sample.py's, the instruct task's build): one wording and one list of
# choices for every command line that loads a checkpoint to chat with
CHAT_FORMAT_HELP = ("'' = the checkpoint's own chat template; a named format replaces it (for a "
                    "checkpoint that has none): 'chatml' (SmolLM2, Qwen), 'inst' (Llama-2, Mistral), "
                    "'selfjudge' (the Self-Judge paper's), 'raw' (the text alone)")
CHAT_FORMATS = ("",) + tuple(FORMATS)


# -- the helpers a template may call ---------------------------------------------------------------
def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' filter, not Jinja's: no HTML escaping, non-ASCII kept, json.dumps' options
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names, as transformers' does."""

    def __init__(*args, **kwargs):
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r}: underscore names "
                                                  f"are not allowed")


class _Dict:
    """`dict(...)` without the type itself (no dict.__class__ and friends to reach for)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Generation(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %}: transformers marks assistant text with it (for its
    assistant-token mask); rendering it is rendering its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


@lru_cache(maxsize=1)
def _environment():
    if tuple(int(x) for x in jinja2.__version__.split(".")[:3] if x.isdigit()) < (3, 1, 6):
        raise ImportError(f"chat templates need jinja2 >= 3.1.6 (older sandboxes have known escapes); "
                          f"this is {jinja2.__version__}: pip install -U jinja2")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       namespace=_Namespace, dict=_Dict())
    return env


@lru_cache(maxsize=64)
def _compile(source):
    return _environment().from_string(source)


def pick_template(value, origin):
    """A tokenizer_config.json `chat_template`: a string, or a list of {"name", "template"} of which
    transformers uses the one named 'default'."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(t, dict) and "template" in t for t in value):
        named = {t.get("name"): t["template"] for t in value}
        if "default" in named:
            return named["default"]
        raise TemplateError(f"{origin}: field 'chat_template' lists templates {sorted(map(str, named))} "
                            f"but none is named 'default'")
    raise TemplateError(f"{origin}: field 'chat_template' must be a string or a list of "
                        f"{{\"name\", \"template\"}} objects, got {type(value).__name__}")


# the names a message's reasoning goes by, the one most templates read (Qwen3's) first
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def reasoning_aliased(m):
    """As transformers 5 passes a message: the first of REASONING_FIELDS it has becomes its
    'reasoning_content', and its 'thinking' unless it has its own (gpt-oss templates read that)."""
    r = next((m[k] for k in REASONING_FIELDS if m.get(k) is not None), None)
    return m if r is None else {"thinking": r, **m, "reasoning_content": r}


class ChatTemplate:
    def __init__(self, source, origin):
        """source: the Jinja text; origin: where it came from, for error messages (a file path, or
        "the 'selfjudge' chat format"). A template that does not parse is a TemplateError here."""
        self.source, self.origin = source, origin
        try:
            self._template = _compile(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{origin}: the chat template does not parse (template line "
                                f"{e.lineno}: {e.message})") from None

    def render(self, messages, add_generation_prompt=False, special_tokens=None):
        """messages: list of {"role", "content", ...} dicts -> the rendered string."""
        if not messages:
            raise TemplateError(f"{self.origin}: cannot render an empty conversation")
        # plain dicts without None values, as transformers passes them (a template tests `is defined`),
        # a message's reasoning under each name templates read it by
        msgs = [reasoning_aliased({k: v for k, v in m.items() if v is not None}) for m in messages]
        try:
            return self._template.render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                         tools=None, documents=None, **(special_tokens or {}))
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(f"{self.origin}: the chat template tried something the sandbox "
                                f"forbids ({e})") from None
        except jinja2.TemplateError as e:        # raise_exception(...), undefined.attr
            raise TemplateError(f"{self.origin}: the chat template raised: {e.message}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise TemplateError(f"{self.origin}: the chat template failed: "
                                f"{type(e).__name__}: {e}") from None

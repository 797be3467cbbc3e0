"""The judge's two labels and the position swap (nanoalign/judge.py), on the built-in task's
tokenizer: labels must be single known tokens, the swapped probabilities of a pair and of its swap
sum to one, and a judge biased to a position is neutral after the swap."""
import pytest
import torch
from hypothesis import given, strategies as st
from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

from model.tokenizer import Tokenizer
from nanoalign.judge import TEMPLATES, JudgeError, JudgeTemplate, first_probs, label_ids, swapped_probs
from nanoalign.tasks import arith as task
from tests.helpers import small_model

TOK = task.build_tokenizer()
text = st.text(alphabet="abcxyz 0123456789.+=", min_size=1, max_size=16)


@given(seed=st.integers(0, 50), x=text, a=text, b=text,
       name=st.sampled_from(["compact", "compact_principle", "compact_rationale"]))
def test_swapped_probabilities_sum_to_one(seed, x, a, b, name):
    model = small_model(seed).eval()
    t = TEMPLATES[name]
    items = [(x, a, b, "correct", "the sum is right"), (x, b, a, "correct", "the sum is right")]
    p = swapped_probs(model, TOK, t, items)
    assert abs(p[0].item() + p[1].item() - 1) < 1e-6
    raw = first_probs(model, TOK, t, items)
    assert ((raw > 0) & (raw < 1)).all()                  # a real softmax over the two labels


class FirstPositionJudge(torch.nn.Module):
    """A 'model' that always puts its mass on the first position's label token."""

    def __init__(self, label_id, vocab=264):
        super().__init__()
        self.lm_head = torch.nn.Linear(1, vocab, bias=False)
        self.label_id = label_id

    def forward(self, ids, mask):
        return torch.zeros(ids.shape[0], ids.shape[1], 1)

    def logits(self, h):
        out = torch.zeros(h.shape[0], self.lm_head.out_features)
        out[:, self.label_id] = 30.0
        return out


@given(x=text, a=text, b=text)
def test_position_biased_judge_is_neutral_after_the_swap(x, a, b):
    t = TEMPLATES["compact"]
    _, (ia, _) = label_ids(TOK, t)
    m = FirstPositionJudge(ia)
    assert first_probs(m, TOK, t, [(x, a, b)])[0].item() > 0.999
    assert swapped_probs(m, TOK, t, [(x, a, b)])[0].item() == pytest.approx(0.5, abs=1e-6)


def _wordlevel_tok():
    vocab = {w: i for i, w in enumerate(["[UNK]", "Better:", "A", "B", "Which", "<eos>", "<pad>"])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(hf, eos_id=5, pad_id=6, chat_format="raw")


def test_labels_must_be_single_known_tokens():
    with pytest.raises(JudgeError, match="'multi'"):     # 'First' is 5 byte tokens
        label_ids(TOK, JudgeTemplate("multi", "{prompt} {a} {b}", "Better: {label}", ("First", "Second")))
    wl = _wordlevel_tok()
    assert label_ids(wl, TEMPLATES["compact"])[1] == (2, 3)
    with pytest.raises(JudgeError, match="'unknown'"):   # 'Z' is not in this vocabulary
        label_ids(wl, JudgeTemplate("unknown", "{prompt} {a} {b}", "Better: {label}", ("A", "Z")))

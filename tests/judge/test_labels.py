"""The judge's two labels (nanoalign/judge.py): each must be one token the tokenizer knows. (What the
judge reads at them, the position swap included, is tests/judge/test_probs.py's: there a stub judge
with a position bias and a preference of its own is held to its rule's numbers. Two tests here, a
pair's swapped probabilities summing to one and a position-biased judge neutral after the swap,
passed with the swap taken out, and went.)"""
import pytest
from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

from model.tokenizer import Tokenizer
from nanoalign.judge import TEMPLATES, JudgeError, JudgeTemplate, label_ids
from nanoalign.tasks import arith as task

TOK = task.build_tokenizer()

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

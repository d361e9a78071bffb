"""GSM8K answer extraction and matching, as lm-eval's gsm8k filters and exact_match do."""

import pytest

from learnforget.evaluate.tasks import gsm8k

GOLD = "She pays 3 * $1,000 = $<<3*1000=3000>>3,000.\n#### 3000"


@pytest.mark.parametrize("completion, strict, flexible, strict_ok, flexible_ok", [
    (" She pays $3,000 in total.\n#### 3,000", "3,000", "3,000", 1.0, 1.0),          # commas
    (" The total is 3000.\n#### 3000.", "3000.", "3000.", 1.0, 1.0),                 # trailing dot (regex keeps it, match drops it)
    (" So the answer is $3,000.", "[invalid]", "$3,000.", 0.0, 1.0),                 # no "####": only flexible; $ and . ignored
    (" 2 + 2 = 4 and then 3000 - 1 = 2999", "[invalid]", "2999", 0.0, 0.0),         # last number wins
    (" #### -5\nthen 3000", "-5", "3000", 0.0, 1.0),                                  # strict takes the first #### match
    (" I do not know", "[invalid]", "[invalid]", 0.0, 0.0),
    (" 7 apples", "[invalid]", "7", 0.0, 0.0),                                        # one-digit numbers via the second group
])
def test_extraction_and_match(completion, strict, flexible, strict_ok, flexible_ok):
    s = gsm8k.score(completion, GOLD)
    assert (s["strict"], s["flexible"]) == (strict, flexible)
    assert (s["strict-match"], s["flexible-extract"]) == (strict_ok, flexible_ok)
    assert s["gold"] == "3000"


def test_fewshot_prompt_format():
    shots = [gsm8k.Problem("t0", "Q one?", "A one.\n#### 1"), gsm8k.Problem("t1", "Q two?", "A two.\n#### 2")]
    p = gsm8k.prompt(gsm8k.Problem("x", "Q three?", "..."), "5shot", None, shots)
    assert p == "Question: Q one?\nAnswer: A one.\n#### 1\n\nQuestion: Q two?\nAnswer: A two.\n#### 2\n\nQuestion: Q three?\nAnswer:"


def test_chat_prompt_uses_template():
    from learnforget import models

    _, tok = models.load("tiny-random-llama")
    p = gsm8k.prompt(gsm8k.Problem("x", "How many?", "..."), "chat", tok, [])
    assert p == "<s>user\nQuestion: How many?\nAnswer:</s>\n<s>assistant\n"
    assert gsm8k.default_mode(tok) == "chat"
    assert gsm8k.stop_strings(tok) == ["Question:", "</s>", "<|im_end|>"]

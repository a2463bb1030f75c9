"""Templates and label tokenisation (tokenizer only)."""

from __future__ import annotations

import pytest

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.prompts import TEMPLATES, get_template, label_token_ids


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return tiny_llama[0].tokenizer


def test_chat_template_has_system_user_and_answer_cue(tok):
    s = get_template("chat").render("A: hi\nB: hello", EKMAN6, tok)
    assert s.startswith("<|im_start|>system\nYou are a helpful assistant that predicts emotions")
    assert "[anger, disgust, fear, happiness, sadness, surprise]" in s
    assert "<|im_start|>user\nGiven the following dialogue" in s and "A: hi\nB: hello" in s
    assert s.endswith("<|im_start|>assistant\nEmotion:")
    assert get_template("chat_lee").render("x", EKMAN6, tok).endswith("<|im_start|>assistant\n")


def test_fewshot_raw_elicit(tok):
    f = get_template("fewshot").render("The cake burned.", EKMAN6, tok)
    assert f.count("\nEmotion: ") == 6 and f.endswith("Text: The cake burned.\nEmotion:")
    f2 = get_template("fewshot").render("x", ["anger", "fear"], tok)
    assert f2.count("\nEmotion: ") == 2  # demos restricted to the label scheme
    assert get_template("raw").render("just this", EKMAN6, tok) == "just this"
    e = get_template("elicit").render("You lost your keys.", EKMAN6, tok, emotion="anger")
    assert "clearly express anger" in e and "You lost your keys." in e
    assert "express" not in get_template("elicit").render("You lost your keys.", EKMAN6, tok)


def test_user_templates(tok):
    t = get_template("Text: {text}\nLabels: {labels}\nAnswer:")
    assert t.render("hi", ["a", "b"], tok) == "Text: hi\nLabels: a, b\nAnswer:" and t.label_space
    assert not get_template("{text} =>").label_space
    c = get_template("chat:Which emotion? {text}")
    assert "<|im_start|>user\nWhich emotion? hi<|im_end|>" in c.render("hi", EKMAN6, tok)
    with pytest.raises(EmocircuitsError, match="Unknown template 'nope'; use one of chat"):
        get_template("nope")


def test_label_token_ids(tok):
    first, full, shared = label_token_ids(tok, EKMAN6)
    assert not shared and all(len(f) == 1 for f in full)  # SmolLM2: " anger" etc. are single tokens
    assert tok.decode(first[0]) == " anger"
    first2, full2, _ = label_token_ids(tok, EKMAN6, leading_space=False)
    assert any(len(f) > 1 for f in full2)
    _, _, shared3 = label_token_ids(tok, ["sad", "sadness"], leading_space=False)
    assert shared3  # "s|ad" and "s|ad|ness" share a first token
    assert set(TEMPLATES) >= {"chat", "fewshot", "elicit", "raw"}


def test_chat_without_chat_template_falls_back(tiny_gpt2):
    tok = tiny_gpt2[0].tokenizer
    if getattr(tok, "chat_template", None):
        pytest.skip("tokenizer has a chat template")
    with pytest.warns(UserWarning, match="no chat template"):
        s = get_template("chat").render("x", EKMAN6, tok)
    assert s.startswith("System: ") and s.endswith("Assistant: Emotion:")


def test_chat_fewshot_renders_demos_and_cue(tok):
    from emocircuits.core.prompts import CHAT_DEMOS

    for name, demos in (("chat_fewshot", CHAT_DEMOS[:6]), ("chat_fewshot2", CHAT_DEMOS)):
        s = get_template(name).render("The cake burned.", EKMAN6, tok)
        assert s.count("<|im_start|>assistant\nEmotion: ") == len(demos)
        assert all(f"Text: {d}<|im_end|>\n<|im_start|>assistant\nEmotion: {y}<|im_end|>" in s for d, y in demos)
        assert s.endswith("<|im_start|>user\nText: The cake burned.<|im_end|>\n<|im_start|>assistant\nEmotion:")
        assert "Answer with one word from: anger, disgust, fear, happiness, sadness, surprise." in s
    assert sorted(y for _, y in CHAT_DEMOS[:6]) == list(EKMAN6)
    two = get_template("chat_fewshot2").render("x", ["anger", "fear"], tok)
    assert two.count("Emotion: ") == 4 and two.endswith("Emotion:")  # only the scheme's labels' demos


def test_user_system_prompt_matches_apply_chat_template(tiny_llama, tok):
    from emocircuits.core.readout import LabelReadout

    system, user = "You rate feelings. Options: {labels}.", "What does this person feel?\n{text}"
    t = get_template(user, system=system)
    assert get_template("chat:" + user, system=system) == t and t.kind == "chat"
    ids = LabelReadout(tiny_llama[0], EKMAN6, t).encode(["I lost my keys."])[0]
    msgs = [{"role": "system", "content": "You rate feelings. Options: anger, disgust, fear, happiness, sadness, surprise."},
            {"role": "user", "content": "What does this person feel?\nI lost my keys."}]
    ref = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    assert ids == list(ref["input_ids"] if hasattr(ref, "keys") else ref)  # newer transformers: a BatchEncoding
    own = get_template("chat_short", system="Be brief.").render("hi", EKMAN6, tok)
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>") and own.endswith("Emotion:")
    with pytest.raises(EmocircuitsError, match="takes no system prompt"):
        get_template("fewshot", system="Be brief.")

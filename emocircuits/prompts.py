"""Prompt templates (chat classification, few-shot, elicitation, raw, user strings) and label tokens.

Label form: every built-in classification template ends with an answer cue that ends in a colon
(``Emotion:``), so the model's next token is the label *with a leading space* (``" anger"``); labels are
scored in that form (``PromptTemplate.label_space = True``). SmolLM2's tokenizer has one token for each
of the six leading-space Ekman labels, while the bare forms split into pieces (``"disgust"`` ->
``dis|g|ust``). ``chat_lee`` keeps Lee et al.'s exact prompt with no cue, so the label follows the
assistant header's newline and is scored without a leading space. A user template uses the leading-space
form when its text ends in ``:`` and the bare form otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from emocircuits.errors import EmocircuitsError

__all__ = ["PromptTemplate", "TEMPLATES", "get_template", "label_token_ids", "template_names"]

LEE_SYSTEM = (
    "You are a helpful assistant that predicts emotions from dialogues. Your task is to predict the emotion "
    "conveyed in a given dialogue.\n\nYou must strictly follow these guidelines:\n\n"
    "1. Predict one of the following emotions only: [{labels}].\n"
    "2. Output only the predicted emotion in the requested format, without any additional text, "
    "explanations, or comments."
)
LEE_USER = (
    "Given the following dialogue, predict the emotion that is most clearly conveyed. The dialogue is "
    "structured as follows:\n{text}\nYour output should be in the following format:\n[One of {labels}]"
)
SHORT_SYSTEM = "You are an expert at recognising emotions in conversations and stories."
SHORT_USER = (
    "Read the text and decide which one emotion it conveys most clearly: {labels}.\n\n"
    "Text:\n{text}\n\nAnswer with one word from the list."
)
ELICIT_SYSTEM = "You are the person in the situation the user describes. Reply in at most two sentences."
ELICIT_SYSTEM_EMOTION = (
    "You are the person in the situation the user describes. Reply in at most two sentences, "
    "and let your reply clearly express {emotion}."
)
ELICIT_USER = "{text}\nHow do you feel, and what do you say?"

# Few-shot demonstrations (written for emocircuits; deliberately not drawn from any dataset).
FEWSHOT_DEMOS: tuple[tuple[str, str], ...] = (
    ("My landlord kept my whole deposit for a scratch that was there when I moved in.", "anger"),
    ("There was a clump of someone else's hair baked into my sandwich.", "disgust"),
    ("The doctor called and asked me to come in tomorrow to talk about the scan.", "fear"),
    ("We got the keys to our first home today and danced around the empty living room.", "happiness"),
    ("It's been a month since my dog died and I still put out his bowl every morning.", "sadness"),
    ("I opened the door and my brother, who I thought was in Australia, was standing there.", "surprise"),
)


@dataclass(frozen=True)
class PromptTemplate:
    """How to turn a text into a prompt.

    ``kind``: ``"chat"`` (system + user turn through the tokenizer's chat template, then
    ``answer_prefix`` opens the assistant turn) or ``"plain"`` (``user`` formatted as is).
    ``user`` / ``system`` may use ``{text}`` and ``{labels}`` (comma-separated label list).
    ``label_space``: score labels as ``" label"`` (True) or ``"label"`` (False).
    ``add_special_tokens``: whether tokenising the rendered string adds the tokenizer's special
    tokens (False for chat renders, which already contain them).
    """

    name: str
    kind: str = "plain"
    user: str = "{text}"
    system: str | None = None
    answer_prefix: str = ""
    label_space: bool = True
    fewshot: tuple[tuple[str, str], ...] = ()
    add_special_tokens: bool = True

    def render(
        self, text: str, labels: Sequence[str], tokenizer: Any = None, *, emotion: str | None = None
    ) -> str:
        """The prompt string for ``text``. ``emotion`` fills ``{emotion}`` (elicitation templates)."""
        lab = ", ".join(labels)

        def fmt(s: str) -> str:
            return s.replace("{labels}", lab).replace("{emotion}", emotion or "").replace("{text}", text)

        if self.kind == "plain":
            if self.fewshot:  # header (text before {text}), demos in the scheme, then the query
                header = self.user.split("{text}")[0].replace("{labels}", lab)
                demos = "".join(f"Text: {d}\nEmotion: {y}\n\n" for d, y in self.fewshot if y in labels)
                return f"{header}{demos}Text: {text}\nEmotion:"
            return fmt(self.user) + self.answer_prefix
        messages = []
        system = self.system
        if emotion is None and system == ELICIT_SYSTEM_EMOTION:
            system = ELICIT_SYSTEM
        if system:
            messages.append({"role": "system", "content": fmt(system)})
        messages.append({"role": "user", "content": fmt(self.user)})
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            _warn_no_chat_template()
            head = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
            return head + ((" " + self.answer_prefix.strip()) if self.answer_prefix else "")
        return head + self.answer_prefix


_warned: set[str] = set()


def _warn_no_chat_template() -> None:
    if "chat" not in _warned:
        _warned.add("chat")
        warnings.warn(
            "The tokenizer has no chat template; chat prompts are rendered as plain 'System:/User:/Assistant:' text.",
            stacklevel=3,
        )


TEMPLATES: dict[str, PromptTemplate] = {
    "chat": PromptTemplate(
        "chat",
        kind="chat",
        system=LEE_SYSTEM,
        user=LEE_USER,
        answer_prefix="Emotion:",
        add_special_tokens=False,
    ),
    "chat_lee": PromptTemplate(
        "chat_lee", kind="chat", system=LEE_SYSTEM, user=LEE_USER, label_space=False, add_special_tokens=False
    ),
    "chat_short": PromptTemplate(
        "chat_short",
        kind="chat",
        system=SHORT_SYSTEM,
        user=SHORT_USER,
        answer_prefix="Emotion:",
        add_special_tokens=False,
    ),
    "fewshot": PromptTemplate(
        "fewshot",
        kind="plain",
        user="Classify the emotion of each text as one of: {labels}.\n\n{text}",
        fewshot=FEWSHOT_DEMOS,
    ),
    "elicit": PromptTemplate(
        "elicit", kind="chat", system=ELICIT_SYSTEM_EMOTION, user=ELICIT_USER, add_special_tokens=False
    ),
    "raw": PromptTemplate("raw", kind="plain", user="{text}"),
}


def template_names() -> list[str]:
    """Names accepted by :func:`get_template` (besides user strings containing ``{text}``)."""
    return list(TEMPLATES)


DEFAULT_TEMPLATE = "chat_short"
"""The default everywhere: the best-scoring shipped template on the embedded model (see README)."""


def get_template(name_or_userstring: str | PromptTemplate) -> PromptTemplate:
    """A built-in template by name, or a user template from a string containing ``{text}``.

    A user string is rendered as plain text; prefix it with ``chat:`` to send it as the user turn of a
    chat prompt. Labels are scored with a leading space when the string ends in ``:``.
    """
    if isinstance(name_or_userstring, PromptTemplate):
        return name_or_userstring
    s = str(name_or_userstring)
    if s in TEMPLATES:
        return TEMPLATES[s]
    if "{text}" in s:
        if s.startswith("chat:"):
            body = s.removeprefix("chat:")
            return PromptTemplate(
                "user-chat", kind="chat", user=body, label_space=False, add_special_tokens=False
            )
        return PromptTemplate("user", kind="plain", user=s, label_space=s.rstrip(" ").endswith(":"))
    raise EmocircuitsError(
        f"Unknown template {s!r}; use one of {', '.join(TEMPLATES)} or a string containing {{text}}."
    )


def label_token_ids(
    tokenizer: Any, labels: Sequence[str], *, leading_space: bool = True
) -> tuple[list[int], list[list[int]], bool]:
    """Token ids of each label as the model would produce it after the prompt.

    Returns ``(first_token_ids, full_token_id_lists, shared_first)``: the first token of each label,
    all its tokens, and whether two labels share a first token (then first-token scoring cannot tell
    them apart: use full-label scoring).
    """
    full: list[list[int]] = []
    for lab in labels:
        ids = list(tokenizer.encode((" " if leading_space else "") + lab, add_special_tokens=False))
        if not ids:
            raise EmocircuitsError(f"Label {lab!r} tokenises to nothing; use non-empty label words.")
        full.append(ids)
    first = [ids[0] for ids in full]
    return first, full, len(set(first)) < len(first)

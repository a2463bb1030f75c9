"""Prompt templates (chat classification, few-shot, elicitation, raw, user strings) and label tokens.

Label form: every built-in classification template ends with an answer cue that ends in a colon
(``Emotion:``), so the model's next token is the label *with a leading space* (``" anger"``); labels are
scored in that form (``PromptTemplate.label_space = True``). SmolLM2's tokenizer has one token for each
of the six leading-space Ekman labels, while the bare forms split into pieces (``"disgust"`` ->
``dis|g|ust``). ``chat_lee`` keeps Lee et al.'s exact prompt with no cue, so the label follows the
assistant header's newline and is scored without a leading space. A user template uses the leading-space
form when its text ends in ``:`` and the bare form otherwise.

Named after the papers: ``tak2025`` (Tak et al.'s plain few-shot readout, written from the paper's
description, demonstrations ours) and ``lee2025`` (Lee et al.'s printed prompt; the same as ``chat_lee``).
Every other template is the toolkit's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from emocircuits.base.constants import DEFAULT_TEMPLATE, LABEL_ALIASES
from emocircuits.base.errors import EmocircuitsError

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


FEWSHOT_SYSTEM = (
    "You label the emotion a person most likely felt in the situation they describe. "
    "Answer with one word from: {labels}."
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


# Tak et al. (2025) read emotions with a plain few-shot prompt (no chat template): one instruction sentence,
# a joy and a sadness demonstration, each as " Context: ... Answer: <label>", then the query as
# " Context: <text> Answer:", and the argmax over the label tokens' logits at the last position. The wording,
# the two demonstrations (crowd-enVENT event descriptions) and the separators are those of the authors'
# public code (prompt_manager.py, build_prompt(shots=("joy", "sadness"), prompt_index=0): the default
# ``joy_sadness_0`` of main.py), so that both tools read the same strings. ``joy`` is shown as ``happiness``
# when the scheme is Ekman's six.
TAK_INSTRUCTION = "What are the inferred emotions in the following contexts?"
TAK_DEMOS: tuple[tuple[str, str], ...] = (
    ("My first child was born.", "joy"),
    ("My dog died last week.", "sadness"),
)
TAK_FORMAT = (" Context: {text} Answer: {label}", " Context: {text} Answer:")


# Demonstrations of the chat few-shot templates: two per emotion in mixed registers (plain, terse,
# casual, dialogue), almost none naming the emotion; written for emocircuits, not drawn from any dataset
# nor from the built-in data. ``chat_fewshot`` shows the first six (one per emotion), ``chat_fewshot2``
# all twelve; the label order is mixed so that no label is always the last demonstration.
CHAT_DEMOS: tuple[tuple[str, str], ...] = (
    ("The contractor took the money for the new roof, never showed up, and now blocks my number.", "anger"),
    ("heard glass break downstairs at 3am and i live alone", "fear"),
    ("My grandad, who hadn't been on a bike in forty years, rode with us all the way to the lake.", "happiness"),
    ("The man next to me on the tram was clipping his fingernails and the bits kept landing on my sleeve.",
     "disgust"),
    ("I opened a library book I'd borrowed and two hundred euros fell out of it.", "surprise"),
    ("Cleared out my grandmother's flat this weekend. Her reading glasses were still on the table by her chair.",
     "sadness"),
    ("A: Are you coming to the reunion?\nB: Without Sam there I don't think I can. It was always the three of us.",
     "sadness"),
    ("Out of nowhere my old primary-school teacher sat down next to me on a night train abroad.", "surprise"),
    ("found a half-eaten kebab under the seat of the rental car, been sitting there in the heat for days",
     "disgust"),
    ("A: They want me to pay for the repair again.\nB: Didn't they fix it under warranty last month?\n"
     "A: They did. Now they say the warranty ran out the day before.", "anger"),
    ("the kite my son and I built from scratch actually flew, higher than everyone else's on the beach",
     "happiness"),
    ("Halfway up the ladder to clear the gutter, I felt it start to slide sideways.", "fear"),
)


@dataclass(frozen=True)
class PromptTemplate:
    """How to turn a text into a prompt.

    ``kind``: ``"chat"`` (system + user turn through the tokenizer's chat template, then
    ``answer_prefix`` opens the assistant turn) or ``"plain"`` (``user`` formatted as is).
    ``user`` / ``system`` may use ``{text}`` and ``{labels}`` (comma-separated label list).
    ``label_space``: score labels as ``" label"`` (True) or ``"label"`` (False).
    ``fewshot``: ``(text, label)`` demonstrations shown before the query (only those whose label is in the
    scheme): for ``"plain"`` as ``fewshot_format`` says (a demonstration, then the query; default
    ``Text:/Emotion:`` lines); for ``"chat"`` as earlier user/assistant turns
    (user: ``user`` with the demo text; assistant: ``answer_prefix`` and the label).
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
    fewshot_format: tuple[str, str] = ("Text: {text}\nEmotion: {label}\n\n", "Text: {text}\nEmotion:")

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
                demo, query = self.fewshot_format
                demos = "".join(demo.replace("{text}", d).replace("{label}", str(_demo_label(y, labels)))
                                for d, y in self.fewshot if _demo_label(y, labels) is not None)
                return header + demos + query.replace("{text}", text)
            return fmt(self.user) + self.answer_prefix
        messages = []
        system = self.system
        if emotion is None and system == ELICIT_SYSTEM_EMOTION:
            system = ELICIT_SYSTEM
        if system:
            messages.append({"role": "system", "content": fmt(system)})
        for d, y in self.fewshot:
            if y in labels:
                messages.append({"role": "user", "content": self.user.replace("{labels}", lab).replace("{text}", d)})
                messages.append({"role": "assistant", "content": f"{self.answer_prefix} {y}".strip()})
        messages.append({"role": "user", "content": fmt(self.user)})
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            _warn_no_chat_template()
            head = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
            return head + ((" " + self.answer_prefix.strip()) if self.answer_prefix else "")
        return head + self.answer_prefix


def _demo_label(label: str, labels: Sequence[str]) -> str | None:
    """A demonstration's label in the scheme's spelling (``joy`` shown as ``happiness`` in Ekman's six), or
    None when the scheme has no such label (the demonstration is left out)."""
    if label in labels:
        return label
    alias = LABEL_ALIASES.get(label)
    return alias if alias in labels else None


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
    "chat_fewshot": PromptTemplate(
        "chat_fewshot",
        kind="chat",
        system=FEWSHOT_SYSTEM,
        user="Text: {text}",
        answer_prefix="Emotion:",
        fewshot=CHAT_DEMOS[:6],
        add_special_tokens=False,
    ),
    "chat_fewshot2": PromptTemplate(
        "chat_fewshot2",
        kind="chat",
        system=FEWSHOT_SYSTEM,
        user="Text: {text}",
        answer_prefix="Emotion:",
        fewshot=CHAT_DEMOS,
        add_special_tokens=False,
    ),
    "fewshot": PromptTemplate(
        "fewshot",
        kind="plain",
        user="Classify the emotion of each text as one of: {labels}.\n\n{text}",
        fewshot=FEWSHOT_DEMOS,
    ),
    # the papers' prompts by name (written from the papers; see each constant's comment)
    "tak2025": PromptTemplate(
        "tak2025",
        kind="plain",
        user=TAK_INSTRUCTION + "{text}",
        fewshot=TAK_DEMOS,
        fewshot_format=TAK_FORMAT,
    ),
    "lee2025": PromptTemplate(
        "lee2025", kind="chat", system=LEE_SYSTEM, user=LEE_USER, label_space=False, add_special_tokens=False
    ),
    "elicit": PromptTemplate(
        "elicit", kind="chat", system=ELICIT_SYSTEM_EMOTION, user=ELICIT_USER, add_special_tokens=False
    ),
    "raw": PromptTemplate("raw", kind="plain", user="{text}"),
}


def template_names() -> list[str]:
    """Names accepted by :func:`get_template` (besides user strings containing ``{text}``)."""
    return list(TEMPLATES)




ENSEMBLE_SEP = "+"


def ensemble_members(spec: str | PromptTemplate | Sequence[str | PromptTemplate]) -> list[str | PromptTemplate]:
    """The templates of a readout spec: ``"chat_short+chat_fewshot"`` (built-in names joined by ``+``) gives two;
    a single name, a user string with ``{text}`` or a :class:`PromptTemplate` gives itself; a list is itself."""
    if isinstance(spec, PromptTemplate):
        return [spec]
    if not isinstance(spec, str):
        members = list(spec)
        if not members:
            raise EmocircuitsError("A template ensemble needs at least one template.")
        return members
    if "{text}" in spec or ENSEMBLE_SEP not in spec:
        return [spec]
    names = [n.strip() for n in spec.split(ENSEMBLE_SEP)]
    bad = [n for n in names if n not in TEMPLATES]
    if bad or len(set(names)) != len(names):
        raise EmocircuitsError(
            f"Template ensemble {spec!r} must join distinct built-in names with '+' ({', '.join(TEMPLATES)}); "
            f"{'unknown: ' + ', '.join(map(repr, bad)) if bad else 'a name repeats'}."
        )
    return list(names)


def get_template(name_or_userstring: str | PromptTemplate, system: str | None = None) -> PromptTemplate:
    """A built-in template by name, or a user template from a string containing ``{text}``.

    A user string is rendered as plain text (labels scored with a leading space when it ends in ``:``);
    prefix it with ``chat:`` or pass ``system`` to send it as the user turn of a chat prompt (the label
    then follows the assistant header, bare form). ``system``: a system prompt (may use ``{labels}``):
    before a user string's turn, or replacing a built-in chat template's own.
    """
    if isinstance(name_or_userstring, PromptTemplate):
        t = name_or_userstring
    else:
        s = str(name_or_userstring)
        if s in TEMPLATES:
            t = TEMPLATES[s]
        elif "{text}" in s:
            if s.startswith("chat:") or system is not None:
                return PromptTemplate("user-chat", kind="chat", user=s.removeprefix("chat:"), system=system,
                                      label_space=False, add_special_tokens=False)
            return PromptTemplate("user", kind="plain", user=s, label_space=s.rstrip(" ").endswith(":"))
        elif ENSEMBLE_SEP in s and all(n.strip() in TEMPLATES for n in s.split(ENSEMBLE_SEP)):
            raise EmocircuitsError(
                f"{s!r} is a template ensemble, which only classification reads (classify / emocircuits classify); "
                f"this analysis reads one prompt per example: pass one template, e.g. {DEFAULT_TEMPLATE}."
            )
        else:
            raise EmocircuitsError(
                f"Unknown template {s!r}; use one of {', '.join(TEMPLATES)} or a string containing {{text}}."
            )
    if system is None:
        return t
    if t.kind != "chat":
        raise EmocircuitsError(
            f"Template {t.name!r} is plain text and takes no system prompt; use a chat template or prefix the "
            "user string with 'chat:'."
        )
    return replace(t, system=system)


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

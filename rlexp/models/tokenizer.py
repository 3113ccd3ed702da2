"""The embedded character-level tokenizer: one token per character of an alphabet, plus pad and EOS.

Built with the `tokenizers` library and wrapped as a ``PreTrainedTokenizerFast``, so it saves with
``save_pretrained`` and loads back through ``AutoTokenizer`` like any Hugging Face tokenizer.

It has no unknown token: a character outside its alphabet cannot be encoded (the library raises
``Exception: WordLevel error: Missing [UNK] token from the vocabulary``, naming neither the character nor
the text). ``check_characters`` refuses such text up front instead, with one line naming the characters
and where the text came from (`UnknownCharacterError`). ``char_vocabulary`` tells a character tokenizer
(this one, saved and loaded back) from any other tokenizer, for which nothing is checked.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlexp.models.loading import ModelLoadError

PAD, EOS = "<pad>", "<eos>"
#: one piece per code point, newlines included (``.`` leaves a run of newlines as one piece); tokenizers
#: saved with ``.`` before still load and are recognised
_SPLIT = r"[\s\S]"
_CHAR_SPLITS = (_SPLIT, ".")

#: what to do about characters a character tokenizer lacks
CHAR_FIX = ("Fix: model=tiny builds its alphabet from the task's own texts (prompts, targets, Task.extra_text()): "
            "train this task with model=tiny rather than a model directory built for another task, or remove "
            "those characters from the text")


class UnknownCharacterError(ModelLoadError):
    """Text with characters the policy's character tokenizer has no token for (names them and the text)."""


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """Tokenizer with ids ``<pad>=0, <eos>=1``, then each distinct character of ``alphabet`` in order."""
    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise ValueError("build_char_tokenizer: empty alphabet")
    vocab = {PAD: 0, EOS: 1}
    for c in chars:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join characters without spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")


def char_vocabulary(tokenizer) -> frozenset[str] | None:
    """The characters a character tokenizer can encode (one from `build_char_tokenizer`, loaded back or not:
    a WordLevel model without an unknown token behind a one-character split), or None for any other
    tokenizer (which encodes any text, or maps what it does not know to its unknown token)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.WordLevel):
        return None
    state = json.loads(backend.to_str())
    split = state.get("pre_tokenizer") or {}
    if split.get("type") != "Split" or (split.get("pattern") or {}).get("Regex") not in _CHAR_SPLITS:
        return None
    vocab = state["model"]["vocab"]
    if state["model"].get("unk_token") in vocab:
        return None
    return frozenset(t for t in vocab if len(t) == 1)


def _chars(chars: Iterable[str], limit: int = 12) -> str:
    chars = sorted(chars)
    shown = ", ".join(map(repr, chars[:limit]))
    return shown + (f", … ({len(chars)} in all)" if len(chars) > limit else "")


def without_special_tokens(tokenizer, text: str) -> str:
    """``text`` less the tokenizer's special tokens (``<pad>``, ``<eos>``): the tokenizer matches those before it
    splits characters, so a decoded completion that holds a sampled ``<pad>`` encodes back to it."""
    for special in getattr(tokenizer, "all_special_tokens", ()):
        text = text.replace(special, "")
    return text


def unknown_characters(tokenizer, text: str) -> set[str]:
    """The characters of ``text`` that ``tokenizer`` cannot encode (none for a tokenizer that is not a
    character tokenizer)."""
    vocab = char_vocabulary(tokenizer)
    return set() if vocab is None else set(without_special_tokens(tokenizer, text)) - vocab


def check_characters(tokenizer, texts: Iterable[tuple[str, str]], *, source: str = "the policy",
                     fix: str = CHAR_FIX) -> None:
    """Refuse ``texts`` (``(where, text)`` pairs, e.g. ``("task train prompt 17", "07+45=")``) when ``tokenizer``
    (that of ``source``: a model directory) is a character tokenizer and some of them have characters outside
    its alphabet: one `UnknownCharacterError` line naming the first such text and the characters it lacks, how
    many other texts lack some (and every character lacking), the alphabet, and ``fix``. Nothing is checked for
    other tokenizers."""
    vocab = char_vocabulary(tokenizer)
    if vocab is None:
        return
    first, missing, n = None, set(), 0
    for where, text in texts:
        bad = set(without_special_tokens(tokenizer, text)) - vocab
        if bad:
            n += 1
            missing |= bad
            if first is None:
                first = (where, text, bad)
    if first is None:
        return
    where, text, bad = first
    shown = repr(text) if len(text) <= 60 else repr(text[:57]) + "…"
    alphabet = "".join(sorted(vocab))
    alphabet = repr(alphabet) if len(alphabet) <= 40 else repr(alphabet[:40]) + "…"
    more = f", and so do {n - 1} other texts" if n > 1 else ""
    if missing != bad:
        more += f" (all the characters it lacks: {_chars(missing)})"
    raise UnknownCharacterError(
        f"{where} {shown} has characters the character tokenizer of {source} cannot encode: {_chars(bad)}{more}; "
        f"its alphabet is {alphabet}. {fix}")

"""The embedded character-level tokenizer: one token per character of an alphabet, plus pad and EOS.

Built with the `tokenizers` library and wrapped as a ``PreTrainedTokenizerFast``, so it saves with
``save_pretrained`` and loads back through ``AutoTokenizer`` like any Hugging Face tokenizer.
"""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """Tokenizer with ids ``<pad>=0, <eos>=1``, then each distinct character of ``alphabet`` in order."""
    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise ValueError("build_char_tokenizer: empty alphabet")
    vocab = {PAD: 0, EOS: 1}
    for c in chars:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join characters without spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")

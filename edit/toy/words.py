"""The toy's tokenizer: one token per word of the caption grammar (`edit.toy.data`).

The tiny random model uses the byte-level ByT5 tokenizer; trained from scratch on a CPU budget, a
two-layer encoder over bytes must first learn to spell ("r", "e", "d" -> a colour) before the
transformer can use a caption, which the first training run did not get to (0 of 20 captions
followed). A word-level vocabulary gives the encoder the words themselves. It is a `tokenizers`
WordLevel model in a transformers fast tokenizer, so the pipeline folder saves and loads it like
any other; a word outside the grammar becomes `<unk>`.
"""

from __future__ import annotations

from edit.toy import data

SPECIAL = ("<pad>", "</s>", "<unk>")  # T5's order: pad 0, eos 1, unk 2


def vocabulary() -> tuple[str, ...]:
    """Every word a caption of the grammar can hold, after the special tokens."""
    words = ["a", "and", "on", "moving", "staying", "background", *data.COLOURS, *data.SHAPES, *data.SIZES,
             *data.BACKGROUNDS]
    for motion in data.MOTIONS:
        words.append(motion)
    return SPECIAL + tuple(dict.fromkeys(words))


def tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = vocabulary()
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    # an end token as T5 has: "" (the negative prompt) is one token, not none
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")

"""A small WordPiece tokenizer for the embedded model, built locally with `tokenizers`.

Whole words for the closed vocabulary of prompts, captions and answers; single capital
letters, with ``##`` continuation pieces, so any OCR word spells out letter by letter
("KATE" -> K ##A ##T ##E) and decodes back without spaces. Case is kept (OCR is
upper case, captions lower case). The image placeholder ``<image>`` is a special token,
as in llava-hf checkpoints, and the processor expands it to one token per image patch.
"""

from __future__ import annotations

import re

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hones_nn.data.font import LETTERS
from hones_nn.data.synthetic import CAPTION_TEMPLATES, COLORS, KINDS, NUMBER_WORDS
from hones_nn.models.qwen_inputs import QWEN_CHAT_TEMPLATE
from hones_nn.tasks.prompts import INSTRUCTIONS, NO_WORD, YES_WORD

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)

# Chat wrappers of the families we train (the LLaVA-1.5 and a Qwen-style format).
CHAT_WORDS = "USER : ASSISTANT : system user assistant You are a helpful assistant ."
# Words of the synthetic questions and answers.
TASK_WORDS = (
    "What color is the How many shapes are there ? Is there a an and What shape is the object yes no "
    "0 1 2 3 4 5 6 7 8 9 " + " ".join(NUMBER_WORDS.values())
)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


def vocabulary(generator: str = "synthetic-v1") -> list[str]:
    """Every token, special ones first, in a fixed order (the ids are part of the model).

    ``synthetic-v1``: the shipped models' vocabulary. Another generator's (``synthetic-v2``)
    appends the words of its questions, answers and captions that v1 lacks, so every v1
    token keeps its id."""
    words: list[str] = []
    sources = [CHAT_WORDS, TASK_WORDS, YES_WORD, NO_WORD, " ".join(COLORS), " ".join(KINDS)]
    sources += [t.replace("{objects}", "") for t in CAPTION_TEMPLATES]
    sources += [v for family in INSTRUCTIONS.values() for v in family.values()]
    for source in sources:
        for w in _words(source.replace("{", " ").replace("}", " ")):
            if w not in words:
                words.append(w)
    for letter in LETTERS:
        if letter not in words:
            words.append(letter)
        words.append("##" + letter)
    for punct in ",.?!:;'\"()-/":
        if punct not in words:
            words.append(punct)
    if generator != "synthetic-v1":
        from hones_nn.data.generators import generator_module

        module = generator_module(generator)
        extra = [module.VOCABULARY_TEXT, " ".join(module.COLORS), " ".join(module.KINDS)]
        extra += [" ".join(getattr(module, name, ())) for name in ("SIZES", "BACKGROUNDS")]
        extra += [t.replace("{", " ").replace("}", " ") for t in module.CAPTION_TEMPLATES]
        for source in extra:
            for w in _words(source):
                if w not in words:
                    words.append(w)
    return list(SPECIAL_TOKENS) + words


def build_tokenizer(generator: str = "synthetic-v1") -> PreTrainedTokenizerFast:
    """The word tokenizer of the models trained on ``generator``'s benchmark."""
    vocab = {token: i for i, token in enumerate(vocabulary(generator))}
    core = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=64)
    )
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        padding_side="left",
        model_max_length=512,
        extra_special_tokens={"image_token": IMAGE},
    )
    return tokenizer


QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def qwen_tokenizer(generator: str = "synthetic-v1") -> PreTrainedTokenizerFast:
    """Our WordPiece vocabulary (of ``generator``'s benchmark, see :func:`vocabulary`) + Qwen's
    special tokens; no BOS, EOS <|im_end|>, Qwen chat template."""
    tokens = vocabulary(generator) + list(QWEN_SPECIAL_TOKENS)
    vocab = {t: i for i, t in enumerate(tokens)}
    core = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=64)
    )
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=UNK,
        padding_side="left",
        model_max_length=1024,
        chat_template=QWEN_CHAT_TEMPLATE,
        extra_special_tokens={"image_token": "<|image_pad|>"},
    )

"""Task instructions of HONES appendix B (table of prompt templates), per model family.

The image stays fixed; only the instruction changes between tasks. Each model family
wraps the instruction in its own chat format (the architecture adapter does that); this
module only says what the user turn contains.
"""

from __future__ import annotations

TASK_NAMES = ("vqa", "ocr", "caption", "retrieval")

# family -> task -> instruction template
INSTRUCTIONS: dict[str, dict[str, str]] = {
    "llava": {
        "vqa": "Question: {question} Answer the question briefly using one or a few words.",
        "ocr": "Please transcribe the text inside the blue box. Output text only.",
        "caption": "Describe the image in one sentence.",
        "retrieval": "Candidate: {candidate} Does the candidate correctly describe the image? Answer exactly Yes or No.",  # noqa: E501
    },
    "qwen": {
        "vqa": "Question: {question} Answer the question with a short phrase.",
        "ocr": "Transcribe the text inside the blue box. Output text only.",
        "caption": "Describe the image in one sentence.",
        "retrieval": "Candidate: {candidate} Does the candidate correctly describe the image? Answer exactly Yes or No.",  # noqa: E501
    },
}

# The official HONES code's instructions: ONE set for every model family (the paper's
# Qwen2.5-VL texts, with newlines), used by ``--reference-compat`` on every model
# (docs/reference-code-behaviour.md, "Prompts and evaluation"). With a BPE tokenizer "\n"
# and " " are different tokens, so these differ from the LLaVA texts above token by token.
REFERENCE_INSTRUCTIONS: dict[str, str] = {
    "vqa": "Question: {question}\nAnswer the question with a short phrase.",
    "ocr": "Transcribe the text inside the blue box.\nOutput text only.",
    "caption": "Describe the image in one sentence.",
    "retrieval": "Candidate: {candidate}\nDoes the candidate correctly describe the image?\nAnswer exactly Yes or No.",
}

# The decision words of pairwise retrieval. Their token ids are read with a leading space
# (" Yes"), the way they follow "ASSISTANT:" in a generated answer.
YES_WORD = "Yes"
NO_WORD = "No"


def instruction(family: str, task: str, reference_compat: bool = False, **fields: str) -> str:
    """The user-turn text of ``task`` for a model ``family`` ("llava" or "qwen");
    ``reference_compat``: the official code's one set for every family."""
    try:
        templates = REFERENCE_INSTRUCTIONS if reference_compat and family in INSTRUCTIONS else INSTRUCTIONS[family]
    except KeyError:
        raise ValueError(f"no prompt templates for model family {family!r}; known: {', '.join(INSTRUCTIONS)}") from None
    try:
        template = templates[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}") from None
    return template.format(**fields)

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

# The decision words of pairwise retrieval. Their token ids are read with a leading space
# (" Yes"), the way they follow "ASSISTANT:" in a generated answer.
YES_WORD = "Yes"
NO_WORD = "No"


def instruction(family: str, task: str, **fields: str) -> str:
    """The user-turn text of ``task`` for a model ``family`` ("llava" or "qwen")."""
    try:
        templates = INSTRUCTIONS[family]
    except KeyError:
        raise ValueError(f"no prompt templates for model family {family!r}; known: {', '.join(INSTRUCTIONS)}") from None
    try:
        template = templates[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}") from None
    return template.format(**fields)

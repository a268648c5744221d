"""Task instructions of HONES appendix B (table of prompt templates), per model family.

The image stays fixed; only the instruction changes between tasks. Each model family
wraps the instruction in its own chat format (the architecture adapter does that); this
module only says what the user turn contains.
"""

from __future__ import annotations

import contextlib
import contextvars
import string
from collections.abc import Iterator
from pathlib import Path

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
    ``reference_compat``: the official code's one set for every family. A user's
    instruction (:func:`user_instructions`) replaces the built-in one in both modes."""
    override = (_USER_INSTRUCTIONS.get() or {}).get(task)
    if override is not None:
        return override.format(**fields)
    try:
        templates = REFERENCE_INSTRUCTIONS if reference_compat and family in INSTRUCTIONS else INSTRUCTIONS[family]
    except KeyError:
        raise ValueError(f"no prompt templates for model family {family!r}; known: {', '.join(INSTRUCTIONS)}") from None
    try:
        template = templates[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}") from None
    return template.format(**fields)


# ---------------------------------------------------------------- the user's own instructions
# A researcher's checkpoint may be trained on other instructions than those above. The
# user's (``--instruction`` / ``--prompt-file``, ``Task.instructions``) replace them while a
# task builds its items (``Task.items`` enters :func:`user_instructions`).

_USER_INSTRUCTIONS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "hones_user_instructions", default=None
)

# the fields each task's instruction is formatted with; the required ones must appear
INSTRUCTION_FIELDS: dict[str, tuple[str, ...]] = {"vqa": ("question",), "retrieval": ("candidate",)}


@contextlib.contextmanager
def user_instructions(instructions: dict[str, str] | None) -> Iterator[None]:
    token = _USER_INSTRUCTIONS.set(dict(instructions or {}))
    try:
        yield
    finally:
        _USER_INSTRUCTIONS.reset(token)


def check_instruction(task: str, template: str, source: str = "--instruction") -> str:
    """``template`` if it is a usable instruction of ``task``, else a ValueError naming the fix."""
    if task not in TASK_NAMES:
        raise ValueError(f"{source}: unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{source}: the {task} instruction must be a non-empty text, not {template!r}")
    allowed = INSTRUCTION_FIELDS.get(task, ())
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(
            f"{source}: the {task} instruction {template!r} is not a valid template ({exc}); write a literal "
            "brace as {{ or }}"
        ) from None
    unknown = sorted(used - set(allowed))
    if unknown:
        raise ValueError(
            f"{source}: the {task} instruction uses unknown field(s) {unknown}; {task} fills "
            f"{', '.join('{' + f + '}' for f in allowed) or 'no field'} (write a literal brace as {{ or }})"
        )
    missing = [f for f in allowed if f not in used]
    if missing:
        raise ValueError(
            f"{source}: the {task} instruction must contain {', '.join('{' + f + '}' for f in missing)}, where "
            "each item's text goes; without it every item gets the same prompt"
        )
    return template


# ---------------------------------------------------------------- the answer template
# What the model's answer looks like around the gold text, e.g. "Answer: {answer}" or
# "{answer}." for a checkpoint trained to answer that way. Its text before ``{answer}`` (the
# prefix) ends the prompt: it follows the chat template's generation prompt, so the last
# prompt position T is where the model predicts the answer's first token (teacher-forced and
# generated alike, so HONES's targets stay the answer's tokens); its text after ``{answer}``
# (the suffix) is teacher-forced with the answer, before EOS. Generations have the template
# stripped before scoring (:meth:`Prompt.clean`). The user's templates travel in the same
# {task: text} dict as the instructions, under the key "TASK.answer" (:func:`answer_key`).

DEFAULT_ANSWER_TEMPLATE = "{answer}"


def answer_key(task: str) -> str:
    """The key of ``task``'s answer template in a {task: instruction} dict."""
    return f"{task}.answer"


def check_answer_template(task: str, template: str, source: str = "--answer-template") -> str:
    """``template`` if it is a usable answer template of ``task`` (exactly one ``{answer}``
    field, nothing else), else a ValueError naming the fix."""
    if task not in TASK_NAMES:
        raise ValueError(f"{source}: unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{source}: the {task} answer template must be a non-empty text, not {template!r}")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(
            f"{source}: the {task} answer template {template!r} is not a valid template ({exc}); write a literal "
            "brace as {{ or }}"
        ) from None
    if fields != ["answer"]:
        raise ValueError(
            f"{source}: the {task} answer template {template!r} must contain the field {{answer}} exactly once and "
            "no other field, e.g. 'Answer: {answer}' or '{answer}.' (write a literal brace as {{ or }})"
        )
    return template


def split_answer_template(template: str) -> tuple[str, str]:
    """(prefix, suffix): the literal texts before and after ``{answer}`` (braces unescaped)."""
    prefix, suffix, seen = [], [], False
    for literal, name, _, _ in string.Formatter().parse(template):
        (suffix if seen else prefix).append(literal)
        if name is not None:
            seen = True
    return "".join(prefix), "".join(suffix)


def check_prompt_entry(key: str, text: str, source: str) -> str:
    """An entry of a {task: instruction} dict: an instruction, or a "TASK.answer" template."""
    if key.endswith(".answer"):
        return check_answer_template(key[: -len(".answer")], text, source)
    return check_instruction(key, text, source)


def read_prompt_file(path: str | Path) -> dict[str, str]:
    """{task: instruction} from a YAML or JSON file: ``vqa: "..."`` or ``vqa: {instruction: "...",
    answer: "Answer: {answer}"}`` (an answer template goes under the key "vqa.answer")."""
    import json

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # the parser's own error, with the file named
        raise ValueError(f"--prompt-file {path}: cannot parse it ({exc}); give YAML or JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"--prompt-file {path}: expected a mapping task -> instruction, e.g. 'vqa: \"...\"'")
    out = {}
    for task, value in data.items():
        if isinstance(value, dict):
            extra = sorted(set(value) - {"instruction", "answer"})
            if extra:
                raise ValueError(
                    f"--prompt-file {path}: task {task!r} has unknown key(s) {extra}; the keys are 'instruction' "
                    "and 'answer' (the answer template, e.g. 'Answer: {answer}')"
                )
            if "answer" in value:
                out[answer_key(str(task))] = check_answer_template(str(task), value["answer"], f"--prompt-file {path}")
            if "instruction" not in value:
                continue
            value = value["instruction"]
        out[str(task)] = check_instruction(str(task), value, f"--prompt-file {path}")
    return out


def resolve_instructions(
    task: str | None,
    instruction_text: str | None,
    prompt_file: str | Path | None,
    answer_template: str | None = None,
) -> dict[str, str] | None:
    """The user's {task: instruction} from ``--prompt-file``, ``--instruction`` and
    ``--answer-template`` (both for ``task``; answer templates under "TASK.answer")."""
    out = read_prompt_file(prompt_file) if prompt_file else {}
    if instruction_text is not None:
        if task is None:
            raise ValueError("--instruction needs --task (use --prompt-file for several tasks)")
        out[task] = check_instruction(task, instruction_text)
    if answer_template is not None:
        if task is None:
            raise ValueError("--answer-template needs --task (use --prompt-file for several tasks)")
        out[answer_key(task)] = check_answer_template(task, answer_template)
    return out or None

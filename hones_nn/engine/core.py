"""Run a task's prompts through the model, optionally under an intervention.

Generative tasks decode greedily (plain argmax, no repetition penalty, at most 24 new
tokens, as the reference) inside one nnsight trace per batch whose body re-applies the
intervention at every generation step. Retrieval runs one forward per batch and reads
logit(" Yes") - logit(" No") at the last prompt position T.

Batches are processor-batched encodings in a single invoke (nnsight 0.8 cannot batch
images across invokes), left-padded, so T is position -1 of every row.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nnsight
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from hones_nn.engine.encoding import encode_prompts, to_device
from hones_nn.interventions.base import Intervention, NoIntervention, apply_edits
from hones_nn.tasks.base import GENERATION_CAP, ImageSource, Item, Prompt, Task, clean_generation
from hones_nn.tasks.retrieval import decision_token_ids

MAX_NEW_TOKENS = GENERATION_CAP

# nnsight ends an open `tracer.iter[:]` loop by warning that the step after the last was
# never reached; that is how an unbounded generation loop ends, not a problem.
warnings.filterwarnings("ignore", message=r".*was never reached: the loop asked for a step.*")


@dataclass
class PrefillSkip:
    """The prefill of a generation starts at decoder layer ``below``: the layers under it
    do not run, handing on ``output`` (the clean run's output of layer ``below - 1``, one
    row per batch row), and their keys/values are the clean run's (``keys[i]``,
    ``values[i]`` for layer i, [B, kv heads, S, d_head]). Valid when nothing below
    ``below`` differs from that clean run (a head intervention in layer ``below`` or up)."""

    below: int
    output: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


@dataclass
class PrefillRecord:
    """What a clean generation's prefill left: ``outputs[i]`` of the recorded layers,
    ``keys``/``values`` of every layer up to the highest recorded one."""

    outputs: dict[int, torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def skip_for(self, below: int, rows: Sequence[int]) -> PrefillSkip | None:
        """The :class:`PrefillSkip` of a batch of these rows starting at layer ``below``
        (None at layer 0: nothing to skip)."""
        if below == 0:
            return None
        index = torch.as_tensor(list(rows))

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, index.to(t.device))

        return PrefillSkip(
            below,
            pick(self.outputs[below - 1]),
            [pick(k) for k in self.keys[:below]],
            [pick(v) for v in self.values[:below]],
        )


@dataclass
class Batch:
    prompts: list[Prompt]
    owners: list[int]  # index of each prompt's item


def flatten(items: Sequence[Item], batch_size: int) -> list[Batch]:
    prompts = [(k, p) for k, item in enumerate(items) for p in item.prompts]
    return [
        Batch([p for _, p in prompts[i : i + batch_size]], [k for k, _ in prompts[i : i + batch_size]])
        for i in range(0, len(prompts), batch_size)
    ]


class Engine:
    """Runs prompts on a loaded model through nnsight (one trace per batch).

    ``remote`` (a :class:`hones_nn.engine.remote.RemoteSettings`) runs every trace on
    NDIF (or rehearses the remote serialization in-process with ``mode="local"``): the
    envoy is then nnsight's ``TransformersModel`` built from the model's id or path,
    whose traces all go through the HONES remote backend (see ``hones_nn.engine.remote``).
    """

    def __init__(self, loaded, max_new_tokens: int = MAX_NEW_TOKENS, min_new_tokens: int = 0, remote=None):
        from nnsight import NNsight

        self.loaded = loaded
        self.adapter = loaded.adapter
        self.model = loaded.model
        self.remote = None  # the RemoteSession of a remote engine
        if remote is not None:
            from hones_nn.engine.remote import RemoteSession, build_remote_model

            if not loaded.has_weights and remote.mode == "local":
                raise ValueError(
                    "the in-process rehearsal of remote runs needs the model's weights; load it with weights"
                )
            self.remote = RemoteSession(remote)
            self.envoy = build_remote_model(loaded, self.remote)
            if remote.mode == "ndif":  # the local weights must never run a forward: count any that does
                session = self.remote

                def _count_local_forward(module, args, session=session):
                    session.local_forwards += 1

                loaded.model.register_forward_pre_hook(_count_local_forward)
        else:
            if not loaded.has_weights:
                raise ValueError(
                    f"{loaded.model_id} was loaded without weights (a remote client): a local run needs them; "
                    "load it with weights, or run with --remote"
                )
            self.envoy = NNsight(loaded.model)
        self.max_new_tokens = max_new_tokens
        # EOS is forbidden for the first min_new_tokens steps (as transformers' min_new_tokens);
        # used to time fixed-length generations
        self.min_new_tokens = min_new_tokens
        # a weightless remote client's model lives on the meta device: inputs stay on the
        # CPU and the server moves them to its own device
        self.device = next(loaded.model.parameters()).device if loaded.has_weights else torch.device("cpu")
        self.tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)

    def __getstate__(self) -> dict:
        # A trace body that names the engine (``engine.envoy``) ships it with a remote
        # request: send only what a body may use, never the local model or processor.
        return {
            "envoy": self.envoy,
            "adapter": self.adapter,
            "device": self.device,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "remote": None,
        }

    @property
    def backend_name(self) -> str:
        """'local', 'ndif' or 'remote-local' (the in-process rehearsal)."""
        if self.remote is None:
            return "local"
        return "ndif" if self.remote.settings.mode == "ndif" else "remote-local"

    @property
    def dry_run(self) -> bool:
        """A --dry-run engine: requests are serialized and sized, not run; the values its
        traces hand back are stand-ins of the right shapes (no checks on them apply)."""
        return self.remote is not None and self.remote.settings.mode == "plan"

    def assert_backend(self) -> None:
        """Fail loudly when a remote run's traces did not go through the remote backend."""
        if self.remote is None:
            return
        from hones_nn.engine.nnsight_compat import Remotable
        from hones_nn.engine.remote import BackendMismatchError

        if not isinstance(self.envoy, Remotable):
            raise BackendMismatchError(
                f"--remote was asked for, but the model wrapper {type(self.envoy).__name__} "
                "cannot run remotely: its traces would have run locally"
            )
        self.remote.assert_no_local_forward()

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        inputs: dict,
        intervention: Intervention | None = None,
        skip: PrefillSkip | None = None,
        record: Sequence[int] | None = None,
        max_new_tokens: int | None = None,
    ):
        """Greedy token ids of each row (up to and excluding EOS), at most ``max_new_tokens``
        (None: the engine's; a task passes its own, ``Task.max_new_tokens``).

        Local engines only: ``skip`` starts the prefill at a decoder layer with the clean
        run's state below it; ``record`` (layers, possibly none; a clean run) also returns
        the prefill's :class:`PrefillRecord`, as ``(ids, record)``. The head sweep uses them to run a
        head in layer l from layer l up (:mod:`hones_nn.engine.sweep`)."""
        if (skip is not None or record is not None) and self.remote is not None:
            raise ValueError("prefill skipping and recording run on a local engine only")
        intervention = intervention or NoIntervention()
        inputs = to_device(inputs, self.device)
        batch_size = inputs["input_ids"].shape[0]
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        envoy, adapter = self.envoy, self.adapter
        # Plain greedy decoding, whatever the checkpoint's generation_config asks for
        # (repetition penalty, suppressed tokens, min length ...): the generated tokens are
        # read as the argmax of the logits inside the trace, which equals what `generate`
        # chooses only when no logits processor is active.
        max_new_tokens = max_new_tokens or self.max_new_tokens
        greedy = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        min_new = self.min_new_tokens
        saved_config = self.model.generation_config
        self.model.generation_config = greedy
        edits = intervention.edits(batch_size)
        try:
            if self.remote is not None:
                from hones_nn.engine.remote import plan_standins

                max_new, vocab = max_new_tokens, self.adapter.sizes(self.model).vocab_size

                def standins(batch_size=batch_size, max_new=max_new, vocab=vocab):
                    # --dry-run: the token ids a server would send back, one [B] tensor per step
                    g = torch.Generator().manual_seed(batch_size * 7919 + max_new)
                    return {"steps": [torch.randint(0, vocab, (batch_size,), generator=g) for _ in range(max_new)]}

                # the model's own generate, by name (a bound method cannot travel)
                with plan_standins(standins), envoy.generate(**inputs, generation_config=greedy) as tracer:
                    steps = nnsight.save([])
                    for _ in tracer.iter[:]:
                        apply_edits(envoy, adapter, edits)
                        logits = adapter.lm_head(envoy).output[:, -1]
                        if len(steps) < min_new:  # what transformers' MinNewTokens processor does
                            logits = logits.clone()
                            logits[:, eos] = float("-inf")
                        steps.append(logits.argmax(-1).cpu())
            else:
                kv_layers = max(record) + 1 if record else 0
                with envoy.trace(**inputs, fn=self.model.generate, generation_config=greedy) as tracer:
                    steps = nnsight.save([])
                    for _ in tracer.iter[:]:
                        prefill = not steps
                        if prefill and (skip is not None or record):
                            # the generation's own cache, as the first layer receives it
                            cache = adapter.layer(envoy, 0).inputs[1]["past_key_values"]
                        if prefill and skip is not None:
                            for layer in range(skip.below):
                                cache.update(skip.keys[layer], skip.values[layer], layer)
                                adapter.layer(envoy, layer).skip(skip.output)
                        if prefill and record:
                            outputs = nnsight.save([adapter.layer(envoy, layer).output for layer in record])
                        apply_edits(envoy, adapter, intervention.edits(batch_size))
                        logits = adapter.lm_head(envoy).output[:, -1]
                        if prefill and record:  # the prefill's keys/values (a later step concatenates anew)
                            kv = nnsight.save(
                                [(cache.layers[i].keys, cache.layers[i].values) for i in range(kv_layers)]
                            )
                        if len(steps) < min_new:  # what transformers' MinNewTokens processor does
                            logits = logits.clone()
                            logits[:, eos] = float("-inf")
                        steps.append(logits.argmax(-1).cpu())
        finally:
            self.model.generation_config = saved_config
        tokens = torch.stack(list(steps), dim=1).tolist()
        out = []
        for row in tokens:
            if eos in row:
                row = row[: row.index(eos)]
            out.append(row)
        if record is not None:
            if not record:
                return out, PrefillRecord({}, [], [])
            return out, PrefillRecord(dict(zip(record, outputs)), [k for k, _ in kv], [v for _, v in kv])
        return out

    def decode(self, ids: list[int], prompt: Prompt | None = None) -> str:
        """A generated text as tasks score it; with ``prompt``, its answer template stripped."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return prompt.clean(text) if prompt is not None else clean_generation(text)

    # ------------------------------------------------------------ decision logits
    @torch.no_grad()
    def decision_scores(self, inputs: dict, intervention: Intervention | None = None) -> torch.Tensor:
        """logit(" Yes") - logit(" No") at T for each row."""
        intervention = intervention or NoIntervention()
        yes, no = decision_token_ids(self.tokenizer)
        inputs = to_device(inputs, self.device)
        batch_size = inputs["input_ids"].shape[0]
        with self.envoy.trace(**inputs):
            apply_edits(self.envoy, self.adapter, intervention.edits(batch_size))
            logits = self.adapter.lm_head(self.envoy).output[:, -1]
            score = (logits[:, yes] - logits[:, no]).float().cpu().save()
        return score

    # ------------------------------------------------------------ a task over items
    def run_task(
        self,
        task: Task,
        items: Sequence[Item],
        images: ImageSource,
        batch_size: int = 32,
        intervention_for: Callable[[Batch], Intervention] | Intervention | None = None,
        progress: bool = True,
        desc: str | None = None,
        share_prefix: bool = True,
    ) -> list[list]:
        """Outputs per item: [text] for generative tasks, [score per candidate] for retrieval.

        A retrieval item's candidates share its image-and-instruction prefix: on a local
        engine, under no intervention or one that ``shares_prefix`` (a neuron mask or
        scale), the prefix runs once per item and the candidates' suffixes on its
        key/value cache (:mod:`hones_nn.engine.prefix`; equal to the whole prompts' scores
        within float rounding, tested). ``share_prefix=False`` forces the plain path."""
        outputs: list[list] = [[] for _ in items]
        if share_prefix and not task.generative and self.remote is None and _shares_prefix(intervention_for):
            items = list(items)
            rest = self._shared_prefix_outputs(
                task, items, images, batch_size, intervention_for, outputs, progress, desc
            )
            if rest:
                plain = self.run_task(
                    task,
                    [items[k] for k in rest],
                    images,
                    batch_size,
                    intervention_for,
                    progress,
                    desc,
                    share_prefix=False,
                )
                for k, out in zip(rest, plain):
                    outputs[k] = out
            return outputs
        batches = flatten(items, batch_size)
        for batch in tqdm(batches, desc=desc or f"{task.name}", disable=not progress, leave=False):
            intervention: Intervention | None
            if callable(intervention_for) and not isinstance(intervention_for, Intervention):
                intervention = intervention_for(batch)
            else:
                intervention = intervention_for
            enc = encode_prompts(self.loaded, images, batch.prompts, reference_compat=task.reference_compat)
            if task.generative:
                generated = self.generate(enc.inputs, intervention, max_new_tokens=task.max_new_tokens)
                for owner, prompt, ids in zip(batch.owners, batch.prompts, generated):
                    outputs[owner].append(self.decode(ids, prompt))
            else:
                for owner, score in zip(batch.owners, self.decision_scores(enc.inputs, intervention).tolist()):
                    outputs[owner].append(score)
        return outputs

    def _shared_prefix_outputs(
        self, task, items, images, batch_size, intervention, outputs, progress, desc
    ) -> list[int]:
        """Fill ``outputs[k]`` of the items whose candidates share a prefix holding the
        image; returns the indices of the others (for the plain path)."""
        from hones_nn.engine.prefix import prefix_decision_scores, query_prefix

        rest = []
        for k, item in enumerate(tqdm(items, desc=desc or f"{task.name}", disable=not progress, leave=False)):
            split = query_prefix(self, images, item.prompts, reference_compat=task.reference_compat)
            if split is None:
                rest.append(k)
                continue
            scores = prefix_decision_scores(self, split, [None], batch_size, intervention=intervention)
            outputs[k] = scores[:, 0].tolist()
        return rest


def _shares_prefix(intervention_for) -> bool:
    """True for no intervention or one fixed intervention that acts alike on every row and
    position (a per-batch factory may give each batch its own rows: the plain path)."""
    if intervention_for is None:
        return True
    return isinstance(intervention_for, Intervention) and intervention_for.shares_prefix

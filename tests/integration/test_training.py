"""Smoke test of the embedded model's training script (CI never trains the real model)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from hones_nn.embedded.train import TrainConfig, batch_tasks, make_batch, train


def _config(out, **kw):
    return TrainConfig(
        out=str(out), steps=4, batch_size=4, warmup=1, checkpoint_every=2, n_train_scenes=40, threads=1, **kw
    )


def test_a_few_steps_train_save_and_resume_identically(tmp_path):
    straight = train(_config(tmp_path / "a"))
    info = json.loads((straight / "training_info.json").read_text())
    assert info["final_loss"] is None or info["final_loss"] == info["final_loss"]  # finite or not logged yet
    # interrupted after step 2, then resumed with the same command
    train(_config(tmp_path / "b", stop_at=2))
    resumed = train(_config(tmp_path / "b"))
    a = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (resumed / "model.safetensors").exists() and (resumed / "tokenizer.json").exists()


def test_batches_have_answer_only_labels_and_task_shares(tmp_path):
    from hones_nn.data.synthetic import SyntheticWorld
    from hones_nn.embedded.architectures import tiny_llava_processor

    config = _config(tmp_path, task_weights="1,1,1,3")
    config.batch_size = 12
    assert batch_tasks(config).count("retrieval") == 6
    scenes = SyntheticWorld(0).scenes({"train": 20})["train"]
    batch = make_batch(tiny_llava_processor(), scenes, step=0, config=config)
    labels = batch["labels"]
    eos = tiny_llava_processor().tokenizer.eos_token_id
    for row, ids in zip(labels, batch["input_ids"]):
        kept = row[row != -100]
        assert len(kept) >= 2 and kept[-1] == eos  # the answer, then </s>
        assert torch.equal(kept, ids[row != -100])


def test_qwen_architecture_trains_and_loads_through_the_same_pipeline(tmp_path):
    """tiny-qwen2.5-vl is trained by the same script; its export loads with load_model and
    its batches carry the Qwen inputs, answer-only labels ending in <|im_end|>."""
    from hones_nn.data.synthetic import SyntheticWorld
    from hones_nn.embedded.architectures import BUILDERS
    from hones_nn.models.adapters import adapter_for
    from hones_nn.models.loading import load_model

    config = _config(tmp_path / "q", architecture="qwen2.5-vl")
    model, processor = BUILDERS["qwen2.5-vl"](seed=0)
    scenes = SyntheticWorld(0).scenes({"train": 20})["train"]
    batch = make_batch(processor, scenes, step=0, config=config, adapter=adapter_for(model.config))
    assert {"pixel_values", "image_grid_thw", "mm_token_type_ids", "labels"} <= set(batch)
    # 12 x 12 patches of 4 pixels on a 48 x 48 image, merged 2 x 2: 36 image tokens, one per letter cell
    assert batch["image_grid_thw"].tolist() == [[1, 12, 12]] * config.batch_size
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(1)
    assert image_tokens.tolist() == [36] * config.batch_size
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in batch["labels"]:
        kept = row[row != -100]
        assert len(kept) >= 2 and kept[-1] == eos

    final = train(config)
    loaded = load_model(str(final))
    assert type(loaded.model).__name__ == "Qwen2_5_VLForConditionalGeneration" and loaded.family == "qwen"
    assert loaded.sizes.num_layers == 4 and loaded.sizes.d_ff == 1024


def test_unknown_architecture_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="qwen2.5-vl"):
        _config(tmp_path, architecture="gpt2")

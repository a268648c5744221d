"""A CPU model actor for a local NDIF server (docs/ndif-local.md, point 4).

NDIF's stock actor calls CUDA (set_device, synchronize, a placement check). This
subclass loads the model on CPU with the same loader, ignores the (declared, not real)
GPU allocation, and replaces the cache moves and per-request cleanup with CPU versions.
It runs inside the server's Python 3.12 venv, never inside the project's.
Selected with NDIF_DEFAULT_MODEL_ACTOR_CLASS=hones_cpu_actor.CPUModelActor.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any

import ray
import torch
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel

logger = logging.getLogger("ndif")


class _CPUModelDeployment(BaseModelDeployment):
    def load_from_disk(self) -> HuggingFaceModel:
        started = time.time()
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, **self.kwargs)
        model._module.requires_grad_(False)
        logger.info(f"CPU actor loaded {self.model_key} in {time.time() - started:.1f}s")
        return model

    async def to_cache(self) -> None:
        self.cached = True  # weights already live on CPU

    def from_cache(self, gpu_mem_bytes_by_id: dict[int, int]) -> None:
        self.gpu_mem_bytes_by_id = gpu_mem_bytes_by_id
        self.cached = False

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


@ray.remote(num_cpus=1, max_restarts=-1)
class CPUModelActor(_CPUModelDeployment):
    """The model actor the local stack deploys for every model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

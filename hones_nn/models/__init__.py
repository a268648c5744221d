"""Models: architecture adapters, loading, the embedded tiny-llava and its training."""

from hones_nn.models.adapters import ArchitectureAdapter, adapter_for, register_adapter, supported_architectures
from hones_nn.models.loading import LoadedModel, load_model

__all__ = [
    "ArchitectureAdapter",
    "LoadedModel",
    "adapter_for",
    "load_model",
    "register_adapter",
    "supported_architectures",
]

"""Steering (HONES section 4.3, appendix F): learn per-neuron scales s = 1 + delta on the
selected neurons with all weights frozen, compare with matched-budget baselines on the
test split, test the gains by a paired bootstrap, and transfer the scales out of domain.

Modules: :mod:`~hones_nn.steering.scales` (the scales and their training loop),
:mod:`~hones_nn.steering.baselines` (Fixed-Amp, Grid-Search, RandNeuron, no-KL),
:mod:`~hones_nn.steering.bootstrap` (paired bootstrap), :mod:`~hones_nn.steering.io`
(neuron files in, scales files out), :mod:`~hones_nn.steering.report` (the experiments).
"""

from hones_nn.steering.io import ScalesFile, load_scales, read_neuron_file, save_scales, select_neurons
from hones_nn.steering.scales import SteeringConfig, TrainResult, scale_hooks, train_scales

__all__ = [
    "ScalesFile",
    "SteeringConfig",
    "TrainResult",
    "load_scales",
    "read_neuron_file",
    "save_scales",
    "scale_hooks",
    "select_neurons",
    "train_scales",
]

"""Wang et al.'s fuzzy multimodal neuron sets (perturbation attribution, fuzzy membership,
VQA modulation, suppression) and the concept-level analyses shared with Pan et al.

* :mod:`hones_nn.concepts.catalog`: which concepts a benchmark has and their pixel masks;
* :mod:`hones_nn.concepts.perturb`: patch noise after the vision tower's patch embedding,
  captions and activation differences over generated tokens, the caption check;
* :mod:`hones_nn.concepts.fuzzy`: membership mu = minmax(c * s), the top-20% sets,
  interrogative-word sets, Parquet I/O;
* :mod:`hones_nn.concepts.modulate`: a <- a (1 + lambda_x mu_x + lambda_q mu_q), the
  per-question-type table, the suppression check;
* :mod:`hones_nn.concepts.analysis`: top tokens per neuron, Spearman correlation between
  concepts, layer distribution, plots.
"""

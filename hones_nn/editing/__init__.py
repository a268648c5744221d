"""Pan et al.'s editing of multimodal neurons: a closed-form change of selected neurons'
down-projection write-out that makes the model say a target token where it said a source
token (see :mod:`hones_nn.editing.edit`)."""

"""Concept-level analyses of fuzzy sets (Wang et al. 4.2.2, 4.2.4, 4.2.5 / Pan et al.).

* Top tokens per neuron: the write-out W_down[:, i] of neuron (l, i) projected onto the
  vocabulary, W_U (gamma * W_down[:, i]) with gamma the final RMSNorm's weight (the norm's
  per-token scale is a positive constant for one vector, so it does not change the
  ranking); the ``k`` highest tokens. A set's *semantic relevance* is the fraction of its
  top ``fraction`` (5%) members whose top-10 tokens contain the concept word (visual sets;
  interrogative sets: the interrogative word's first token).
* Semantic correlation: Spearman's rank correlation between two concepts' memberships,
  over the union of all sets' members (a neuron outside a set has membership 0).
* Layer distribution: the number of members of each set per layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hones_nn.concepts.fuzzy import FuzzySets


@torch.no_grad()
def vocab_projection(loaded, layer: int, neurons) -> torch.Tensor:
    """[k, vocab]: W_U (gamma * W_down[:, i]) for the given neurons of ``layer``."""
    adapter, model = loaded.adapter, loaded.model
    W = adapter.down_proj(model, layer).weight.detach().float()  # [hidden, d_ff]
    gamma = adapter.final_norm(model).weight.detach().float()
    W_U = adapter.lm_head(model).weight.detach().float()
    cols = W[:, torch.as_tensor(list(neurons), dtype=torch.long)]  # [hidden, k]
    return (W_U @ (gamma.unsqueeze(1) * cols)).T


def top_tokens(loaded, layer: int, neuron: int, k: int = 10) -> list[str]:
    scores = vocab_projection(loaded, layer, [neuron])[0]
    ids = torch.topk(scores, k).indices.tolist()
    return [loaded.tokenizer.convert_ids_to_tokens(i) for i in ids]


def concept_word(name: str) -> str:
    return name.split(":", 1)[1].split()[0] if name.startswith("q:") else name


def token_report(loaded, sets: FuzzySets, k: int = 10, per_set: int = 5, fraction: float = 0.05) -> dict:
    """Per set: top tokens of its ``per_set`` highest-membership neurons, and its semantic relevance."""
    tokenizer = loaded.tokenizer
    out = {}
    for name in sets.names:
        rows = sets.members(name)
        word = concept_word(name)
        n_rel = max(1, round(fraction * len(rows)))
        hits = []
        for layer, neuron in zip(rows["layer"].to_numpy()[:n_rel], rows["neuron"].to_numpy()[:n_rel]):
            tokens = top_tokens(loaded, int(layer), int(neuron), k)
            hits.append(any(t.lstrip("▁Ġ#").lower() == word.lower() for t in tokens))
        examples = []
        for layer, neuron, mu in zip(
            rows["layer"].to_numpy()[:per_set],
            rows["neuron"].to_numpy()[:per_set],
            rows["membership"].to_numpy()[:per_set],
        ):
            examples.append(
                {
                    "layer": int(layer),
                    "neuron": int(neuron),
                    "membership": float(mu),
                    "top_tokens": top_tokens(loaded, int(layer), int(neuron), k),
                }
            )
        in_vocab = word in tokenizer.get_vocab() or word.capitalize() in tokenizer.get_vocab()
        out[name] = {
            "word": word,
            "word_in_vocab": bool(in_vocab),
            "n_relevance": n_rel,
            "semantic_relevance": float(np.mean(hits)),
            "neurons": examples,
        }
    return out


def spearman_matrix(sets: FuzzySets, names: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Spearman rho between the memberships of every pair of sets (over the union of members)."""
    from hones_nn.utils.stats import spearman_matrix as rank_correlations

    names = names or sets.names
    f = sets.frame[sets.frame["in_set"] & sets.frame["concept"].isin(names)]
    keys = sorted(set(zip(f["layer"], f["neuron"])))
    if not keys:
        raise ValueError(f"{sets.path}: the sets are empty, nothing to correlate")
    index = {key: j for j, key in enumerate(keys)}
    matrix = np.zeros((len(names), len(keys)))
    for i, name in enumerate(names):
        rows = f[f["concept"] == name]
        for layer, neuron, mu in zip(rows["layer"], rows["neuron"], rows["membership"]):
            matrix[i, index[(layer, neuron)]] = mu
    if len(names) == 1:
        return names, np.ones((1, 1))
    return names, rank_correlations(matrix)


def layer_distribution(sets: FuzzySets, num_layers: int) -> dict[str, list[int]]:
    out = {}
    for name in sets.names:
        layers = sets.members(name)["layer"].to_numpy()
        out[name] = np.bincount(layers, minlength=num_layers).astype(int).tolist()
    return out


# ------------------------------------------------------------------ plots


def plot_spearman(names, rho, out_prefix, formats=("png",), title="Spearman correlation of memberships"):
    from hones_nn.plots import new_figure, save

    n = len(names)
    fig = new_figure(size=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(rho, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return save(fig, out_prefix, formats)


def plot_layer_distribution(
    distribution: dict[str, list[int]], out_prefix, formats=("png",), title="Fuzzy-set members per layer"
):
    from hones_nn.plots import new_figure, save

    fig = new_figure(size=(8.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    for k, (name, counts) in enumerate(distribution.items()):
        style = "--" if name.startswith("q:") else "-"
        ax.plot(range(len(counts)), counts, style, marker="o", label=name, color=palette(k % 20))
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons in set")
    ax.set_xticks(range(len(next(iter(distribution.values())))))
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    return save(fig, out_prefix, formats)


def analyze(loaded, sets: FuzzySets, out: str | Path, formats=("png",), k: int = 10) -> dict:
    """All three analyses, written to ``out`` (analysis.json and the plots)."""
    from hones_nn.utils.io import atomic_write_json

    out = Path(out)
    sizes = loaded.sizes
    sets.check_model(loaded)
    tokens = token_report(loaded, sets, k=k)
    names, rho = spearman_matrix(sets)
    distribution = layer_distribution(sets, sizes.num_layers)
    files = [str(p) for p in plot_spearman(names, rho, out / "spearman", formats)]
    files += [str(p) for p in plot_layer_distribution(distribution, out / "layers", formats)]
    report = {
        "top_tokens": tokens,
        "spearman": {"names": names, "rho": rho.round(6).tolist()},
        "layer_distribution": distribution,
        "plots": files,
    }
    atomic_write_json(out / "analysis.json", report)
    return report

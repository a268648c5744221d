"""Fuzzy neuron sets (Wang et al. section 3.2 and 5) and their Parquet file.

For a concept x with N images and per-image activation differences delta_n (eq. 4, over
all L * d_ff neurons):

* U_n = the ``top_n`` (default 100) neurons of largest delta_n (ties: lower flat index
  first), U_x = union over n;
* stability c(u) = (1 / N) * #{n : u in U_n}                              (eq. 5)
* s(u) = sqrt( sum_n delta_n(u) I(u in U_n) / sum_n I(u in U_n) )         (eq. 6)
  (the mean is clamped at 0 before the root: a neuron can enter a top-100 with a
  negative delta only when fewer than 100 deltas are positive);
* mu(u) = minmax over U_x of c(u) * s(u)                                   (eq. 7)
  (all equal -> mu = 1);
* the set X = {u in U_x : mu(u) >= theta}, theta = the k-th largest mu with
  k = ceil(keep_ratio * |U_x|), keep_ratio 0.2 ("top 20%"; ties at theta kept).

Interrogative-word sets (section 5): for each VQA question, the same image with a
declarative sentence formed from the question and its answer; delta_n = mean z over the
text tokens of the question input - the same over the declarative input (one forward,
no generation); then the same membership recipe. The declaratives of the synthetic
question templates are listed in :data:`DECLARATIVE_RULES` (lower case: the embedded
tokenizer's vocabulary); a question no rule matches is skipped and counted.

File ``fuzzy_sets.parquet``: one row per (concept, neuron) of every set with columns
``concept`` (str; interrogative sets are named ``q:<word>``, e.g. ``q:what``),
``kind`` ("visual" / "interrogative"), ``layer`` int32, ``neuron`` int32,
``membership`` float64, ``stability`` float64, ``mean_delta`` float64 (s), ``in_set``
bool (False rows: U_x members under the threshold, kept for the analyses). Metadata
``hones_fuzzy`` (JSON): model, weights hash, data, split, settings, per-set sizes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SETS_FILE = "fuzzy_sets.parquet"
META_KEY = b"hones_fuzzy"


@dataclass
class Membership:
    """The fuzzy set of one concept over flat neuron indices (layer * d_ff + neuron)."""

    neurons: np.ndarray  # int64 [|U_x|], sorted
    stability: np.ndarray  # c
    mean_delta: np.ndarray  # s
    membership: np.ndarray  # mu
    in_set: np.ndarray  # bool: mu >= theta
    theta: float
    n_images: int


def top_indices(delta: np.ndarray, top_n: int) -> np.ndarray:
    """Indices of the ``top_n`` largest values (ties: lower index first)."""
    order = np.lexsort((np.arange(delta.size), -delta))
    return order[: min(top_n, delta.size)]


def fuzzy_membership(deltas: np.ndarray, top_n: int = 100, keep_ratio: float = 0.2) -> Membership:
    """Eq. 5-8 from the per-image deltas [N, n_neurons]."""
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.ndim != 2 or deltas.shape[0] == 0:
        raise ValueError(f"need deltas [n_images >= 1, n_neurons], got shape {deltas.shape}")
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    n = deltas.shape[0]
    hit = np.zeros(deltas.shape, dtype=bool)
    for k in range(n):
        hit[k, top_indices(deltas[k], top_n)] = True
    count = hit.sum(0)
    union = np.flatnonzero(count)
    c = count[union] / n
    mean = (deltas[:, union] * hit[:, union]).sum(0) / count[union]
    s = np.sqrt(np.clip(mean, 0.0, None))
    product = c * s
    low, high = product.min(), product.max()
    mu = np.ones_like(product) if high == low else (product - low) / (high - low)
    k = math.ceil(keep_ratio * union.size)
    theta = float(np.sort(mu)[::-1][k - 1])
    return Membership(union.astype(np.int64), c, s, mu, mu >= theta, theta, n)


# ------------------------------------------------------------------ interrogative pairs

# (interrogative word, question regex, declarative template); groups of the regex and
# {answer} fill the template. Lower case: the embedded vocabulary has no "The"/"There".
DECLARATIVE_RULES: list[tuple[str, re.Pattern, str]] = [
    ("what", re.compile(r"^what color is the (\w+)\?$", re.I), "the {0} is {answer}."),
    ("what", re.compile(r"^what shape is the (\w+) object\?$", re.I), "the {0} object is a {answer}."),
    ("how many", re.compile(r"^how many (\w+) are there\?$", re.I), "there are {answer} {0}."),
    ("is", re.compile(r"^is there (an? \w+ \w+)\?$", re.I), None),  # yes -> "there is ...", no -> "there is no ..."
]


def declarative(question: str, answer: str) -> tuple[str, str] | None:
    """(interrogative word, declarative sentence) of a question, or None when no rule matches."""
    q = question.strip()
    for word, pattern, template in DECLARATIVE_RULES:
        m = pattern.match(q)
        if not m:
            continue
        if template is None:  # existence
            a = answer.strip().lower()
            if a not in ("yes", "no"):
                return None
            phrase = m.group(1)
            if a == "no":
                phrase = re.sub(r"^an? ", "", phrase)
                return word, f"there is no {phrase}."
            return word, f"there is {phrase}."
        return word, template.format(*m.groups(), answer=answer.strip())
    return None


# 5W2H (Wang et al.) and the yes/no openers, for questions no rule above matches
LEADING_WORDS = ("how many", "what", "why", "who", "which", "where", "when", "how", "is", "are", "does", "do")


def interrogative_of(question: str) -> str | None:
    """The interrogative word of a question: by the rules above, else its leading 5W2H /
    yes-no word (None: neither)."""
    q = question.strip()
    for word, pattern, _ in DECLARATIVE_RULES:
        if pattern.match(q):
            return word
    lowered = " ".join(re.findall(r"[a-z]+", q.lower()))
    for word in LEADING_WORDS:
        if lowered == word or lowered.startswith(word + " "):
            return word
    return None


def q_set_name(word: str) -> str:
    return f"q:{word}"


# ------------------------------------------------------------------ the Parquet file


def write_sets(path: str | Path, sets: dict[str, tuple[str, Membership]], d_ff: int, meta: dict) -> Path:
    """``sets``: name -> (kind, Membership). Atomic."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hones_nn.utils.io import atomic_write_with

    names, kinds, layers, neurons, mus, cs, ss, ins = [], [], [], [], [], [], [], []
    for name, (kind, m) in sets.items():
        order = np.lexsort((m.neurons, -m.membership))
        names += [name] * len(order)
        kinds += [kind] * len(order)
        layers.append((m.neurons[order] // d_ff).astype(np.int32))
        neurons.append((m.neurons[order] % d_ff).astype(np.int32))
        mus.append(m.membership[order])
        cs.append(m.stability[order])
        ss.append(m.mean_delta[order])
        ins.append(m.in_set[order])

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    table = pa.table(
        {
            "concept": pa.array(names, pa.string()),
            "kind": pa.array(kinds, pa.string()),
            "layer": pa.array(cat(layers, np.int32)),
            "neuron": pa.array(cat(neurons, np.int32)),
            "membership": pa.array(cat(mus, np.float64)),
            "stability": pa.array(cat(cs, np.float64)),
            "mean_delta": pa.array(cat(ss, np.float64)),
            "in_set": pa.array(cat(ins, bool)),
        }
    )
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    return atomic_write_with(path, lambda tmp: pq.write_table(table, tmp))


@dataclass
class FuzzySets:
    """The sets of a ``fuzzy build`` folder (or Parquet file)."""

    frame: object  # pandas DataFrame (all U_x rows)
    meta: dict
    path: str

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(self.frame["concept"]))

    def visual(self) -> list[str]:
        return list(dict.fromkeys(self.frame.loc[self.frame["kind"] == "visual", "concept"]))

    def interrogative(self) -> list[str]:
        return list(dict.fromkeys(self.frame.loc[self.frame["kind"] == "interrogative", "concept"]))

    def members(self, name: str):
        """The set's rows (in_set), membership descending."""
        if name not in self.names:
            raise KeyError(f"no fuzzy set {name!r} in {self.path}; sets: {', '.join(self.names)}")
        f = self.frame
        return f[(f["concept"] == name) & f["in_set"]]

    def dense(self, name: str, num_layers: int, d_ff: int, fixed: float | None = None) -> np.ndarray:
        """mu of every neuron [L, d_ff] (0 outside the set; ``fixed`` instead of mu for the -Fix settings)."""
        out = np.zeros((num_layers, d_ff), dtype=np.float64)
        rows = self.members(name)
        out[rows["layer"].to_numpy(), rows["neuron"].to_numpy()] = (
            rows["membership"].to_numpy() if fixed is None else fixed
        )
        return out

    def check_model(self, loaded) -> None:
        sizes = loaded.sizes
        shape = self.meta.get("shape")
        if shape and tuple(shape) != (sizes.num_layers, sizes.d_ff):
            raise ValueError(
                f"{self.path} was built on a model with {shape[0]} layers x {shape[1]} neurons, but "
                f"{loaded.model_id} has {sizes.num_layers} x {sizes.d_ff}; rebuild with "
                "`hones-nn fuzzy build`"
            )
        if self.frame.empty:
            raise ValueError(f"{self.path} holds no neuron; rebuild with `hones-nn fuzzy build`")


def read_sets(path: str | Path) -> FuzzySets:
    """A ``fuzzy build`` output folder or its ``fuzzy_sets.parquet``."""
    import pyarrow.parquet as pq

    path = Path(path)
    file = path / SETS_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{path}: no {SETS_FILE}; build the sets with `hones-nn fuzzy build --out-dir DIR`")
    table = pq.read_table(file)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(
            f"{file} is not a fuzzy-set file (no {META_KEY.decode()} metadata); build one with `hones-nn fuzzy build`"
        )
    return FuzzySets(table.to_pandas(), json.loads(raw), str(file))

"""The notebooks run from top to bottom and show what their markdown promises.

Each notebook is executed in a fresh python3 kernel with nbclient, with HONES_NN_HOME (the
benchmark cache) and TMPDIR (the notebook's out_dir) under pytest's tmp_path, so nothing is
written to the home folder or the repository. Cells are found by their metadata tags.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
QUICKSTART = NOTEBOOKS / "01_quickstart.ipynb"
CELL_TIMEOUT = 600  # seconds per cell


def _cells_by_tag(nb) -> dict[str, dict]:
    out = {}
    for cell in nb.cells:
        for tag in cell.get("metadata", {}).get("tags", []):
            out[tag] = cell
    return out


def _stdout(cell) -> str:
    return "".join(
        o.get("text", "")
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


def _body_rows(html: str) -> int:
    """Rows of the body of a pandas HTML table."""
    return html.split("<tbody>", 1)[1].count("<tr")


def _data(cell, mime: str) -> list:
    return [
        o["data"][mime]
        for o in cell.get("outputs", [])
        if o.get("output_type") in ("execute_result", "display_data") and mime in o.get("data", {})
    ]


def _execute(path: Path, tmp_path, monkeypatch):
    """Run a notebook top to bottom in a fresh kernel; (the executed notebook, HONES_NN_HOME, TMPDIR)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for module in ("ipykernel", "matplotlib", "pandas"):
        pytest.importorskip(module)

    home, scratch = tmp_path / "hones_home", tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("HONES_NN_HOME", str(home))  # the kernel inherits the environment
    monkeypatch.setenv("TMPDIR", str(scratch))

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    print(f"{path.name} executed in {time.perf_counter() - start:.1f} s")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None
            assert not [o for o in cell.outputs if o.get("output_type") == "error"]
    return nb, home, scratch


def test_notebooks_are_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb, home, scratch = _execute(QUICKSTART, tmp_path, monkeypatch)

    # the default benchmark was built in HONES_NN_HOME, the score tables under TMPDIR
    assert list((home / "benchmarks").glob("*/hones_dataset.json"))
    assert list(scratch.glob("hones_quickstart_*/vqa.heads.parquet"))
    assert list(scratch.glob("hones_quickstart_*/vqa.hones.parquet"))

    cells = _cells_by_tag(nb)
    for tag in ("example-image", "heads-plot", "layers-plot"):
        assert _data(cells[tag], "image/png"), f"cell {tag!r} drew no figure"

    assert "4096 neurons" in _stdout(cells["model"])
    example = _stdout(cells["example-image"])
    assert "VQA question:" in example and "OCR word" in example and "caption" in example

    trace = _stdout(cells["trace"])
    assert "image tokens:        (4, 36, 128)" in trace
    assert re.search(r"head L\d+\.H\d+ output at T: \(4, 16\)", trace)
    assert re.search(r"neuron z of layer \d+ at T: \(4, 1024\)", trace)
    top5 = _data(cells["top5"], "text/html")
    assert top5 and _body_rows(top5[0]) == 5

    top10 = _data(cells["rank"], "text/plain")
    assert top10 and all(col in top10[0] for col in ("layer", "neuron", "score", "rank"))
    assert _body_rows(_data(cells["rank"], "text/html")[0]) == 10

    mask = _stdout(cells["mask"])
    assert "masking k = 41 of 4096 neurons" in mask
    for label in ("base:", "masked (HONES top 1%):", "random control:"):
        assert re.search(re.escape(label) + r"\s+\d\.\d{3}", mask), (label, mask)
    assert re.search(r"relative drop:\s+[+-]\d+\.\d%", mask), mask


COMPARE_STEER = NOTEBOOKS / "02_compare_and_steer.ipynb"


@pytest.mark.slow
def test_compare_and_steer_notebook_runs(tmp_path, monkeypatch):
    nb, _, scratch = _execute(COMPARE_STEER, tmp_path, monkeypatch)

    cells = _cells_by_tag(nb)
    compare_html = _data(cells["compare"], "text/html")[0]
    assert _body_rows(compare_html) == 2 and "hones" in compare_html and "dla" in compare_html
    assert "top 1% = 41 neurons masked on 60 test images" in _stdout(cells["compare"])
    assert re.search(r"shared top-1% neurons: \d+ of 41", _stdout(cells["agreement"]))
    assert re.search(r"Spearman correlation of all scores: -?\d\.\d{3}", _stdout(cells["agreement"]))
    assert _body_rows(_data(cells["groups"], "text/html")[0]) >= 4  # at least the four task-specific groups
    overlap_html = _data(cells["overlap"], "text/html")[0]
    assert _body_rows(overlap_html) == 15 and "GENERAL" in overlap_html
    assert "dominant salient group per task" in _stdout(cells["overlap"])
    steer_html = _data(cells["steer"], "text/html")[0]
    assert _body_rows(steer_html) == 4
    for condition in ("base", "fixed-amp", "grid", "ours"):
        assert f"<td>{condition}</td>" in steer_html, condition
    assert _body_rows(_data(cells["bootstrap"], "text/html")[0]) == 3

    assert len(_data(cells["plots"], "image/png")) == 4
    for name in ("heads", "layers", "groups", "steering"):
        for suffix in (".png", ".svg"):
            files = list(scratch.glob(f"hones_compare_steer_*/figures/{name}{suffix}"))
            assert files and files[0].stat().st_size > 1000, (name, suffix)
    assert list(scratch.glob("hones_compare_steer_*/steer-vqa/scales.safetensors"))
    assert list(scratch.glob("hones_compare_steer_*/overlap/overlap.parquet"))

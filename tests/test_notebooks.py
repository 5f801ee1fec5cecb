"""Execute the notebooks in a small configuration (few training steps)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# Small configurations: few steps, and the modes whose sections cover the whole story.
SMALL = {
    "01_deq.ipynb": {"INNERLOOP_NB_STEPS": "4", "INNERLOOP_NB_MODES": "implicit,jacobianfree"},
    "02_unrolls.ipynb": {"INNERLOOP_NB_SCALE": "0.05"},
    "03_learned_optimizer.ipynb": {"INNERLOOP_NB_SCALE": "0.02"},
    "04_plasticity.ipynb": {"INNERLOOP_NB_SCALE": "0.02"},
    "05_badger.ipynb": {"INNERLOOP_NB_SCALE": "0.02"},
    "06_population.ipynb": {"INNERLOOP_NB_SCALE": "0.05"},
    "09_nature_nurture.ipynb": {"INNERLOOP_NB_SCALE": "0.05"},
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.subprocess
def test_notebook_executes(name, monkeypatch, tmp_path):
    for key, value in SMALL[name].items():
        monkeypatch.setenv(key, value)  # inherited by the kernel
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    images = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) >= 3  # the accuracy/trade-off, memory and residual figures


def test_every_notebook_has_a_small_configuration():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} <= set(SMALL)

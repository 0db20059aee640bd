"""The walkthrough notebook runs top to bottom (its cells assert on their results)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 70-140 s on 2 cores: the whole walkthrough; make test-all
def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("WMH_WORKDIR", str(tmp_path))
    notebook = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(output.get("text", "") for cell in notebook.cells
                      if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "overall Dice (SYNTHETIC):" in outputs

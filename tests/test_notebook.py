"""docs/notebook.ipynb runs from top to bottom, so the README's notebook never rots."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.ipynb"


@pytest.mark.slow
def test_the_notebook_trains_looks_samples_interpolates_and_exports(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = notebook.cells[1]
    assert parameters.source.startswith("# How long to train")
    parameters.source = f"MINUTES = None\nSTEPS = 40\nOUT = {str(tmp_path / 'run')!r}\n"  # seconds, not minutes
    notebook.cells.insert(1, nbformat.v4.new_code_cell(  # the test's small model and its own cache
        "import os\nos.environ['PURRGAN_DATA'] = " + repr(os.environ["PURRGAN_DATA"])))
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {index: cell.get("outputs", []) for index, cell in enumerate(notebook.cells)}
    assert not [o for cell in outputs.values() for o in cell if o.get("output_type") == "error"]
    pictures = [o for cell in outputs.values() for o in cell if "image/png" in o.get("data", {})]
    assert len(pictures) >= 4  # the final grid, the losses, new samples, the interpolation
    assert (tmp_path / "run" / "digits.onnx").is_file() and (tmp_path / "run" / "report.html").is_file()
    assert "Run(" in str(outputs[4])  # the Run's summary line

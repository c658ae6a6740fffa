"""Execute every tutorial notebook in `notebooks/` from top to bottom, as a reader would.

Each notebook runs in a fresh `python3` kernel (the kernelspec that the `ipykernel` package
installs into the environment, so no `ipykernel install` step is needed), with `notebooks/` as
its working directory. A failing cell fails the test with that cell's source and traceback.
The notebooks are committed without outputs; a second test keeps it that way.
"""

import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def test_notebooks_exist():
    names = [path.stem for path in NOTEBOOKS]
    for expected in ("01_clean_transformer", "02_induction_heads", "03_activation_patching", "04_logit_lens", "05_circuits", "06_saes"):
        assert expected in names, f"notebooks/{expected}.ipynb is missing (found {names})"


def test_python3_kernel_resolves():
    """The kernel the notebooks name is found without a manual `python -m ipykernel install`."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.language == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    with_outputs = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
    assert not with_outputs, f"{path.name}: cells {with_outputs} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path: Path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        message = ANSI_ESCAPE.sub("", str(error))  # IPython colours its tracebacks
        pytest.fail(f"{path.name}: a cell failed\n{message}", pytrace=False)
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")

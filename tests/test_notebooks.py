"""The inference notebooks run top to bottom (nbclient, CPU only) against exports of a tiny
model trained for a few steps on the embedded digits data, with no error cell.

cifar.ipynb and mnist.ipynb load a ``scripts/export.py``-style export (safetensors + ONNX
sibling) of the digits model, whose dataset is always present; svhn.ipynb gets an export that
names SVHN, which is absent offline, so it exercises the synthetic-data fallback and builds its
own ONNX file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SPEC = dict(name="baseline", num_classes=10, in_channels=1, image_size=8, filters=[4, 8, 8],
            units=[16, 16], activation="elu", dropout=0.0)  # fmt: skip
DIGITS = dict(name="digits", root="data/digits", channels=1, image_size=8, num_classes=10,
              mean=[0.3], std=[0.4], val_fraction=0.15)  # fmt: skip


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A few Adam steps of the tiny baseline on digits through tritoncnn's kernels, saved as a
    training checkpoint and exported like scripts/export.py does."""
    from tritoncnn import data, models
    from tritoncnn.data.loader import GPULoader
    from tritoncnn.export import to_safetensors
    from tritoncnn.export.from_checkpoint import export_checkpoint
    from tritoncnn.nn import CrossEntropyLoss
    from tritoncnn.optim import Adam
    from tritoncnn.train import checkpoint

    tmp = tmp_path_factory.mktemp("nb")
    torch.manual_seed(0)
    model = models.build(**SPEC)
    opt = Adam(model.parameters(), lr=1e-2)
    x, y = data.load("digits", DIGITS["root"], "train")
    loss_fn = CrossEntropyLoss()
    model.train()
    for i, (xb, yb) in enumerate(GPULoader(x, y, 16, DIGITS["mean"], DIGITS["std"], seed=0)):
        if i == 3:
            break
        loss_fn(model(xb), yb)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
    cfg = {"model": {"_target_": "tritoncnn.models.build", **SPEC}, "dataset": DIGITS}
    checkpoint.save(tmp / "run" / "checkpoints", "best", model.state_dict(),
                    {"config": cfg, "best_val": None, "epoch": 1})  # fmt: skip
    digits_export = export_checkpoint(tmp / "run", out=tmp / "exports")[0].path
    svhn_like = tmp / "exports" / "svhn-baseline-best.safetensors"  # no ONNX sibling
    to_safetensors(model.eval(), svhn_like, model=SPEC, dataset="svhn", mean=[0.3], std=[0.4],
                   classes=[str(i) for i in range(10)], channels=1, image_size=8)  # fmt: skip
    return {"digits": digits_export, "svhn": svhn_like, "data": tmp / "no-data"}


def outputs(nb) -> tuple[str, int]:
    """All stream text of an executed notebook, and the number of images it drew."""
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{out.ename}: {out.evalue}"
            if out.output_type == "stream":
                text.append(out.text)
            elif "image/png" in out.get("data", {}):
                images += 1
    return "".join(text), images


@pytest.mark.parametrize(
    "notebook,export", [("cifar", "digits"), ("mnist", "digits"), ("svhn", "svhn")]
)
def test_notebook_runs(notebook, export, exports, monkeypatch):
    monkeypatch.setenv("TRITONCNN_EXPORT", str(exports[export]))
    monkeypatch.setenv("TRITONCNN_DATA", str(exports["data"]))
    monkeypatch.setenv("TRITONCNN_OFFLINE", "1")  # the fallback, not a download
    monkeypatch.setenv("TRITONCNN_NB_TRITON_IMAGES", "32")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nb = nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4)
    assert 'EXPORT = os.environ.get("TRITONCNN_EXPORT"' in nb.cells[0].source  # the parameter
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # fmt: skip
    text, images = outputs(nb)
    assert images >= 6, text  # grid, confusion, per-class, mistakes, histogram, speed
    if export == "svhn":
        assert "falling back to the embedded synthetic images" in text
    else:
        assert "359 images from the digits test split" in text
    # the three runtimes agree on the subset tritoncnn ran
    diffs = re.findall(r"(\S+) vs (\S+)\s+([\d.]+)\s+([\d.e+-]+)", text)
    assert len(diffs) == 3, text
    for a, b, _, diff in diffs:
        assert float(diff) < 1e-3, (a, b, diff)

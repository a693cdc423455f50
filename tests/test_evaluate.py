"""scripts/evaluate.py and tritoncnn.train.evaluate: accuracy, per-class accuracy and the
confusion matrix of a checkpoint, checked against scikit-learn's metrics on predictions of the
torch twin (an independent path: host normalisation, torch.nn ops)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from test_export import DIGITS, make_checkpoint

from tritoncnn import data
from tritoncnn.export import to_torch
from tritoncnn.train import evaluate as E

ROOT = Path(__file__).resolve().parents[1]
N = 40  # test images evaluated (the interpreter is slow)


def twin_predictions(model, images) -> np.ndarray:
    x = (images.astype(np.float32) / 255.0 - 0.3) / 0.4  # DIGITS mean/std
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return to_torch(model).eval()(x).argmax(1).numpy()


def test_confusion_and_per_class():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    t[t == 3] = 4  # class 3 has no samples
    cm = E.confusion_matrix(t, p, 5)
    assert np.array_equal(cm, sk_confusion(t, p, labels=range(5)))
    acc = E.per_class_accuracy(cm)
    assert np.isnan(acc[3])
    for k in (0, 1, 2, 4):
        assert acc[k] == pytest.approx(np.mean(p[t == k] == k))
    with pytest.raises(ValueError, match="outside"):
        E.confusion_matrix([0, 5], [0, 1], 5)


def test_evaluate_checkpoint(tmp_path):
    run, model = make_checkpoint(tmp_path)
    ev, paths = E.evaluate_checkpoint(run / "checkpoints" / "best.safetensors", limit=N)
    x, y = data.load("digits", DIGITS["root"], "test")
    x, y = x[:N], y[:N]
    ref = sk_confusion(y, twin_predictions(model, x), labels=range(10))
    assert np.array_equal(ev.confusion, ref) and ev.n == N
    assert ev.accuracy == pytest.approx(np.trace(ref) / N)
    assert len(set(ev.confusion.argmax(1))) > 1, "a degenerate test problem (one class only)"
    names = [p.name for p in paths]
    assert names == ["best_test_confusion_matrix.csv", "best_test_per_class_accuracy.csv",
                     "best_test_confusion_matrix.png", "best_test_evaluation.json"]  # fmt: skip
    assert all(p.parent == run for p in paths)
    with open(paths[0]) as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == [str(i) for i in range(10)]
    assert np.array_equal(np.array([r[1:] for r in rows[1:]], dtype=np.int64), ref)
    with open(paths[1]) as f:
        per = list(csv.DictReader(f))
    support = ref.sum(1)
    for k, row in enumerate(per):
        assert int(row["support"]) == support[k] and int(row["correct"]) == ref[k, k]
        if support[k]:
            assert float(row["accuracy"]) == pytest.approx(ref[k, k] / support[k], abs=1e-6)
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(paths[3].read_text())
    assert summary["accuracy"] == pytest.approx(ev.accuracy) and summary["n"] == N
    assert summary["dataset"] == "digits" and summary["model"]["name"] == "baseline"


def _script(*args, **env):
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), *args],
                          capture_output=True, text=True, env=environ, timeout=300)  # fmt: skip


def test_evaluate_script(tmp_path):
    run, _ = make_checkpoint(tmp_path)
    out = tmp_path / "report"
    r = _script(str(run), "split=train", "limit=12", f"out={out}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("train accuracy") and "(" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "best_train_confusion_matrix.csv", "best_train_confusion_matrix.png",
        "best_train_evaluation.json", "best_train_per_class_accuracy.csv",
    ]  # fmt: skip
    r = _script(str(tmp_path / "missing"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: checkpoint") and r.stderr.count("\n") == 1


def test_evaluate_bad_input(tmp_path, capsys, monkeypatch):
    run, _ = make_checkpoint(tmp_path)
    # a checkpoint of an absent dataset: one line naming dataset.root
    import tritoncnn.export.from_checkpoint as FC

    real = FC.restore

    def as_mnist(path):
        r = real(path)
        r.dataset = {**r.dataset, "name": "mnist"}
        return r

    monkeypatch.setattr(FC, "restore", as_mnist)
    monkeypatch.setenv("TRITONCNN_OFFLINE", "1")
    assert E.main([str(run), f"dataset.root={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "dataset.root" in err
    monkeypatch.setattr(FC, "restore", real)
    for argv, msg in [([str(run), "split=validation"], "splits"),
                      ([str(run), "batch_size=many"], "batch_size"),
                      ([str(run), "nope=1"], "unknown option")]:  # fmt: skip
        assert E.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err, err
    assert not list(run.glob("*.csv"))

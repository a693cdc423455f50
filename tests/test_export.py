"""Exports against the tritoncnn model they came from.

For every model of the zoo (the narrow CPU-tier copies of test_models.py on tiny images; full
width at 32x32 on the GPU tier): the safetensors file holds torch's keys and layouts and round
trips bit-exactly (raw file, ``load``, ``load_torch``); ``load_torch`` and the ONNX graph in
onnxruntime compute tritoncnn's eval-mode logits within the fp32 tolerance and predict the same
classes. Every op the ONNX exporter maps is exercised, BN folded and not, with normalisation
inside. Bad input (missing/corrupt files, unsupported ops, a failed parity check, a missing or
corrupt checkpoint) fails with one clear message and leaves no file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DEVICE, TOL, assert_close
from safetensors.torch import load_file
from test_models import CPU_CASES, randomize_, tv_mobilenet_v2_state, tv_resnet_state

from tritoncnn import data, models, nn
from tritoncnn.export import (
    ExportError,
    ParityError,
    UnsupportedOpError,
    from_torchvision,
    load,
    load_torch,
    read_metadata,
    to_onnx,
    to_safetensors,
    to_torch,
)
from tritoncnn.export import onnx_export as OX
from tritoncnn.export import parity as P
from tritoncnn.export import safetensors_io as SX
from tritoncnn.export.cli import export_main
from tritoncnn.export.from_checkpoint import export_checkpoint
from tritoncnn.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
FP32 = TOL[torch.float32]


def build(name, kw, c, s, classes=7):
    spec = dict(name=name, num_classes=classes, in_channels=c, image_size=s, **kw)
    model = models.build(**spec)
    randomize_(model)
    return model.eval(), spec


def ours(model, x) -> torch.Tensor:
    """tritoncnn's eval-mode logits for a CPU batch, back on the CPU."""
    model.eval()
    return model(x.to(DEVICE)).detach().float().cpu()


def assert_same_classes(a, b, what):
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    assert torch.equal(a.argmax(1), b.argmax(1)), f"{what}: predicted classes differ"


def leftovers(folder: Path) -> list[str]:
    """Files in ``folder`` (temp files of a staged write included)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def check_exports(model, spec, x, folder: Path) -> None:
    """Round trip + torch + onnxruntime checks of one model on batch ``x``."""
    ref = ours(model, x)
    st = folder / "m.safetensors"
    to_safetensors(model, st, parity=False, model=spec, dataset="synthetic", accuracy=0.5)
    # raw file: torch's keys, order, shapes, dtypes, contiguous (torch layout), bit-exact
    raw = load_file(str(st))
    twin_sd = to_torch(model).state_dict()
    assert set(raw) == set(twin_sd)
    for key, value in twin_sd.items():
        assert raw[key].is_contiguous() and raw[key].dtype == value.dtype, key
        assert torch.equal(raw[key], value), key
    for sd in (load(st).state_dict(), load_torch(st).state_dict()):
        assert list(sd) == list(model.state_dict())
        for key, value in model.state_dict().items():
            assert torch.equal(sd[key].cpu(), value.cpu()), key
    # load_torch computes what tritoncnn computes
    twin = load_torch(st)
    assert isinstance(twin, torch.nn.Module) and not twin.training
    with torch.no_grad():
        y_torch = twin(x.cpu())
    assert_close(y_torch, ref, tol=FP32, what="load_torch vs tritoncnn")
    assert_same_classes(y_torch, ref, "load_torch")
    # ONNX in onnxruntime computes it too (batch != 1: the batch axis is dynamic)
    ox = folder / "m.onnx"
    to_onnx(model, ox, (1, *x.shape[1:]), parity=False)
    y_onnx = P.onnx_logits(ox, x.cpu().numpy())
    assert_close(torch.from_numpy(y_onnx), ref, tol=FP32, what="onnxruntime vs tritoncnn")
    assert_same_classes(y_onnx, ref, "onnxruntime")


# --- the zoo, CPU tier ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_zoo_exports_match_tritoncnn(case, tmp_path):
    _, name, kw, n, c, s = case
    model, spec = build(name, kw, c, s)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, c, s, s, generator=g)
    check_exports(model, spec, x, tmp_path)


def every_op_net() -> nn.Sequential:
    """Every module the ONNX exporter maps, with non-default arguments."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding="same", dilation=2),
        nn.BatchNorm2d(6),
        nn.ELU(alpha=0.7),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.BatchNorm2d(6),  # not after a conv: a BatchNormalization node
        nn.LeakyReLU(0.2),
        nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6),  # depthwise, with bias
        nn.SiLU(),
        nn.Conv2d(6, 8, (1, 3), padding=(0, 1), groups=2),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 2, padding="same", bias=False),  # pads (top 0, bottom 1, left 0, right 1)
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        nn.AdaptiveAvgPool2d(2),  # 4x4 -> 2x2: an AveragePool
        nn.AvgPool2d(2, stride=1, padding=1),
        nn.MaxPool2d(2, stride=2, ceil_mode=True),  # 3x3 -> 2x2 (1x1 without ceil)
        nn.Flatten(),
        nn.Linear(32, 12),
        nn.BatchNorm1d(12),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(12, 5, bias=False),
    )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's, in the twin
@pytest.mark.parametrize("fold_bn", [True, False], ids=["fold_bn", "bn_nodes"])
def test_every_onnx_op(fold_bn, tmp_path):
    model = every_op_net()
    randomize_(model)
    x = torch.randn(3, 3, 13, 13)
    ref = ours(model, x)
    with torch.no_grad():
        assert_close(to_torch(model).eval()(x), ref, what="twin (test's own sanity)")
    path = tmp_path / "ops.onnx"
    done = to_onnx(model, path, (1, 3, 13, 13), fold_bn=fold_bn, parity_input=x)
    assert done.path == path and done.parity.same_class == 3
    import onnx

    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    expected = {"Conv", "Elu", "MaxPool", "LeakyRelu", "Sigmoid", "Mul", "Clip", "AveragePool",
                "Flatten", "Gemm", "Relu", "BatchNormalization"}  # fmt: skip
    assert expected <= ops and "Dropout" not in ops
    n_bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert n_bn == (1 if fold_bn else 3)  # the BN after the max pool cannot fold
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    y = P.onnx_logits(path, x.numpy())
    assert_close(torch.from_numpy(y), ref, what="onnxruntime")
    assert_same_classes(y, ref, "onnxruntime")
    onnx.checker.check_model(proto, full_check=True)


def test_onnx_normalisation_inside(tmp_path):
    model, spec = build("baseline", dict(filters=(4, 6, 5), units=(12, 7)), 3, 8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    pixels = torch.rand(5, 3, 8, 8)
    path = tmp_path / "norm.onnx"
    done = to_onnx(model, path, (1, 3, 8, 8), normalize=(mean, std), metadata={"dataset": "x"})
    assert done.parity.n == 4
    ref = ours(model, P.normalize_input(pixels, mean, std))
    y = P.onnx_logits(path, pixels.numpy())
    assert_close(torch.from_numpy(y), ref, what="normalising graph")
    import onnx

    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert props == {"dataset": "x"}
    assert [n.op_type for n in onnx.load(str(path)).graph.node][:2] == ["Sub", "Div"]


# --- safetensors metadata and loading ---------------------------------------------------------


def test_metadata_round_trip(tmp_path):
    model, spec = build("baseline", dict(filters=(4, 6, 5), units=(12, 7)), 1, 8, classes=3)
    path = tmp_path / "a" / "m.safetensors"
    meta = dict(dataset="digits", classes=["x", "y", "z"], mean=[0.3], std=[0.4],
                accuracy={"test_acc": 0.9})  # fmt: skip
    done = to_safetensors(model, path, model=spec, **meta)
    assert done.path == path and done.parity.reference == "torch" and done.parity.n == 4
    got = read_metadata(path)
    import tritoncnn

    spec = json.loads(json.dumps(spec))  # tuples come back as lists
    assert got["model"] == spec and got["tritoncnn_version"] == tritoncnn.__version__
    assert {k: got[k] for k in meta} == meta
    loaded = load(path)
    assert loaded.build_config == spec and loaded.export_metadata["classes"] == ["x", "y", "z"]
    assert not loaded.training
    # a loaded model re-exports without repeating its spec
    to_safetensors(loaded, tmp_path / "again.safetensors", parity=False)
    assert read_metadata(tmp_path / "again.safetensors")["model"] == spec
    assert leftovers(path.parent) == ["m.safetensors"]


def test_load_torch_launches_no_kernel(tmp_path, monkeypatch):
    model, spec = build("resnet18", dict(widths=(4, 6, 8, 10)), 3, 8)
    path = tmp_path / "r.safetensors"
    to_safetensors(model, path, parity=False, model=spec)
    x = torch.randn(2, 3, 8, 8)
    expected = ours(model, x)

    def no_kernels(*a, **k):
        raise AssertionError("a Triton kernel was launched")

    import triton.runtime.interpreter as interp
    import triton.runtime.jit as jit

    monkeypatch.setattr(interp.InterpretedFunction, "run", no_kernels)
    monkeypatch.setattr(jit.JITFunction, "run", no_kernels)
    twin = load_torch(path)
    with torch.no_grad():
        assert_close(twin(x), expected, what="load_torch")
    with pytest.raises(AssertionError, match="Triton kernel"):  # the patch bites
        model(x.to(DEVICE))


# --- bad input ----------------------------------------------------------------------------------


def test_bad_files_fail_clearly(tmp_path):
    with pytest.raises(ExportError, match="no such export file"):
        load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    for fn in (load, load_torch, read_metadata):
        with pytest.raises(ExportError, match="not a readable safetensors file"):
            fn(junk)
    model, spec = build("baseline", dict(filters=(4, 6, 5), units=(12, 7)), 3, 8)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"  # weights only, no metadata
    save_file({k: v.cpu().contiguous() for k, v in model.state_dict().items()}, str(plain))
    with pytest.raises(ExportError, match="no 'model' metadata"):
        load(plain)
    good = tmp_path / "good.safetensors"
    to_safetensors(model, good, parity=False, model=spec)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        load(truncated)
    wrong = tmp_path / "wrong.safetensors"  # metadata that does not fit the weights
    to_safetensors(model, wrong, parity=False, model={**spec, "units": [12, 8]})
    with pytest.raises(ExportError, match="do not fit"):
        load_torch(wrong)


def test_missing_spec_writes_nothing(tmp_path):
    model, _ = build("baseline", dict(filters=(4, 6, 5), units=(12, 7)), 3, 8)
    with pytest.raises(ExportError, match="build arguments"):
        to_safetensors(model, tmp_path / "m.safetensors")
    with pytest.raises(ExportError, match="JSON"):
        to_safetensors(model, tmp_path / "m.safetensors", model={"name": "baseline"}, x=object())
    assert leftovers(tmp_path) == []


class Square(nn.Module):
    """A layer the ONNX exporter does not know."""

    def forward(self, x):
        return x


@pytest.mark.parametrize(
    "bad,match",
    [
        (Square(), r"block\.1 is a Square, which has no ONNX mapping"),
        (nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
        (nn.BatchNorm2d(4, track_running_stats=False), "without running statistics"),
        (nn.AdaptiveAvgPool2d(3), "uneven windows"),
    ],
    ids=["unknown-module", "divisor_override", "bn-batch-stats", "uneven-adaptive-pool"],
)
def test_unsupported_op_writes_nothing(bad, match, tmp_path):
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bad)
    model = nn.Sequential(block, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model.add_module("block", model._modules.pop("0"))  # name the path "block"
    model._modules.move_to_end("block", last=False)
    with pytest.raises(UnsupportedOpError, match=match) as info:
        to_onnx(model, tmp_path / "m.onnx", (1, 3, 8, 8))
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path) == []


def test_parity_failure_keeps_nothing(tmp_path, monkeypatch):
    model, spec = build("baseline", dict(filters=(4, 6, 5), units=(12, 7), activation="relu"),
                        3, 8)  # fmt: skip
    ox, st = tmp_path / "m.onnx", tmp_path / "m.safetensors"
    to_onnx(model, ox, (1, 3, 8, 8))
    to_safetensors(model, st, model=spec)
    before = ox.read_bytes(), st.read_bytes()

    # an exporter bug: ReLU written as LeakyRelu(0.5) (by the BN it is fused into, or alone)
    real = OX._Exporter.activation

    def leaky(ex, code, alpha, x, path):
        if code == OX.ew.ACT_RELU:
            code, alpha = OX.ew.ACT_LEAKY_RELU, 0.5
        return real(ex, code, alpha, x, path)

    monkeypatch.setattr(OX._Exporter, "activation", leaky)
    with pytest.raises(ParityError, match="disagrees with tritoncnn"):
        to_onnx(model, ox, (1, 3, 8, 8))
    # a writer bug: one weight transposed on its way to the file
    real = SX._cpu_state

    def broken(m):
        state = real(m)
        key = "classifier.0.weight"
        state[key] = state[key].flip(0).contiguous()
        return state

    monkeypatch.setattr(SX, "_cpu_state", broken)
    with pytest.raises(ParityError, match="vs torch"):
        to_safetensors(model, st, model=spec)
    # the previous good files are untouched, and no temp file is left
    assert (ox.read_bytes(), st.read_bytes()) == before
    assert leftovers(tmp_path) == ["m.onnx", "m.safetensors"]


def test_compare_rules():
    ref = np.array([[1.0, 0.0, -1.0], [0.5, 0.5001, 0.0]])
    r = P.compare(ref + 1e-6, ref, "x")
    assert r.same_class == 2 and r.max_abs_diff == pytest.approx(1e-6)
    # a near-tie may flip without failing; a clear decision may not
    flipped = ref.copy()
    flipped[1, :2] = [0.5001, 0.5]
    assert P.compare(flipped, ref, "x").same_class == 1
    with pytest.raises(ParityError, match="max |diff|"):
        P.compare(ref + 0.1, ref, "x")
    with pytest.raises(ParityError, match="non-finite"):
        P.compare(ref * np.nan, ref, "x")
    with pytest.raises(ParityError, match="shape"):
        P.compare(ref[:, :2], ref, "x")


@pytest.mark.parametrize("act", ["relu", "silu", "elu"])
def test_bn_with_fused_activation(act, tmp_path):
    """A BatchNorm carrying a fused activation (``bn.act``, set by a fusion pass) exports the
    activation after it, folded or not."""
    from tritoncnn.kernels import elementwise as ew

    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))  # fmt: skip
    randomize_(model)
    code = {"relu": ew.ACT_RELU, "silu": ew.ACT_SILU, "elu": ew.ACT_ELU}[act]
    model[1].act, model[1].act_alpha = code, 1.0
    x = torch.randn(3, 2, 6, 6)
    ref = ours(model, x)
    for fold in (True, False):
        path = tmp_path / f"{fold}.onnx"
        to_onnx(model, path, (1, 2, 6, 6), fold_bn=fold, parity=False)
        assert_close(torch.from_numpy(P.onnx_logits(path, x.numpy())), ref, what=f"fold={fold}")


def _random_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 9, (), generator=g) if k.endswith("num_batches_tracked")
            else torch.randn(shape, generator=g) for k, shape in layout}  # fmt: skip


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_from_torchvision(name, tmp_path):
    layout = tv_resnet_state((2, 2, 2, 2)) if name == "resnet18" else tv_mobilenet_v2_state()
    state = _random_state(layout)
    model = from_torchvision(name, state)
    assert model.num_classes == 1000 and model.variant == "imagenet"
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), state[key]), key
    # from the .pth file torchvision downloads, with a new 10-class head
    pth = tmp_path / "w.pth"
    torch.save(state, pth)
    model = from_torchvision(name, pth, num_classes=10)
    head = "fc" if name == "resnet18" else "classifier.1"
    for key, value in model.state_dict().items():
        if key.startswith(head + "."):
            assert value.shape[0] == 10
        else:
            assert torch.equal(value.cpu(), state[key]), key
    with pytest.raises(ExportError, match="missing keys"):
        from_torchvision(name, {k: v for k, v in state.items() if "running_var" not in k})
    with pytest.raises(ExportError, match="no such state_dict file"):
        from_torchvision(name, tmp_path / "none.pth")
    with pytest.raises(ExportError, match="no torchvision layout"):
        from_torchvision("vgg16_bn", state)


# --- from checkpoints, and the script ---------------------------------------------------------

TINY_MODEL = dict(name="baseline", num_classes=10, in_channels=1, image_size=8,
                  filters=[4, 8, 8], units=[16, 16], activation="elu", dropout=0.3)  # fmt: skip
DIGITS = dict(name="digits", root="data/digits", channels=1, image_size=8, num_classes=10,
              mean=[0.3], std=[0.4], val_fraction=0.15)  # fmt: skip


def calibrate_bn_(model) -> None:
    """Set the BN running statistics to those of digits training images (via the torch twin),
    so a random-weight model's predictions vary with the input as a trained one's do."""
    x, _ = data.load("digits", DIGITS["root"], "train")
    x = (x[:256].astype(np.float32) / 255.0 - 0.3) / 0.4
    twin = to_torch(model).train()
    for m in twin.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: the statistics of this batch
            m.reset_running_stats()
    with torch.no_grad():
        twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    model.load_state_dict(twin.state_dict())


def make_checkpoint(folder: Path, name: str = "best"):
    """A training checkpoint (run folder layout) of the tiny baseline: random weights,
    BN statistics of the data."""
    model = models.build(**TINY_MODEL)
    randomize_(model)
    calibrate_bn_(model)
    cfg = {"model": {"_target_": "tritoncnn.models.build", **TINY_MODEL}, "dataset": DIGITS}
    run = folder / "run"
    checkpoint.save(run / "checkpoints", name, model.state_dict(),
                    {"config": cfg, "best_val": 0.25, "epoch": 3})  # fmt: skip
    (run / "summary.json").write_text(json.dumps({"test_acc": 0.5}))
    return run, model.eval()


def test_export_checkpoint_all_formats(tmp_path):
    run, model = make_checkpoint(tmp_path)
    done = export_checkpoint(run / "checkpoints" / "best.json")  # any file of the checkpoint
    names = [d.path.name for d in done]
    assert names == ["digits-baseline-best.safetensors", "digits-baseline-best.onnx"]
    assert all(d.path.parent == run / "export" and d.parity.same_class == 4 for d in done)
    meta = read_metadata(done[0].path)
    assert meta["model"] == TINY_MODEL and meta["dataset"] == "digits"
    assert meta["classes"] == [str(i) for i in range(10)] and meta["mean"] == [0.3]
    assert meta["accuracy"] == {"best_val_acc": 0.25, "test_acc": 0.5} and meta["epoch"] == 3
    # the ONNX graph takes raw pixels in [0, 1]
    pixels = torch.rand(6, 1, 8, 8)
    ref = ours(model, P.normalize_input(pixels, [0.3], [0.4]))
    y = P.onnx_logits(done[1].path, pixels.numpy())
    assert_close(torch.from_numpy(y), ref, what="exported onnx")


def test_export_is_all_or_nothing(tmp_path, monkeypatch):
    run, _ = make_checkpoint(tmp_path)

    def unsupported(*a, **k):
        raise UnsupportedOpError("to_onnx: module x is a Thing, which has no ONNX mapping")

    monkeypatch.setattr("tritoncnn.export.from_checkpoint.to_onnx", unsupported)
    with pytest.raises(UnsupportedOpError):
        export_checkpoint(run, out=tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_export_cli_errors(tmp_path, capsys):
    run, _ = make_checkpoint(tmp_path)
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "nothing")], "incomplete: missing"),
        ([str(run), "format=tiff", f"out={out}"], "unknown export format"),
        ([str(run), "colour=red"], "unknown option 'colour'"),
        ([str(run), "parity=maybe"], "expected true or false"),
        ([], "exactly one CHECKPOINT"),
        ([str(tmp_path)], "a folder without checkpoints"),
    ]
    weights = run / "checkpoints" / "best.safetensors"
    corrupt = tmp_path / "corrupt" / "checkpoints"
    corrupt.mkdir(parents=True)
    for f in (run / "checkpoints").iterdir():
        data = f.read_bytes()
        (corrupt / f.name).write_bytes(data[: len(data) // 2] if f == weights else data)
    cases.append(([str(corrupt / "best.safetensors"), f"out={out}"], "is corrupt"))
    for argv, msg in cases:
        assert export_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
    assert leftovers(out) == []


def _script(name: str, *args: str, **env):
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                          capture_output=True, text=True, env=environ, timeout=300)  # fmt: skip


def test_export_script(tmp_path):
    run, model = make_checkpoint(tmp_path)
    r = _script("export.py", str(run), "format=onnx", f"out={tmp_path / 'x'}", "normalize=false")
    assert r.returncode == 0, r.stderr
    assert "parity vs onnxruntime" in r.stdout and leftovers(tmp_path / "x") == [
        "digits-baseline-best.onnx"
    ]
    x = torch.randn(3, 1, 8, 8)
    y = P.onnx_logits(tmp_path / "x" / "digits-baseline-best.onnx", x.numpy())
    assert_close(torch.from_numpy(y), ours(model, x), what="script's onnx")
    r = _script("export.py", str(tmp_path / "no" / "best.safetensors"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: checkpoint") and r.stderr.count("\n") == 1


# --- GPU tier: the full-width zoo at 32x32 ------------------------------------------------------

GPU_ZOO = [
    ("baseline", {}),
    ("resnet18", {}),
    ("resnet34", {}),
    ("resnet18", {"variant": "imagenet"}),
    ("mobilenetv2", {}),
    ("mobilenetv2", {"variant": "imagenet"}),
    ("vgg16_bn", {}),
]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name,kw", GPU_ZOO, ids=[f"{n}-{k.get('variant', 'cifar')}" for n, k in GPU_ZOO]
)
def test_zoo_exports_match_tritoncnn_gpu(name, kw, tmp_path):
    model, spec = build(name, kw, 3, 32, classes=10)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    # full-width nets: tens of fp32 layers on both sides, so a few ulps per layer add up;
    # 1e-4 is still far below what a wrong tap, layout or fold would cost (O(1e-1))
    ref = ours(model, x)
    st, ox = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    assert to_safetensors(model, st, model=spec, parity_input=x).parity.n == 16
    assert to_onnx(model, ox, (1, 3, 32, 32), parity_input=x).parity.n == 16
    raw = load_file(str(st))
    for key, value in model.state_dict().items():
        assert torch.equal(raw[key], value.cpu()), key
    with torch.no_grad():
        y_torch = load_torch(st)(x)
    y_onnx = torch.from_numpy(P.onnx_logits(ox, x.numpy()))
    for y, what in ((y_torch, "load_torch"), (y_onnx, "onnxruntime")):
        assert_close(y, ref, tol=1e-4, what=what)
        assert_same_classes(y, ref, what)

"""The autotuner: choice logic with an injected timer, the on-disk cache, the off switches, and
(GPU tier) the tuned conv kernels against torch in float64."""

import json
import warnings
from dataclasses import dataclass

import pytest
import torch
import triton
from helpers import assert_close, f64, randn

from tritoncnn import runtime
from tritoncnn.kernels import autotune, conv_configs, conv_wgrad
from tritoncnn.kernels import conv as K


@dataclass(frozen=True)
class Cfg:
    block: int


CANDS = [Cfg(16), Cfg(32), Cfg(64)]
PROBLEM = {"m": 100, "n": 7, "dtype": "float16/nhwc"}


class FakeClock:
    """A timer for Tuner: runs the candidate once (so the runner sees it) and reports the time
    this table gives the candidate the runner last saw."""

    def __init__(self, ms):
        self.ms = ms
        self.calls = 0
        self.last = None

    def runner(self):
        def run(cand):
            self.last = cand

        return run

    def __call__(self, fn):
        self.calls += 1
        fn()
        t = self.ms[self.last]
        if isinstance(t, Exception):
            raise t
        return t


def _never_timed(fn):
    raise AssertionError("the tuner timed a candidate where it must not")


def test_choice_is_fastest_and_remembered(tmp_path):
    clock = FakeClock({Cfg(16): 3.0, Cfg(32): 1.0, Cfg(64): 2.0})
    tuner = autotune.Tuner(tmp_path / "a.json", enabled=True, timer=clock)
    assert tuner.choose("op", PROBLEM, CANDS, Cfg(16), clock.runner) == Cfg(32)
    assert clock.calls == 3 and tuner.tunings == 1
    # In memory: neither the candidate list nor the timer is touched again.
    again = tuner.choose("op", PROBLEM, lambda: pytest.fail("candidates rebuilt"), Cfg(16), None)
    assert again == Cfg(32) and clock.calls == 3
    # Another problem is another key.
    assert tuner.choose("op", {**PROBLEM, "m": 101}, CANDS, Cfg(16), clock.runner) == Cfg(32)
    assert tuner.tunings == 2


def test_failing_candidates_are_skipped(tmp_path):
    clock = FakeClock({Cfg(16): 3.0, Cfg(32): RuntimeError("out of resources"), Cfg(64): 2.0})
    tuner = autotune.Tuner(None, enabled=True, timer=clock)
    assert tuner.choose("op", PROBLEM, CANDS, Cfg(16), clock.runner) == Cfg(64)
    clock = FakeClock({c: RuntimeError("no") for c in CANDS})
    tuner = autotune.Tuner(None, enabled=True, timer=clock)
    with pytest.raises(RuntimeError, match="every candidate failed"):
        tuner.choose("op", PROBLEM, CANDS, Cfg(16), clock.runner)


def test_cache_round_trip(tmp_path):
    path = tmp_path / "sub" / "autotune.json"
    clock = FakeClock({Cfg(16): 3.0, Cfg(32): 2.0, Cfg(64): 1.0})
    autotune.Tuner(path, enabled=True, timer=clock).choose(
        "op", PROBLEM, CANDS, Cfg(16), clock.runner
    )
    data = json.loads(path.read_text())
    assert data["version"] == autotune.CACHE_VERSION
    (key, entry), = data["entries"].items()  # fmt: skip
    assert key == autotune.make_key("op", PROBLEM)
    assert entry["config"] == {"block": 64} and entry["ms"] == 1.0 and entry["candidates"] == 3
    assert entry["heuristic"] == {"block": 16} and entry["heuristic_ms"] == 3.0
    assert not list(path.parent.glob(".autotune.*"))  # no temp file left behind
    # A fresh tuner (a new process) reads the choice without timing.
    fresh = autotune.Tuner(path, enabled=True, timer=_never_timed)
    assert fresh.choose("op", PROBLEM, CANDS, Cfg(16), None) == Cfg(64) and fresh.tunings == 0
    # Writes merge with what is on disk (another process's keys survive).
    other = FakeClock({Cfg(16): 1.0, Cfg(32): 2.0, Cfg(64): 3.0})
    fresh.timer = other
    fresh.choose("op2", PROBLEM, CANDS, Cfg(64), other.runner)
    assert len(json.loads(path.read_text())["entries"]) == 2


def test_stale_entry_is_retuned(tmp_path):
    path = tmp_path / "autotune.json"
    clock = FakeClock({Cfg(16): 1.0, Cfg(32): 2.0, Cfg(64): 3.0})
    autotune.Tuner(path, enabled=True, timer=clock).choose(
        "op", PROBLEM, CANDS, Cfg(64), clock.runner
    )
    # Cfg(16) was dropped from the candidates since: the cached entry no longer applies.
    clock2 = FakeClock({Cfg(32): 2.0, Cfg(64): 1.0})
    tuner = autotune.Tuner(path, enabled=True, timer=clock2)
    assert tuner.choose("op", PROBLEM, CANDS[1:], Cfg(32), clock2.runner) == Cfg(64)
    assert tuner.tunings == 1


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "entries": {}}', "[]"])
def test_corrupt_cache_warns_once_and_retunes(tmp_path, content):
    path = tmp_path / "autotune.json"
    path.write_text(content)
    clock = FakeClock({Cfg(16): 2.0, Cfg(32): 1.0, Cfg(64): 3.0})
    tuner = autotune.Tuner(path, enabled=True, timer=clock)
    with pytest.warns(UserWarning, match="unreadable autotune cache"):
        assert tuner.choose("op", PROBLEM, CANDS, Cfg(16), clock.runner) == Cfg(32)
    assert tuner.tunings == 1
    assert json.loads(path.read_text())["entries"]  # rewritten, readable again
    path.write_text(content)  # corrupted again: no second warning from this tuner
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuner.choose("op", {**PROBLEM, "m": 5}, CANDS, Cfg(16), clock.runner)


def _checked_runner(clock, results, output):
    """A CheckedRunner for FakeClock: candidate c adds results[c] into ``output``."""

    def run(cand):
        clock.last = cand
        output.add_(results[cand])

    return autotune.CheckedRunner(run, output)


def test_checked_tuning_never_chooses_a_wrong_candidate(tmp_path, caplog):
    """The fastest candidate computes the wrong thing (or NaN): it is rejected, logged and
    listed in the entry; candidates off by rounding only are timed as usual."""
    ref = randn(50)
    results = {Cfg(16): ref, Cfg(32): ref + 1.0, Cfg(64): ref * (1 + 2**-11)}
    clock = FakeClock({Cfg(16): 3.0, Cfg(32): 1.0, Cfg(64): 2.0})
    path = tmp_path / "autotune.json"
    tuner = autotune.Tuner(path, enabled=True, timer=clock)
    out = torch.full((50,), float("nan"))  # poisoned: every checked run starts from zero
    with caplog.at_level("WARNING", logger="tritoncnn.autotune"):
        choice = tuner.choose(
            "op", PROBLEM, CANDS, Cfg(16), lambda: _checked_runner(clock, results, out)
        )
    assert choice == Cfg(64)
    assert "Cfg(block=32) computes a different result" in caplog.text
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert entry["rejected"] == [{"block": 32}] and entry["config"] == {"block": 64}
    # NaN where the reference is finite is wrong too, even with a huge scale elsewhere
    nan = ref.clone()
    nan[7] = float("nan")
    results = {Cfg(16): ref, Cfg(32): ref, Cfg(64): nan}
    clock = FakeClock({Cfg(16): 3.0, Cfg(32): 2.0, Cfg(64): 1.0})
    tuner = autotune.Tuner(None, enabled=True, timer=clock)
    out = torch.zeros(50)
    assert tuner.choose(
        "op", PROBLEM, CANDS, Cfg(16), lambda: _checked_runner(clock, results, out)
    ) == Cfg(32)


def test_checked_tuning_of_an_accumulating_runner(tmp_path):
    """A runner that adds into its output (an accumulated gradient) is checked from zero each
    time, so repeated runs (the timing's) don't make correct candidates disagree."""
    ref = randn(50)
    results = dict.fromkeys(CANDS, ref)
    clock = FakeClock({Cfg(16): 3.0, Cfg(32): 1.0, Cfg(64): 2.0})
    path = tmp_path / "autotune.json"
    tuner = autotune.Tuner(path, enabled=True, timer=clock)
    out = torch.zeros(50)
    assert tuner.choose(
        "op", PROBLEM, CANDS, Cfg(16), lambda: _checked_runner(clock, results, out)
    ) == Cfg(32)
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert entry["rejected"] == []


def test_agrees_is_rounding_not_values():
    ref = randn(1000)
    half = ref.half()
    assert autotune.agrees(half, ref)  # fp16 rounding of every element
    assert autotune.agrees(torch.zeros(4), torch.zeros(4))
    assert not autotune.agrees(torch.tensor([0.0, 1e-3]), torch.zeros(2))
    off = ref.clone()
    off[-1] += 0.05 * ref.abs().max()  # one element off by 5% of the scale
    assert not autotune.agrees(off, ref)
    inf = ref.clone()
    inf[3] = float("inf")
    assert not autotune.agrees(inf, ref)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_max_abs_kernel_against_torch(dtype):
    """agreement.max_abs: (max |a - b|, max |b|) as torch computes them in float64, on an odd
    channels_last shape; a NaN anywhere in a - b (or in b) counts as inf; empty is (0, 0)."""
    from tritoncnn.kernels import agreement

    b = randn(3, 5, 7, 9, dtype=dtype, channels_last=True)
    a = (
        (b.double() + 1e-2 * randn(3, 5, 7, 9).double())
        .to(dtype)
        .contiguous(memory_format=torch.channels_last)
    )
    err, scale = agreement.max_abs(a, b)
    assert err == pytest.approx(float((a.double() - b.double()).abs().max()), rel=1e-6)
    assert scale == pytest.approx(float(b.double().abs().max()), rel=1e-6)
    a[1, 2, 3, 4] = float("nan")
    assert agreement.max_abs(a, b)[0] == float("inf")
    b[0, 0, 0, 0] = float("-inf")
    assert agreement.max_abs(b, b)[1] == float("inf")
    assert agreement.max_abs(b[:0], b[:0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="share a layout"):
        agreement.max_abs(a, b.contiguous())


def test_key_contents(monkeypatch):
    monkeypatch.setattr(autotune, "device_name", lambda: "NVIDIA H100 80GB HBM3")
    key = autotune.make_key("conv2d_fwd", {"n": 8, "groups": 2, "x": "float16/nhwc"})
    gpu = "gpu=NVIDIA H100 80GB HBM3"
    assert key == f"conv2d_fwd|groups=2,n=8,x=float16/nhwc|{gpu}|triton={triton.__version__}"
    nhwc = randn(2, 3, 4, 5, dtype=torch.float16, channels_last=True)
    assert autotune.tensor_flag(nhwc) == "float16/nhwc"
    assert autotune.tensor_flag(randn(2, 3, 4, 5)) == "float32/nchw"
    assert autotune.tensor_flag(randn(2, 3, 4, 6)[..., ::2]).startswith("float32/strided")


class RecordingTuner(autotune.Tuner):
    """Records what the launch helpers ask, and answers with the heuristic's default."""

    def __init__(self):
        super().__init__(None, enabled=True, timer=_never_timed)
        self.asked = []

    def choose(self, op, problem, candidates, default, make_runner, reference=None):
        self.asked.append((op, dict(problem), list(candidates())))
        return default


@pytest.fixture
def gpu_like(monkeypatch):
    """The launch helpers' GPU path, still running through the interpreter on tiny shapes."""
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(runtime, "sm_count", lambda: 132)
    monkeypatch.setattr(conv_configs, "operand_smem_limit", lambda: 180 * 1024)


def test_conv_keys_name_the_whole_problem(gpu_like):
    rec = RecordingTuner()
    previous = autotune.set_default_tuner(rec)
    try:
        x = randn(2, 6, 7, 5, channels_last=True)
        wt = randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last)
        y = K.conv2d_forward(x, wt, None, (2, 2), (1, 1), (1, 1), 2)
        go = randn(*y.shape, channels_last=True)
        K.conv2d_dgrad(go, wt, x.shape, (2, 2), (1, 1), (1, 1), 2)
        conv_wgrad.conv2d_wgrad(x, go, wt.shape, (2, 2), (1, 1), (1, 1), 2)
        conv_wgrad.conv2d_bias_grad(go)
    finally:
        autotune.set_default_tuner(previous)
    ops = [op for op, _, _ in rec.asked]
    assert ops == [
        "conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad", "conv2d_wgrad_split", "conv2d_bias_grad"
    ]  # fmt: skip
    fwd = rec.asked[0][1]
    assert fwd["stride"] == (2, 2) and fwd["groups"] == 2 and fwd["pad"] == (1, 1, 1, 1)
    assert fwd["x"] == "float32/nhwc" and fwd["weight"] == "float32/nhwc"
    assert rec.asked[2][1]["accumulate"] is False
    for op, _, cands in rec.asked:
        assert cands, op
    assert all(c.split >= 1 for c in rec.asked[3][2])


def test_tuned_conv_uses_scratch_outputs(gpu_like, tmp_path):
    """The tuner runs every candidate (fake clock) through the real kernels; the real outputs,
    one of them accumulated into, still get exactly one launch's worth."""
    seen = []

    def timer(fn):
        fn()
        seen.append(1)
        return float(len(seen) % 3)  # some arbitrary fastest

    tuner = autotune.Tuner(tmp_path / "autotune.json", enabled=True, timer=timer)
    previous = autotune.set_default_tuner(tuner)
    try:
        x = randn(2, 5, 6, 5, channels_last=True)
        wt = (randn(4, 5, 3, 3) / 6).contiguous(memory_format=torch.channels_last)
        b = randn(4)
        args = ((1, 1), (1, 1), (1, 1), 1)
        y = K.conv2d_forward(x, wt, b, *args)
        go = randn(*y.shape, channels_last=True)
        dx = runtime.empty_nhwc(*x.shape)
        K.conv2d_dgrad(go, wt, x.shape, *args, out=dx)
        dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args)
        conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, grad_weight=dw)  # accumulate: a new key
        db = conv_wgrad.conv2d_bias_grad(go)
        conv_wgrad.conv2d_bias_grad(go, grad_bias=db)
    finally:
        autotune.set_default_tuner(previous)
    xr, wr, br = (f64(t).requires_grad_() for t in (x, wt, b))
    yr = torch.nn.functional.conv2d(xr, wr, br, 1, 1)
    yr.backward(f64(go))
    assert_close(y, yr, what="tuned forward")
    assert_close(dx, xr.grad, what="tuned dgrad")
    assert_close(dw, 2 * wr.grad, what="tuned wgrad, accumulated once")
    assert_close(db, 2 * br.grad, what="tuned bias grad, accumulated once")
    assert tuner.tunings >= 6 and len(seen) > tuner.tunings
    entries = json.loads((tmp_path / "autotune.json").read_text())["entries"]
    assert len(entries) == tuner.tunings
    assert all(e["rejected"] == [] for e in entries.values())  # every candidate was checked


@pytest.mark.parametrize("tma_heuristic", [False, True])
def test_tuned_conv_rejects_a_wrong_kernel(gpu_like, tmp_path, monkeypatch, tma_heuristic):
    """A TMA forward tile that writes garbage (as a miscompiled kernel would) and times
    fastest is rejected by the tuner's check: the conv's result is still right. Without the
    sabotage the same clock chooses it (the check, not the clock, keeps it out). With the TMA
    tile as the heuristic (conv.TMA_CONVS), the reference is still the pointer kernel's
    heuristic tile, so a broken TMA heuristic is rejected too."""
    from tritoncnn.kernels import conv_tma as T

    monkeypatch.setattr(T, "ENABLED", True)
    monkeypatch.setattr(K, "TMA_CONVS", frozenset({"fwd"} if tma_heuristic else ()))
    picked = []  # "tma" / "pointer" per launch
    monkeypatch.setattr(K, "conv2d_fwd_kernel", _CountedKernel(K.conv2d_fwd_kernel, picked))
    real = T.conv2d_forward_tma

    def timer(fn):
        fn()
        return 0.5 if picked[-1] == "tma" else 1.0

    x = randn(2, 16, 4, 4, dtype=torch.float16, channels_last=True)
    wt = (randn(16, 16, 3, 3) / 12).to(torch.float16).contiguous(memory_format=torch.channels_last)
    yr = torch.nn.functional.conv2d(f64(x), f64(wt), None, 1, 1)
    for broken in (False, True):

        def fwd_tma(x, weight, bias, y, *args, _broken=broken, **kwargs):
            picked.append("tma")
            tiles = real(x, weight, bias, y, *args, **kwargs)
            if _broken:
                y[:, :, 0, 0] = 7.0  # one wrong pixel per image
            return tiles

        monkeypatch.setattr(T, "conv2d_forward_tma", fwd_tma)
        path = tmp_path / f"{broken}.json"
        previous = autotune.set_default_tuner(autotune.Tuner(path, enabled=True, timer=timer))
        try:
            y = K.conv2d_forward(x, wt, None, 1, 1, 1, 1)
        finally:
            autotune.set_default_tuner(previous)
        (entry,) = json.loads(path.read_text())["entries"].values()
        assert entry["config"].get("tma", False) is not broken
        assert bool(entry["rejected"]) is broken
        assert entry["heuristic"].get("tma", False) is tma_heuristic
        assert picked[-1] == ("pointer" if broken else "tma")  # the real launch
        assert_close(y, yr, torch.float16, what=f"tuned forward, broken TMA tile {broken}")


class _CountedKernel:
    """A @triton.jit kernel whose launches are recorded as "pointer" in ``picked``."""

    def __init__(self, kernel, picked):
        self.kernel, self.picked = kernel, picked

    def __getitem__(self, grid):
        self.picked.append("pointer")
        return self.kernel[grid]


def test_autotune_off_switch(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setenv("TRITONCNN_AUTOTUNE", "0")
    assert not autotune.tuning_allowed()
    tuner = autotune.Tuner(tmp_path / "autotune.json", timer=_never_timed)
    assert not tuner.enabled
    assert tuner.choose("op", PROBLEM, CANDS, Cfg(64), None) == Cfg(64)
    assert not (tmp_path / "autotune.json").exists()
    monkeypatch.setenv("TRITONCNN_AUTOTUNE", "1")
    assert autotune.tuning_allowed()


@pytest.mark.skipif(not runtime.INTERPRETED, reason="checks the interpreter's behaviour")
def test_interpreter_never_tunes(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONCNN_AUTOTUNE", "1")
    assert runtime.INTERPRETED  # the CPU tier
    assert not autotune.tuning_allowed() and not autotune.Tuner(tmp_path / "a.json").enabled

    class Refuses(autotune.Tuner):
        def choose(self, *a, **k):
            raise AssertionError("a launch helper consulted the tuner in the interpreter")

    previous = autotune.set_default_tuner(Refuses(None, enabled=True, timer=_never_timed))
    try:
        x = randn(1, 3, 5, 4, channels_last=True)
        wt = randn(2, 3, 3, 3).contiguous(memory_format=torch.channels_last)
        y = K.conv2d_forward(x, wt, None, (1, 1), (1, 1), (1, 1), 1)
        K.conv2d_dgrad(y, wt, x.shape, (1, 1), (1, 1), (1, 1), 1)
        conv_wgrad.conv2d_wgrad(x, y, wt.shape, (1, 1), (1, 1), (1, 1), 1)
        conv_wgrad.conv2d_bias_grad(y)
    finally:
        autotune.set_default_tuner(previous)


def test_no_timing_during_graph_capture(monkeypatch, tmp_path):
    monkeypatch.setattr(autotune, "_capturing", lambda: True)
    tuner = autotune.Tuner(tmp_path / "autotune.json", enabled=True, timer=_never_timed)
    assert tuner.choose("op", PROBLEM, CANDS, Cfg(32), None) == Cfg(32)
    assert not tuner.memory  # not remembered: tuned on the next eager call
    # A cached choice is still used while capturing.
    clock = FakeClock({Cfg(16): 1.0, Cfg(32): 2.0, Cfg(64): 3.0})
    monkeypatch.setattr(autotune, "_capturing", lambda: False)
    autotune.Tuner(tmp_path / "autotune.json", enabled=True, timer=clock).choose(
        "op", PROBLEM, CANDS, Cfg(32), clock.runner
    )
    monkeypatch.setattr(autotune, "_capturing", lambda: True)
    fresh = autotune.Tuner(tmp_path / "autotune.json", enabled=True, timer=_never_timed)
    assert fresh.choose("op", PROBLEM, CANDS, Cfg(32), None) == Cfg(16)


def test_cache_path_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONCNN_CACHE_DIR", str(tmp_path))
    assert autotune.cache_path() == tmp_path / "autotune.json"
    monkeypatch.delenv("TRITONCNN_CACHE_DIR")
    assert autotune.cache_path().parts[-3:] == (".cache", "tritoncnn", "autotune.json")


# --- GPU tier -------------------------------------------------------------------------------

# (n, c_in, c_out, size, kernel, stride, pad): a 3x3 stage conv, a strided one, a late-stage
# 4x4 one (wgrad's long reduction), a 1x1 GEMM (8-warp candidates) and the stem.
GPU_SHAPES = [
    (128, 64, 64, 32, 3, 1, 1),
    (128, 128, 256, 16, 3, 2, 1),
    (128, 512, 512, 4, 3, 1, 1),
    (128, 160, 960, 4, 1, 1, 0),
    (128, 3, 64, 32, 3, 1, 1),
]


def _run_and_check(shape, dtype):
    """fwd, dgrad (into a given output), wgrad and bias grad written then accumulated, against
    float64."""
    n, c_in, c_out, size, k, s, p = shape
    x = randn(n, c_in, size, size, dtype=dtype, channels_last=True)
    wt = (randn(c_out, c_in, k, k) / (c_in * k * k) ** 0.5).contiguous(
        memory_format=torch.channels_last
    )
    b = randn(c_out)
    args = ((s, s), (p, p), (1, 1), 1)
    y = K.conv2d_forward(x, wt, b, *args)
    go = randn(*y.shape, dtype=dtype, channels_last=True)
    dx = runtime.empty_nhwc(*x.shape, dtype=dtype)
    K.conv2d_dgrad(go, wt, x.shape, *args, out=dx)
    dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args)
    conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, grad_weight=dw)
    db = conv_wgrad.conv2d_bias_grad(go)
    conv_wgrad.conv2d_bias_grad(go, grad_bias=db)
    dev = runtime.DEVICE
    xr, wr, br = (t.detach().to(dev, torch.float64).requires_grad_() for t in (x, wt, b))
    yr = torch.nn.functional.conv2d(xr, wr, br, s, p)
    yr.backward(go.to(torch.float64))
    tag = f"{shape} {dtype}"
    assert_close(y, yr, dtype, what=f"tuned forward {tag}")
    assert_close(dx, xr.grad, dtype, what=f"tuned dgrad {tag}")
    wtol = 2e-5 if dtype == torch.float32 else 1e-4
    assert_close(dw, 2 * wr.grad, tol=wtol, what=f"tuned wgrad x2 {tag}")
    assert_close(db, 2 * br.grad, torch.float32, what=f"tuned bias grad x2 {tag}")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype, tma", [(torch.float16, False), (torch.float32, False), (torch.float16, True)]
)
def test_gpu_tuned_results_and_cache_reuse(tmp_path, dtype, tma, monkeypatch):
    """The first tuner times candidates and gets correct results, rejecting none (every tile
    agrees with the heuristic's; with ``tma`` the TMA tiles are among them); a second tuner
    (as a new process would) reads the file, times nothing, and chooses the same configs."""
    from tritoncnn.kernels import conv_tma

    monkeypatch.setattr(conv_tma, "ENABLED", tma)
    path = tmp_path / "autotune.json"
    first = autotune.Tuner(path, enabled=True)
    previous = autotune.set_default_tuner(first)
    try:
        for shape in GPU_SHAPES:
            _run_and_check(shape, dtype)
        assert first.tunings >= 4 * len(GPU_SHAPES), first.tunings
        entries = json.loads(path.read_text())["entries"]
        assert len(entries) == first.tunings
        print(f"\n{dtype}: tuned {first.tunings} keys; choices:")
        for key, entry in entries.items():
            print(f"  {key.split('|gpu=')[0]} -> {entry['config']} {entry['ms']:.4f} ms")
        rejected = {k: e["rejected"] for k, e in entries.items() if e["rejected"]}
        assert not rejected, f"tiles whose results differ from the heuristic's: {rejected}"
        second = autotune.Tuner(path, enabled=True, timer=_never_timed)
        autotune.set_default_tuner(second)
        for shape in GPU_SHAPES:
            _run_and_check(shape, dtype)
        assert second.tunings == 0
        assert second.memory == first.memory
    finally:
        autotune.set_default_tuner(previous)


@pytest.mark.gpu
def test_gpu_capture_never_tunes(tmp_path):
    """Inside CUDA-graph capture an unseen problem gets the heuristic tile, untimed, and the
    replayed graph computes the right thing."""
    x = randn(64, 96, 16, 16, dtype=torch.float16, channels_last=True)
    wt = (randn(80, 96, 3, 3) / 30).contiguous(memory_format=torch.channels_last)
    args = ((1, 1), (1, 1), (1, 1), 1)
    previous = autotune.set_default_tuner(autotune.Tuner(None, enabled=False))
    try:
        K.conv2d_forward(x, wt, None, *args)  # compile the heuristic tile outside the capture
        torch.cuda.synchronize()
        tuner = autotune.Tuner(tmp_path / "autotune.json", enabled=True, timer=_never_timed)
        autotune.set_default_tuner(tuner)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = K.conv2d_forward(x, wt, None, *args)
        graph.replay()
        torch.cuda.synchronize()
        assert tuner.tunings == 0 and not (tmp_path / "autotune.json").exists()
    finally:
        autotune.set_default_tuner(previous)
    yr = torch.nn.functional.conv2d(x.double(), wt.double(), None, 1, 1)
    assert_close(y, yr, torch.float16, what="forward captured in a CUDA graph")

"""Trace a model's forward outputs and backward gradients layer by layer against float64 (GPU).

    python benchmarks/debug_layer_trace.py resnet18 [--train]

For every Conv2d / BatchNorm / Linear, prints the relative error of its output, of the gradient
reaching it (gout) and of its input gradient (dx): ours (fp32) and torch's fp32 (TF32 off), both
against the float64 twin. A jump between one layer's dx and the next layer's gout points at the
op in between; that is how a single element flipped across a ReLU kink was found (see
tests/kinks.py). On a CPU it runs a narrow copy on tiny inputs through the interpreter.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import rel_err  # noqa: E402
from test_models import randn_input, randomize_  # noqa: E402

from tritoncnn import models  # noqa: E402
from tritoncnn.export import to_torch  # noqa: E402

TRACED = ("Conv2d", "BatchNorm2d", "BatchNorm1d", "Linear")


def trace_ours(model) -> tuple[dict, dict]:
    """Wrap the traced layers' forward/backward to keep copies of what they see."""
    fwd, bwd = {}, {}
    for name, m in model.named_modules():
        if type(m).__name__ not in TRACED:
            continue
        forward, backward = m.forward, m.backward

        def f(x, _call=forward, _name=name):
            y = _call(x)
            fwd[_name] = y.clone()
            return y

        def b(g, _call=backward, _name=name):
            bwd[_name + ".gout"] = g.clone()
            dx = _call(g)
            bwd[_name] = dx.clone()
            return dx

        m.forward, m.backward = f, b
    return fwd, bwd


def trace_twin(twin) -> tuple[dict, dict]:
    """The same through torch hooks (in-place activations off, so full backward hooks work)."""
    fwd, bwd = {}, {}
    for name, m in twin.named_modules():
        if hasattr(m, "inplace"):
            m.inplace = False
        if type(m).__name__ not in TRACED:
            continue

        def f(mod, inputs, out, _name=name):
            fwd.setdefault(_name, out.detach().clone())

        def b(mod, grad_in, grad_out, _name=name):
            if grad_in[0] is not None:
                bwd.setdefault(_name, grad_in[0].detach().clone())
            bwd.setdefault(_name + ".gout", grad_out[0].detach().clone())

        m.register_forward_hook(f)
        m.register_full_backward_hook(b)
    return fwd, bwd


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet18"
    train = "--train" in sys.argv
    gpu = torch.cuda.is_available()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    narrow = {} if gpu else {"widths": (4, 4, 8, 8)} if name.startswith("resnet") else {}
    model = models.build(name, num_classes=10, fuse=False, **narrow)  # layer by layer
    randomize_(model)
    ours_f, ours_b = trace_ours(model)
    batch, size = (128, 32) if gpu else (3, 8)
    x = randn_input(batch, 3, size, torch.float32)
    g = torch.randn(batch, 10, dtype=torch.float64, device=x.device)
    model.train(train)
    model(x)
    model.backward(g.float())
    refs = {}
    for dtype in (torch.float64, torch.float32):
        twin = to_torch(model).to(x.device, dtype).train(train)
        refs[dtype] = trace_twin(twin)
        xr = x.to(dtype).detach().requires_grad_()
        twin(xr).backward(g.to(dtype))
    (f64f, f64b), (f32f, f32b) = refs[torch.float64], refs[torch.float32]
    print(f"{'layer':<28}" + "".join(f"{h:>11}" for h in
          ("fwd ours", "fwd t32", "gout ours", "gout t32", "dx ours", "dx t32")))  # fmt: skip
    for n, ref in f64f.items():
        row = [rel_err(ours_f[n], ref), rel_err(f32f[n], ref)]
        for key in (n + ".gout", n):
            have = key in ours_b and f64b.get(key) is not None
            row += (
                [rel_err(ours_b[key], f64b[key]), rel_err(f32b[key], f64b[key])]
                if have
                else [float("nan")] * 2
            )
        print(f"{n:<28}" + "".join(f"{v:11.1e}" for v in row), flush=True)


if __name__ == "__main__":
    main()

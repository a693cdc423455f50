"""Diagnose a model's gradient error against its float64 twin, layer by layer (GPU).

    python benchmarks/debug_model_grads.py resnet18 [--train]

Prints, per parameter, our relative error, torch fp32's (TF32 off), and whether two runs of
ours agree bit for bit (a race shows up as run-to-run differences).
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


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet18"
    train = "--train" in sys.argv
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model = models.build(name, num_classes=10)
    randomize_(model)
    x = randn_input(128, 3, 32, torch.float32)
    g = torch.randn(128, 10, dtype=torch.float64, device="cuda")
    runs = []
    for _ in range(2):
        model.train(train)
        model.zero_grad()
        model(x)
        dx = model.backward(g.float())
        runs.append(
            {"input": dx.clone(), **{n: p.grad.clone() for n, p in model.named_parameters()}}
        )
    refs = {}
    for dtype in (torch.float64, torch.float32):
        twin = to_torch(model).to("cuda", dtype).train(train)
        xr = x.to(dtype).detach().requires_grad_()
        twin(xr).backward(g.to(dtype))
        refs[dtype] = {"input": xr.grad, **{n: p.grad for n, p in twin.named_parameters()}}
    print(f"{'tensor':<36}{'ours':>12}{'torch32':>12}  same-twice")
    for k, r in refs[torch.float64].items():
        if r.norm() == 0:
            continue
        same = torch.equal(runs[0][k], runs[1][k])
        print(
            f"{k:<36}{rel_err(runs[0][k], r):12.2e}{rel_err(refs[torch.float32][k], r):12.2e}"
            f"  {same}"
        )


if __name__ == "__main__":
    main()

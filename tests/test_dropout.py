"""Dropout: mask statistics, exact inverted scaling, mask replay in the backward, seeding.

torch's masks come from another RNG, so the checks are structural: the dropped fraction is
near p (a binomial bound: a biased RNG fails it), kept values equal x * fp32(1/(1-p)) exactly,
and the backward zeroes exactly the positions the forward dropped (recovered as y == 0 with
x != 0) and scales the rest by the same factor.
"""

import math

import pytest
import torch
from helpers import DEVICE, randn

from tritoncnn import nn, runtime
from tritoncnn.kernels import dropout as kd
from tritoncnn.nn import dropout as nd


def _nonzero(*shape, dtype=torch.float32, channels_last=False, seed=0):
    """Random tensor with |x| >= 0.1, so y == 0 means "dropped" and nothing else."""
    x = randn(*shape, dtype=torch.float32, channels_last=channels_last, seed=seed)
    x = torch.where(x.abs() < 0.1, torch.full_like(x, 0.5), x)
    return x.to(dtype)


def _scaled(t, p):
    """t * 1/(1-p) as the kernel computes it: fp32 product, rounded once to t's dtype."""
    return (t.float() * torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)).to(t.dtype)


def _check_exact(m, x, p, g=None):
    """Forward keeps/zeroes with exact scaling; backward replays the same mask exactly."""
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == x.stride()
    keep = y != 0
    assert torch.equal(y, torch.where(keep, _scaled(x, p), torch.zeros_like(x)))
    if g is None:
        nhwc = x.dim() == 4 and not x.is_contiguous()
        g = _nonzero(*x.shape, dtype=x.dtype, channels_last=nhwc, seed=7)
    dx = m.backward(g)
    assert dx.stride() == x.stride()
    assert torch.equal(dx, torch.where(keep, _scaled(g, p), torch.zeros_like(g)))
    return keep


def _assert_fraction(dropped: torch.Tensor, p: float, what=""):
    """|fraction - p| within 6 binomial standard deviations (false alarm ~1e-9)."""
    n = dropped.numel()
    frac = dropped.float().mean().item()
    bound = 6 * math.sqrt(p * (1 - p) / n)
    assert abs(frac - p) < bound, f"{what}: dropped {frac:.4f}, expected {p} +- {bound:.4f}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dropout_mask_fraction_and_exact_scaling(dtype):
    p = 0.3
    x = _nonzero(16, 1024, dtype=dtype)
    keep = _check_exact(nn.Dropout(p), x, p)
    _assert_fraction(~keep, p, "whole tensor")
    # each of the four Philox words feeds one quarter of a block: each must be unbiased too
    q = kd.BLOCK // 4
    words = (~keep).reshape(-1, 4, q)  # (blocks, word, counter)
    for word in range(4):
        _assert_fraction(words[:, word], p, f"Philox word {word}")
    # and independent: of each other, and from one block (program) to the next
    _assert_fraction(words[:, 0] & words[:, 1], p * p, "words 0 and 1 both dropped")
    _assert_fraction(words[:, 2] & words[:, 3], p * p, "words 2 and 3 both dropped")
    _assert_fraction(words[:-1] & words[1:], p * p, "neighbouring blocks both dropped")


def test_dropout_nhwc_odd_shape():
    """A channels_last input with a tail block: layout kept, every element written."""
    p = 0.5
    x = _nonzero(3, 5, 7, 9, channels_last=True)
    _check_exact(nn.Dropout(p), x, p)


def test_dropout_fresh_mask_each_step_same_mask_for_same_seed():
    p = 0.5
    x = _nonzero(4096 + 123)
    a, b = nn.Dropout(p), nn.Dropout(p)
    a.manual_seed(1234)
    b.manual_seed(1234)
    ya1, yb1 = a(x), b(x)
    assert torch.equal(ya1, yb1)  # same seed, same step -> same mask
    ya2 = a(x)
    assert int(a._rng_state[1]) == 2  # advanced on the device by each training forward
    agree = ((ya1 != 0) == (ya2 != 0)).float().mean().item()
    # independent masks agree on p^2 + (1-p)^2 = 1/2 of the elements
    assert abs(agree - 0.5) < 6 * math.sqrt(0.25 / x.numel())
    assert torch.equal(b(x), ya2)  # b follows the same sequence
    a.manual_seed(1234)
    assert torch.equal(a(x), ya1)  # reseeding restarts the sequence


def _assert_tickets_rearmed():
    """The forward's folded seed advance left the shared tickets at zero."""
    assert not runtime.tickets(runtime.TICKET_SLOTS).any()


def _check_folded_advance(x, p, seed, steps):
    """``steps`` training forwards (the advance folded into the dropout launch) draw the masks
    of the public two-launch sequence "advance_seed_, then dropout_forward", step by step,
    the backward replays each, and the final states agree."""
    m = nn.Dropout(p)
    m.manual_seed(seed)
    ref = kd.new_seed_state(seed)
    g = _nonzero(*x.shape, dtype=x.dtype, seed=3)
    ys = []
    for _ in range(steps):
        y = m(x)
        kd.advance_seed_(ref)
        assert torch.equal(y, kd.dropout_forward(x, p, ref))
        assert torch.equal(m._rng_state, ref)  # advanced once, by the last program
        assert torch.equal(m.backward(g), kd.dropout_backward(g, p, ref))
        ys.append(y)
    _assert_tickets_rearmed()
    return ys


def test_dropout_folded_advance_matches_advance_then_draw():
    p = 0.5
    # several programs (BLOCK elements each, a tail): all must draw with the same, old step
    x = _nonzero(3 * kd.BLOCK + 5)
    y1, y2 = _check_folded_advance(x, p, seed=99, steps=2)
    assert not torch.equal(y1 != 0, y2 != 0)  # two consecutive forwards: fresh masks
    # the functional form: advance_seed=k equals advance_seed_(state, k) then a forward
    a, b = kd.new_seed_state(5), kd.new_seed_state(5)
    ya = kd.dropout_forward(x, p, a, advance_seed=3)
    kd.advance_seed_(b, 3)
    assert torch.equal(ya, kd.dropout_forward(x, p, b)) and torch.equal(a, b)
    # p == 0 draws nothing but still advances when asked to
    assert kd.dropout_forward(x, 0.0, a, advance_seed=2) is x and int(a[1]) == 5
    _assert_tickets_rearmed()


def test_dropout_empty_input_still_advances():
    m = nn.Dropout(0.5)
    y = m(_nonzero(0))
    assert y.numel() == 0 and int(m._rng_state[1]) == 1
    _assert_tickets_rearmed()


def test_dropout_backward_matches_latest_forward():
    p = 0.4
    m = nn.Dropout(p)
    x = _nonzero(5, 333)
    m(x)
    _check_exact(m, x, p)  # second forward: backward uses this step's mask, not the first


def test_module_manual_seed_reproducible_and_modules_differ():
    x = _nonzero(2000)
    nd.manual_seed(7)
    a1, a2 = nn.Dropout(), nn.Dropout()
    nd.manual_seed(7)
    b1 = nn.Dropout()
    assert torch.equal(a1(x), b1(x))
    assert not torch.equal(a1(x), a2(x))  # two layers of one model draw different masks


def test_dropout_identities():
    x = _nonzero(3, 7)
    g = _nonzero(3, 7, seed=1)
    m = nn.Dropout(0.5).eval()
    assert m(x) is x and m.backward(g) is g
    m = nn.Dropout(0.0)
    assert m(x) is x and m.backward(g) is g
    m = nn.Dropout(1.0)
    y = m(x)
    assert torch.count_nonzero(y) == 0 and not torch.isnan(y).any()
    assert torch.count_nonzero(m.backward(g)) == 0


def test_dropout_inplace():
    p = 0.25
    x = _nonzero(7, 130)
    x0 = x.clone()
    m = nn.Dropout(p, inplace=True)
    y = m(x)
    assert y.data_ptr() == x.data_ptr()
    keep = y != 0
    assert torch.equal(y, torch.where(keep, _scaled(x0, p), torch.zeros_like(x0)))


def test_dropout_arguments():
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError):
            nn.Dropout(p)
    m = nn.Dropout(0.5)
    assert m.state_dict() == {} and m.p == 0.5 and m.inplace is False
    with pytest.raises(RuntimeError):
        m.backward(randn(3))
    m(_nonzero(2, 3, 4, 5))
    with pytest.raises(ValueError):  # grad in another layout would replay the wrong mask
        m.backward(randn(2, 3, 4, 5, channels_last=True))


# --- GPU tier ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,channels_last", [((512, 512), False), ((128, 64, 32, 32), True)], ids=["2d", "nhwc"]
)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_gpu(dtype, shape, channels_last, p):
    x = _nonzero(*shape, dtype=dtype, channels_last=channels_last)
    m = nn.Dropout(p)
    keep = _check_exact(m, x, p)
    _assert_fraction(~keep, p)
    keep2 = m(x) != 0
    agree = (keep == keep2).float().mean().item()
    assert abs(agree - (p * p + (1 - p) ** 2)) < 0.01
    if channels_last:  # per channel too (the mask follows memory order, NHWC)
        per_c = (~keep).float().mean(dim=(0, 2, 3))
        per_c_n = x.numel() // x.shape[1]
        assert (per_c - p).abs().max().item() < 6 * math.sqrt(p * (1 - p) / per_c_n)


@pytest.mark.gpu
def test_dropout_seed_advances_on_device_in_graph():
    """The seed lives on the device: a CUDA graph replay draws a fresh mask each time."""
    x = _nonzero(512, 512, dtype=torch.float16)
    m = nn.Dropout(0.5)
    m(x)  # warm up (compile) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = m(x)
    masks = []
    for _ in range(3):
        graph.replay()
        masks.append((y != 0).clone())
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    for mk in masks:
        _assert_fraction(~mk, 0.5)
    assert DEVICE.type == "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(128, 512), (512, 4096)])  # 16 and 512 programs
def test_dropout_folded_advance_repeatable_gpu(shape):
    """On the GPU the last ticket goes to a different program each time: 50 consecutive
    forwards must each equal the two-launch sequence bit for bit (a program that read the
    already advanced step would draw another mask for its block), and reseeding replays them."""
    x = _nonzero(*shape, dtype=torch.float16)
    first = _check_folded_advance(x, 0.5, seed=11, steps=50)
    again = _check_folded_advance(x, 0.5, seed=11, steps=50)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert DEVICE.type == "cuda"

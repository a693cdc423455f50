"""The GPU-resident loader: epoch permutations, the gather, and augmentation against a numpy
reference that replays the kernel's own random draws (read back from its parameter table)."""

import math

import numpy as np
import pytest
import torch

from tritoncnn import data
from tritoncnn.data.loader import Augmentation, GPULoader
from tritoncnn.kernels import augment as K


def images(n=37, h=9, w=7, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), rng.integers(0, 5, n)


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def batches(loader):
    return [
        (x.permute(0, 2, 3, 1).double().cpu().numpy(), y.cpu().numpy().copy()) for x, y in loader
    ]


@pytest.mark.parametrize("n", [1, 2, 5, 37, 1000, 4097])
def test_permutation_is_a_bijection(n):
    perm = torch.empty(n, dtype=torch.int32)
    K.epoch_permutation_kernel[K.launch_grid(n, 1024)](
        perm, n, 12345, HALF_BITS=K.permutation_bits(n), BLOCK=1024
    )
    assert sorted(perm.tolist()) == list(range(n))


def test_epoch_covers_every_index_once_and_epochs_differ():
    x, y = images()
    loader = GPULoader(x, np.arange(len(x)), 8, MEAN, STD, shuffle=True, seed=3)
    e0 = np.concatenate([b[1] for b in batches(loader)])
    e1 = np.concatenate([b[1] for b in batches(loader)])
    assert sorted(e0) == list(range(37)) and sorted(e1) == list(range(37))
    assert not np.array_equal(e0, e1)
    again = GPULoader(x, np.arange(len(x)), 8, MEAN, STD, shuffle=True, seed=3)
    assert np.array_equal(np.concatenate([b[1] for b in batches(again)]), e0)


@pytest.mark.parametrize("drop_last", [False, True])
def test_no_augmentation_returns_normalised_rows(drop_last):
    x, y = images()
    loader = GPULoader(x, y, 8, MEAN, STD, shuffle=False, drop_last=drop_last, dtype=torch.float32)
    got = batches(loader)
    assert len(got) == (4 if drop_last else 5) == len(loader)
    xs = np.concatenate([b[0] for b in got])
    ys = np.concatenate([b[1] for b in got])
    n = len(xs)
    ref = (x[:n].astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
    assert n == (32 if drop_last else 37)
    np.testing.assert_allclose(xs, ref, rtol=0, atol=1e-6)
    assert np.array_equal(ys, y[:n])


def reference_augment(img, p, aug: Augmentation, mean, std):
    """numpy replay of the gather for one image with its drawn parameters ``p``."""
    H, W, C = img.shape
    dy, dx, flip, angle, br, co, sa, cut_y, cut_x = (np.float32(v) for v in p)
    out = np.zeros((H, W, C), np.float32)
    cos_a, sin_a = np.cos(angle, dtype=np.float32), np.sin(angle, dtype=np.float32)
    cy, cx = np.float32((H - 1) * 0.5), np.float32((W - 1) * 0.5)
    for h in range(H):
        for w in range(W):
            hf, wf = np.float32(h) - cy, np.float32(w) - cx
            ph = int(np.floor(cos_a * hf - sin_a * wf + cy + np.float32(0.5)))
            pw = int(np.floor(sin_a * hf + cos_a * wf + cx + np.float32(0.5)))
            if not (0 <= ph < H and 0 <= pw < W):
                continue
            if flip > 0.5:
                pw = W - 1 - pw
            sh, sw = ph + int(dy) - aug.crop_padding, pw + int(dx) - aug.crop_padding
            if aug.padding_mode == "reflect":
                sh = -sh if sh < 0 else (2 * (H - 1) - sh if sh >= H else sh)
                sw = -sw if sw < 0 else (2 * (W - 1) - sw if sw >= W else sw)
            elif not (0 <= sh < H and 0 <= sw < W):
                continue
            out[h, w] = img[sh, sw] / np.float32(255)
    gray_w = np.array([0.299, 0.587, 0.114], np.float32) if C == 3 else np.ones(1, np.float32)
    if aug.color:
        out = np.minimum(out * br, 1)
        m = (out @ gray_w).mean()
        out = np.clip((out - m) * co + m, 0, 1)
        g = (out @ gray_w)[..., None]
        out = np.clip((out - g) * sa + g, 0, 1)
    out = (out - np.float32(mean)) / np.float32(std)
    if aug.cutout:
        top, left = cut_y - aug.cutout // 2, cut_x - aug.cutout // 2
        hh, ww = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        out[(hh >= top) & (hh < top + aug.cutout) & (ww >= left) & (ww < left + aug.cutout)] = 0
    return out


AUGS = [
    Augmentation(crop_padding=2, hflip=0.5),
    Augmentation(crop_padding=3, padding_mode="reflect", hflip=0.5),
    Augmentation(rotation=15),
    Augmentation(brightness=0.4, contrast=0.4, saturation=0.4),
    Augmentation(cutout=4),
    Augmentation(
        crop_padding=2,
        hflip=0.5,
        rotation=10,
        brightness=0.2,
        contrast=0.3,
        saturation=0.2,
        cutout=3,
    ),
]


@pytest.mark.parametrize(
    "aug", AUGS, ids=lambda a: "-".join(k for k, v in vars(a).items() if v and v != "zeros")
)
def test_augmentation_matches_numpy_replay(aug):
    x, y = images(n=12)
    loader = GPULoader(x, y, 12, MEAN, STD, shuffle=False, augmentation=aug, seed=5)
    xb, _ = next(iter(loader))
    got = xb.permute(0, 2, 3, 1).cpu().numpy()
    params = loader.params.cpu().numpy()
    for i in range(12):
        ref = reference_augment(x[i], params[i], aug, MEAN, STD)
        np.testing.assert_allclose(got[i], ref, rtol=0, atol=2e-5, err_msg=f"sample {i}")


def test_draws_are_in_range_and_seeded():
    aug = Augmentation(crop_padding=4, hflip=0.5, rotation=10, brightness=0.2, cutout=5)
    x, y = images(n=200, h=16, w=16)
    a = GPULoader(x, y, 200, MEAN, STD, augmentation=aug, seed=1)
    next(iter(a))
    p = a.params.cpu().numpy()
    assert set(np.unique(p[:, K.P_DY])) <= set(range(9)) and p[:, K.P_DY].max() == 8
    assert 0.35 < p[:, K.P_FLIP].mean() < 0.65
    assert np.abs(p[:, K.P_ANGLE]).max() <= math.radians(10) + 1e-6
    assert ((p[:, K.P_BRIGHT] >= 0.8) & (p[:, K.P_BRIGHT] <= 1.2)).all()
    b = GPULoader(x, y, 200, MEAN, STD, augmentation=aug, seed=1)
    next(iter(b))
    assert np.array_equal(p, b.params.cpu().numpy())


def test_bad_arguments():
    x, y = images()
    with pytest.raises(ValueError, match="batch_size"):
        GPULoader(x, y, 0, MEAN, STD)
    with pytest.raises(ValueError, match="mean/std"):
        GPULoader(x, y, 4, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="padding_mode"):
        Augmentation(padding_mode="edge")


def test_digits_epoch_fp16():
    x, y = data.load("digits", split="train")
    loader = GPULoader(x, y, 256, (0.3,), (0.4,), dtype=torch.float16)
    seen = np.concatenate([b[1] for b in batches(loader)])
    assert np.array_equal(np.bincount(seen), np.bincount(y))


@pytest.mark.gpu
def test_gather_is_graph_capturable_and_covers_epoch():
    x, y = images(n=50000, h=32, w=32)
    aug = Augmentation(crop_padding=4, hflip=0.5)
    loader = GPULoader(
        x, np.arange(50000), 512, MEAN, STD, augmentation=aug, dtype=torch.float16, drop_last=True
    )
    loader.set_epoch(0)
    loader.next_batch()  # compile outside the capture
    loader.set_epoch(0)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        loader.next_batch()  # a host sync inside would make the capture fail
    loader.set_epoch(1)
    seen = []
    for _ in range(len(loader)):
        g.replay()
        seen.append(loader.targets.clone())
    seen = torch.cat(seen).cpu().numpy()
    assert len(np.unique(seen)) == len(seen) == 512 * (50000 // 512)

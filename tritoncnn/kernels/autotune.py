"""Kernel autotuning with the chosen configs remembered on disk.

A launch helper that has several valid tile configs for a problem asks the default ``Tuner``
to ``choose`` one. The first time a problem key is seen on a GPU, every candidate is timed
(``triton.testing.do_bench``) on *scratch* outputs, the fastest is kept in memory and in a JSON
file, and the helper then runs it for real. A later process reads the file and starts without
timing anything.

- Key: op name + problem fields (shape, strides/layout flags, groups, dtypes, ...) + GPU name +
  triton version, as one readable string, e.g.
  ``conv2d_fwd|c_in=64,...,x=float16/nhwc|gpu=NVIDIA H100 80GB HBM3|triton=3.6.0``.
- File: ``$TRITONCNN_CACHE_DIR/autotune.json``, else ``~/.cache/tritoncnn/autotune.json``;
  written atomically (temp file + ``os.replace``), merged with what other processes wrote. A
  corrupt file gives one warning and is treated as empty (those problems are retuned).
- ``TRITONCNN_AUTOTUNE=0``: no timing and no cache: always the helper's heuristic config.
- Never times in Triton's interpreter, nor while a CUDA graph is being captured (timing would
  launch kernels into the graph): then a cached choice or the heuristic is used. The CUDA-graph
  step runs its first step eagerly, so tuning happens there, before capture.

Candidates are frozen dataclasses (a config, or a config plus a split factor); the cache stores
their fields, so a choice is found again only if it is still among the candidates. Each entry
also keeps the heuristic's config and time (``heuristic_ms``): how far the heuristic is off.

Checked tuning: timing says nothing about results, and a tile can compile into a wrong kernel
on one GPU and triton version only (non-1x1 conv tiles with 8 warps were, pytorch #173068).
When the runner is a ``CheckedRunner`` (every candidate writes one output tensor, and only
it), the tuner first runs the reference config (the launcher's pick, e.g. conv's pointer-kernel
heuristic tile, which the gpu tests hold to torch; else the default) into the zeroed output,
then each candidate into the zeroed output before timing it; one whose result is off by more
than rounding (``agrees``) is never chosen, gets one log warning, and is listed under
``rejected`` in the cache entry.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import triton

from tritoncnn import runtime
from tritoncnn.kernels import agreement, elementwise

log = logging.getLogger("tritoncnn.autotune")

C = TypeVar("C")
# timer(fn) -> milliseconds for one call of fn (fn launches the kernel once).
Timer = Callable[[Callable[[], None]], float]
# runner(candidate): launch the kernel once with that candidate on scratch outputs.
Runner = Callable[[Any], None]

CACHE_VERSION = 1


def cache_path() -> Path:
    """Where the tuned choices live: $TRITONCNN_CACHE_DIR/autotune.json or ~/.cache/tritoncnn/."""
    root = os.environ.get("TRITONCNN_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "tritoncnn"
    return base / "autotune.json"


def tuning_allowed() -> bool:
    """Tuning is on unless TRITONCNN_AUTOTUNE=0, and never in the interpreter."""
    return os.environ.get("TRITONCNN_AUTOTUNE", "1") != "0" and not runtime.INTERPRETED


@functools.cache
def device_name() -> str:
    if runtime.INTERPRETED or not torch.cuda.is_available():
        return "interpreter"
    return torch.cuda.get_device_name(runtime.DEVICE)


def layout(t: torch.Tensor) -> str:
    """A tensor's memory-layout flag for a key: nhwc, nchw, or its strides."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    if t.is_contiguous():
        return "nchw" if t.dim() == 4 else "dense"
    return "strided" + "x".join(str(s) for s in t.stride())


def tensor_flag(t: torch.Tensor) -> str:
    """dtype/layout of a tensor, one key field (e.g. 'float16/nhwc')."""
    return f"{str(t.dtype).removeprefix('torch.')}/{layout(t)}"


def make_key(op: str, problem: Mapping[str, Any]) -> str:
    """The cache key: op, sorted problem fields, GPU name, triton version."""
    fields = ",".join(f"{k}={problem[k]}" for k in sorted(problem))
    return f"{op}|{fields}|gpu={device_name()}|triton={triton.__version__}"


def encode(candidate: Any) -> dict:
    """JSON form of a candidate (a dataclass; nested dataclasses become nested dicts)."""
    return dataclasses.asdict(candidate)


def do_bench_timer(fn: Callable[[], None]) -> float:
    """Median milliseconds of fn by CUDA events (short warm-up: tuning runs once per key)."""
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


# A candidate's output may differ from the reference's by rounding (another summation order, a
# split reduction): a few fp16 / bf16 ulps of the largest magnitude at most. A wrong kernel (a
# miscompiled tile, a tap at the wrong offset, an unwritten tile) is off by the values
# themselves. The check is a guard against those, not a test of the last ulp.
CHECK_RTOL = 1 / 64


def agrees(output: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether ``output`` is ``reference`` (finite, same shape and layout) up to rounding:
    max |output - reference| <= CHECK_RTOL * max |reference| (``agreement.max_abs``, on the
    device, in fp32). NaN or inf in the output disagrees."""
    err, scale = agreement.max_abs(output, reference)
    return err <= CHECK_RTOL * scale


@dataclasses.dataclass(frozen=True)
class CheckedRunner:
    """A runner whose candidates all write ``output``, and nothing else the tuner could see:
    the tuner checks each candidate's result against the reference config's (module
    docstring).
    ``run(candidate)`` launches the kernel once into ``output``; it may add into what is there
    (an accumulating gradient): the tuner zeroes ``output`` before each checked run."""

    run: Callable[[Any], None]
    output: torch.Tensor

    def __call__(self, candidate: Any) -> None:
        self.run(candidate)


def _run_zeroed(runner: CheckedRunner, candidate: Any) -> torch.Tensor:
    elementwise.fill_(runner.output, 0.0)
    runner(candidate)
    return runner.output


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class Tuner:
    """Chooses among candidate configs by timing them once per key; remembers the choice.

    path: the JSON cache file (None: no disk cache). enabled: False returns the default config
    always, without cache (default ``tuning_allowed()``). timer: how one candidate is timed
    (tests inject a fake).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        enabled: bool | None = None,
        timer: Timer | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.enabled = tuning_allowed() if enabled is None else enabled
        self.timer = timer or do_bench_timer
        self.memory: dict[tuple, Any] = {}  # (op, *problem items) -> the chosen candidate
        self._disk: dict[str, dict] | None = None  # the file's entries, read once
        self._warned = False
        self.tunings = 0  # keys timed by this tuner (tests and logs read it)

    # --- disk -------------------------------------------------------------------------------

    def _read_disk(self) -> dict[str, dict]:
        """The file's entries; {} when missing, and one warning when unreadable."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            entries = data["entries"]
            if data.get("version") != CACHE_VERSION or not isinstance(entries, dict):
                raise ValueError(f"unknown cache version {data.get('version')!r}")
            return entries
        except (OSError, ValueError, KeyError, TypeError) as e:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"tritoncnn: ignoring unreadable autotune cache {self.path} ({e}); "
                    "kernels are retuned and the file rewritten",
                    stacklevel=3,
                )
            return {}

    def _write_disk(self, key: str, entry: dict) -> None:
        """Merge one entry into the file: re-read it (another process may have added keys),
        write a temp file beside it, then os.replace (readers never see half a file)."""
        if self.path is None:
            return
        entries = self._read_disk()
        entries[key] = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".autotune.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only home must not stop training
            log.warning("tritoncnn: could not write autotune cache %s: %s", self.path, e)
        self._disk = entries

    def lookup(self, key: str) -> dict | None:
        """The file's entry for key, or None (the file is read once per tuner)."""
        if self._disk is None:
            self._disk = self._read_disk()
        return self._disk.get(key)

    # --- choice ------------------------------------------------------------------------------

    def choose(
        self,
        op: str,
        problem: Mapping[str, Any],
        candidates: Sequence[C] | Callable[[], Sequence[C]],
        default: C,
        make_runner: Callable[[], Runner],
        reference: C | None = None,
    ) -> C:
        """The config to launch ``op`` with for ``problem``.

        candidates: valid configs for this problem, or a function returning them (built only
        on a memory miss: launch helpers call this on every launch). default: the heuristic's
        config, used when tuning is off or impossible. make_runner: called once per tuning;
        allocates scratch outputs and returns ``runner(candidate)``, which launches the kernel
        once into them. reference: the config whose output a CheckedRunner's candidates must
        agree with (default: ``default``): the one the gpu tests hold to torch.
        """
        if not self.enabled:
            return default
        # The hit path runs on every launch: a tuple key (the call site fixes the field
        # order) is cheaper than the file's string key.
        fast_key = (op, *problem.items())
        chosen = self.memory.get(fast_key)
        if chosen is not None:
            return chosen
        key = make_key(op, problem)
        cands = list(candidates() if callable(candidates) else candidates)
        if len(cands) <= 1:  # nothing to time
            self.memory[fast_key] = cands[0] if cands else default
            return self.memory[fast_key]
        entry = self.lookup(key)
        if entry is not None:
            code = json.dumps(entry.get("config"), sort_keys=True)
            for cand in cands:
                if json.dumps(encode(cand), sort_keys=True) == code:
                    self.memory[fast_key] = cand
                    return cand
            # A stale entry (the candidate list changed since it was written): retune.
        if _capturing():  # no timing inside a CUDA graph; not remembered, so tuned later
            return default
        ref = default if reference is None else reference
        best, entry = self._tune(key, cands, make_runner, default, ref)
        self.memory[fast_key] = best
        self._write_disk(key, entry)
        return best

    def _tune(
        self,
        key: str,
        candidates: Sequence[C],
        make_runner: Callable[[], Runner],
        default: C,
        reference_config: C,
    ):
        runner = make_runner()
        reference = self._reference(key, runner, reference_config)
        times: list[float] = []
        rejected: list[C] = []
        for cand in candidates:
            if reference is not None and not self._agrees(
                key, runner, cand, reference_config, reference
            ):
                rejected.append(cand)
                times.append(math.inf)
                continue
            try:
                ms = float(self.timer(lambda c=cand: runner(c)))
            except Exception as e:  # noqa: BLE001 - e.g. OutOfResources: never choose it
                log.info("tritoncnn autotune %s: %s failed: %s", key, cand, e)
                ms = math.inf
            times.append(ms if math.isfinite(ms) else math.inf)
        best_i = min(range(len(candidates)), key=lambda i: times[i])
        if not math.isfinite(times[best_i]):
            raise RuntimeError(f"autotune {key}: every candidate failed to run: {candidates}")
        self.tunings += 1
        best = candidates[best_i]
        log.info("tritoncnn autotune %s: %s (%.4f ms of %d)", key, best, times[best_i], len(times))
        # the heuristic's own time beside the best one: how far the heuristic is off, per
        # problem, read from the file (None when the heuristic's config is not a candidate)
        timed = zip(candidates, times, strict=True)
        heuristic_ms = next((t for c, t in timed if c == default), None)
        entry = {
            "config": encode(best),
            "ms": times[best_i],
            "candidates": len(candidates),
            "heuristic": encode(default),
            "heuristic_ms": heuristic_ms if heuristic_ms != math.inf else None,
            "rejected": [encode(c) for c in rejected],
        }
        return best, entry

    @staticmethod
    def _reference(key: str, runner: Runner, default: Any) -> torch.Tensor | None:
        """A copy of the reference config's (``default``) output for a CheckedRunner, else
        None; None too when it can't run or gives non-finite values (nothing to check
        against)."""
        if not isinstance(runner, CheckedRunner):
            return None
        try:
            output = _run_zeroed(runner, default)
            reference = elementwise.cast_(runtime.empty_like(output), output)  # a copy
        except Exception as e:  # noqa: BLE001 - the candidates are still timed, unchecked
            log.info("tritoncnn autotune %s: default %s failed, unchecked: %s", key, default, e)
            return None
        if not math.isfinite(agreement.max_abs(reference, reference)[1]):
            log.info("tritoncnn autotune %s: non-finite reference, unchecked", key)
            return None
        return reference

    @staticmethod
    def _agrees(
        key: str, runner: CheckedRunner, cand: Any, default: Any, reference: torch.Tensor
    ) -> bool:
        """Run ``cand`` once into the zeroed output and compare it with the reference; a
        candidate that fails to run here is left to the timing (which skips it too)."""
        try:
            ok = agrees(_run_zeroed(runner, cand), reference)
        except Exception:  # noqa: BLE001
            return True
        if not ok:
            log.warning(
                "tritoncnn autotune %s: %s computes a different result from %s: never chosen",
                key, cand, default,
            )  # fmt: skip
        return ok


_DEFAULT: Tuner | None = None


def default_tuner() -> Tuner:
    """The process-wide tuner (created on first use from the environment)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Tuner(cache_path())
    return _DEFAULT


def set_default_tuner(tuner: Tuner | None) -> Tuner | None:
    """Replace the process-wide tuner (None: rebuild from the environment on next use); returns
    the previous one. Tests use it to point the cache at a temporary directory."""
    global _DEFAULT
    previous, _DEFAULT = _DEFAULT, tuner
    return previous

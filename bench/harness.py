"""Shared benchmark machinery: the case model, providers, correctness guard and run loop. Timing and the
copy-bandwidth ceiling are bench/timing.py; metadata, CSV/JSON, plot and table bench/results.py (re-exported
here, so an op's script needs only ``harness``).

An op's script (bench_lrn.py, bench_maxpool.py, bench_pool_lrn.py) defines

* ``OP``: its name, used in file names and rows;
* ``NETS`` (:class:`Net`: the network layers it runs), ``MODES``, and per device ``DTYPES`` and
  ``DEFAULT_BATCH``, from which :func:`cases` makes the list of :class:`Case`, each by
* ``case(mode, shape, dtype, layout, params)``: one :class:`Case`, usually from :func:`unary_case`;
* ``providers(device)``: a list of :class:`Provider` -- ours (``ext-*``, from :func:`ours`) plus the baselines
  ``eager`` (the torch function itself) and ``compile`` (``torch.compile`` of it) from :func:`baselines`, only
  those the machine can run;
* optionally ``BASELINES``: the providers ours are compared with (default :data:`BASELINES`), one speed-up
  column each;

and ``run_op(module, device, ...)`` does the rest; ``main(module)`` is the script's standalone command line.
Every provider of a case sees the same input tensors; its outputs are checked once against eager before it is
timed, so a broken kernel cannot post a time. Where eager lacks a case's bf16/fp16 dtype on the device (torch's
CPU LRN), the others are checked against eager run in float32 and rounded, and timed; eager's row is n/a. A
case with no reference at all is recorded with eager's error, its other providers as skipped, and the run
goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

import classicnets_ext
from classicnets_ext import _extension

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import (BASELINES, REPO, SKIPPED, UNSUPPORTED, _show, cpu_capability, metadata,  # noqa: E402,F401
                     plot, table, write_results)
from timing import _copy_gbps, copy_bandwidth, speedup, summary, time_providers  # noqa: E402,F401

# Inductor's on-disk cache does not tell its CPU kernels apart by ATEN_CPU_CAPABILITY (torch 2.14): kernels
# generated in one capability's run come back in another's and are compiled for that one's vector width.
# From an AVX-512 run into an ATEN_CPU_CAPABILITY=avx2 one they return garbage (the guard below catches it:
# "compile FAILED ... differs from eager"); from an avx2 run into an AVX-512 one they store 16 lanes where
# 8 were meant, past the end of their output, and malloc aborts ("double free or corruption"; seen with
# channels-last max-pool 8x96x55x55). One cache per capability; inductor reads the variable when it first
# compiles. The cache is named after the capability torch runs, not after the variable's text: torch (inductor
# alike) ignores a value it does not accept, e.g. "AVX2", and runs its default -- AVX-512 kernels, which must not
# land in the "_avx2" cache, where a genuine avx2 run would load them. A script of one's own that sets
# ATEN_CPU_CAPABILITY needs the same.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}_{cpu_capability()}"

# Correctness-guard tolerance (atol = rtol) per dtype: loose on purpose. The guard catches broken kernels
# (errors of order 1), not last-ulp differences; eager itself rounds every intermediate in fp16/bf16.
GUARD_TOL = {torch.float64: 1e-6, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# A gradient that fails the element-wise check may still pass on its norm, ||got - want|| <= tol * ||want||.
# A ReLU whose input lands within rounding of 0 passes or stops the gradient depending on the last bit of that
# input, so two correct implementations of a block with ReLUs can disagree by a whole term on a few thousand
# elements: torch.compile's fp32 input gradient of torchvision's Inception 3b (training, 8x256x28x28) had 2,252
# elements off by up to 0.13 from eager's, all in one 3x3 window of one sample, from one flipped ReLU of the
# 3x3 branch. Over 150 inputs each, batch 1, 1-5% of Inception 3a/4e/5b gradients failed element-wise that way,
# their norm ratios 0.0007-0.012. A kernel that is wrong on 1 element in 500 is still ~0.06 off.
GRAD_NORM_TOL = {torch.float64: 1e-6, torch.float32: 5e-2, torch.float16: 1e-1, torch.bfloat16: 1e-1}


@dataclass
class Case:
    """One benchmarked configuration. ``make_inputs(device)`` builds the tensors (once per case, shared by
    all providers); ``bind(fn, inputs)`` returns a zero-argument closure that runs the case once with the
    provider's op ``fn`` and returns the tensors to check (outputs, gradients)."""
    op: str
    mode: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str
    nbytes: int  # bytes a perfect kernel moves per call (reads + writes): the numerator of GB/s
    make_inputs: Callable[[str], dict[str, torch.Tensor]]
    bind: Callable[[Callable, dict], Callable[[], Sequence[torch.Tensor]]]
    params: dict[str, Any] = field(default_factory=dict)
    # The case's name in rows, tables and plots (its Net's, set by cases()): shape, layout and dtype alone do not
    # tell cases apart -- GoogLeNet's blocks 4b, 4c and 4d all take 512x14x14 inputs.
    label: str = ""
    # Per-provider overrides of nbytes, where providers must move different data (max pooling's training
    # forward saves a 1-byte argmax in ours, 8-byte indices in eager).
    nbytes_by_provider: dict[str, int] = field(default_factory=dict)

    @property
    def shape_str(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def dtype_str(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass
class Provider:
    """``make()`` returns the op callable for one case (called per case, so ``compile`` compiles once per
    shape). ``backend`` is the classicnets_ext backend selected around this provider's check and each of its
    timed calls, outside the timed region, so the times carry no backend-switching overhead."""
    name: str
    make: Callable[[], Callable]
    backend: str | None = None


# ---------------------------------------------------------------------------------------- cases, providers

@dataclass(frozen=True)
class Net:
    """One layer of a network that an op's bench runs: its input's (C, H, W), the op's keyword arguments, and
    the layouts to bench it in ("nchw", "channels_last")."""
    name: str
    chw: tuple[int, int, int]
    params: dict[str, Any]
    layouts: tuple[str, ...] = ("nchw",)


def cases(module, device: str, quick: bool = False, batch: int | None = None,
          dtypes: Sequence[torch.dtype] | None = None) -> list[Case]:
    """An op script's cases: ``module.case(mode, (N, C, H, W), dtype, layout, params)`` for every mode in
    ``module.MODES``, dtype (default ``module.DTYPES[device]``), net in ``module.NETS`` and layout of that net,
    in that nesting order, then every batch: N is ``batch``, or ``module.DEFAULT_BATCH[device]`` (an int, or a
    tuple of batch sizes). Quick: the first net only, in its first layout, at the first batch (every mode and
    dtype). Each case is labelled with its net's name."""
    batches = module.DEFAULT_BATCH[device] if batch is None else batch
    batches = batches if isinstance(batches, tuple) else (batches,)
    nets = module.NETS[:1] if quick else module.NETS
    return [dataclasses.replace(module.case(mode, (n, *net.chw), dtype, layout, net.params), label=net.name)
            for mode in module.MODES
            for dtype in (dtypes or module.DTYPES[device])
            for net in nets
            for layout in (net.layouts[:1] if quick else net.layouts)
            for n in (batches[:1] if quick else batches)]


def autocast_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """An autocast-inference case of ``dtype``: (its operands' dtype, the dtype autocast computes in). The
    operands are fp32; autocast computes in the case's dtype, bf16 for an fp32 case."""
    return torch.float32, torch.bfloat16 if dtype == torch.float32 else dtype


def unary_case(op: str, mode: str, shape: tuple[int, ...], dtype: torch.dtype, layout: str,
               params: dict[str, Any], eager: Callable, nbytes: int,
               nbytes_by_provider: dict[str, int] | None = None) -> Case:
    """A :class:`Case` of an op called as ``fn(x, **params)`` on one random input ``x`` of ``shape``, which
    every provider's function takes with the same keyword names. ``mode``:

    * ``"forward"``: ``x`` does not require grad (LRN's inference);
    * ``"inference"``: under ``torch.no_grad()``, so nothing is saved for a backward;
    * ``"training-forward"``: ``x`` requires grad, so the op saves what its backward needs;
    * ``"forward+backward"``: the training forward, then ``y.backward(dy)`` with a random ``dy`` shaped (and laid
      out) like ``eager``'s output.
    """
    def make_inputs(device):
        x = torch.randn(shape, dtype=dtype, device=device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        inputs = {"x": x}
        if mode == "forward+backward":
            with torch.no_grad():  # in float: only the output's shape and memory format matter (eager may lack dtype)
                inputs["dy"] = torch.randn_like(eager(x.float(), **params), dtype=dtype)
        return inputs

    def bind(fn, inputs):
        x = inputs["x"]
        if mode == "inference":
            def run():
                with torch.no_grad():
                    return (fn(x, **params),)
            return run
        if mode == "forward":
            return lambda: (fn(x, **params),)
        x = x.detach().requires_grad_()  # a leaf of its own per provider
        if mode == "training-forward":
            return lambda: (fn(x, **params),)
        dy = inputs["dy"]

        def run():
            x.grad = None  # so the backward writes dx instead of accumulating into it
            y = fn(x, **params)
            y.backward(dy)
            return y, x.grad
        return run

    if mode not in ("forward", "inference", "training-forward", "forward+backward"):
        raise ValueError(f"unknown mode {mode!r}")
    return Case(op, mode, shape, dtype, layout, nbytes, make_inputs, bind, params=dict(params),
                nbytes_by_provider=dict(nbytes_by_provider or {}))


REBUILD = "rebuild it with `pip install --no-build-isolation -e .`"


def has_ops(name: str, *cpp_ops: str) -> bool:
    """Whether the loaded _C defines every op a provider ``name`` calls; if not, say so on stderr (a _C built
    before those kernels landed)."""
    missing = [op for op in cpp_ops if not _extension.has_op(op)]
    if missing:
        print(f"{name} skipped: classicnets_ext._C has no {', '.join(missing)} op (built from older sources; "
              f"{REBUILD})", file=sys.stderr)
    return not missing


def _unavailable(why: str) -> Callable:
    """A provider's ``make`` for our C++ backend when it cannot run here: raises why, so its row says FAILED."""
    raise RuntimeError(f"not run: {why}")


def _ext_name(backend: str) -> str:
    return f"ext-{backend}"


def ours(device: str, fn: Callable, cpp_op: str, name: Callable[[str], str] = _ext_name) -> list[Provider]:
    """Our ``fn`` on every backend of ours that runs on ``device``: the C++ one (``"cpu"`` / ``"cuda"``, when
    the loaded _C defines ``cpp_op``) and, on CUDA, Triton -- never the Triton interpreter, a debugging aid
    thousands of times slower. ``name(backend)`` names each provider."""
    available = classicnets_ext.available_backends()
    provs = []
    if device in ("cpu", "cuda"):
        # Not a quiet omission: a _C that failed to load (or lacks the op) would leave eager against compile, and
        # a run that passes; the provider's row says FAILED, with why.
        if device not in available:
            why = _extension.load_error_hint() if device == "cpu" else "no CUDA build or device"
            provs.append(Provider(name(device), functools.partial(_unavailable, f"our {device} kernels: {why}")))
        elif not has_ops(name(device), cpp_op):
            provs.append(Provider(name(device), functools.partial(_unavailable, f"_C has no {cpp_op} op; {REBUILD}")))
        else:
            provs.append(Provider(name(device), lambda: fn, backend=device))
    if device == "cuda" and "triton" in available and os.environ.get("TRITON_INTERPRET") != "1":
        provs.append(Provider(name("triton"), lambda: fn, backend="triton"))
    return provs


def baselines(eager: Callable) -> list[Provider]:
    """``eager`` (the torch function) and ``compile``: a fresh ``torch.compile`` of it per case (default
    inductor), static shapes, so each shape compiles once."""
    return [Provider("eager", lambda: eager), Provider("compile", lambda: torch.compile(eager, dynamic=False))]


# ------------------------------------------------------------------------------------------------- run

def _check(outputs: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
    """Raise unless every output is close to eager's. The first output is the forward's (or the loss), checked
    element by element; the others are gradients, which may pass on their norm instead (GRAD_NORM_TOL)."""
    tol = GUARD_TOL[dtype]
    for i, (got, want) in enumerate(zip(outputs, expected)):
        try:
            torch.testing.assert_close(got, want, atol=tol, rtol=tol,
                                       msg=lambda m: f"output {i} differs from eager: {m}")
        except AssertionError as e:
            if i == 0 or got.shape != want.shape:
                raise
            diff, norm = (got.double() - want.double()).norm().item(), want.double().norm().item()
            if not diff <= GRAD_NORM_TOL[dtype] * norm:  # (NaN fails too)
                raise AssertionError(f"{e}; its norm is off by {diff / norm if norm else diff:.3g} of eager's "
                                     f"(up to {GRAD_NORM_TOL[dtype]} allowed for a gradient)") from None


FLOAT_REFERENCE = "the others are checked against eager run in float32 and rounded"


def _float_reference(case: Case, eager: Provider, inputs: dict, rounded: bool = True) -> list[torch.Tensor] | None:
    """For a bf16/fp16 case that eager cannot run on this device (torch's CPU LRN has no bf16 kernel): eager's
    outputs on the inputs widened to float32, rounded back to the case's dtype -- what our kernels compute, so
    the guard still checks them and they and torch.compile are still timed. Unrounded (``rounded=False``) for
    _as_close_as_eager. None for other dtypes, or when that fails too."""
    if case.dtype not in (torch.float16, torch.bfloat16):
        return None
    try:
        with classicnets_ext.use_backend(eager.backend or "auto"):
            widened = {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}  # (class labels stay)
            run = case.bind(eager.make(), widened)
            return [t.detach().to(case.dtype if rounded else torch.float32) for t in run()]
    except Exception:
        return None


# How much further from float32 than eager's own fp16/bf16 result an output may be (relative norms) when it fails
# _check: see _as_close_as_eager.
EAGER_ROUNDING_SLACK = 1.5


def _as_close_as_eager(outputs, expected, reference, dtype: torch.dtype) -> str | None:
    """For an fp16/bf16 provider that failed _check against eager run in the same dtype: None when each output is
    about as close to ``reference`` (eager in float32) as eager's own is -- its relative error at most
    EAGER_ROUNDING_SLACK times eager's, or GRAD_NORM_TOL -- else why not. Where rounding decides, two correct
    implementations cannot agree with each other: torchvision-style GoogLeNet's first-layer weight gradient in
    bf16 (training, batch 8, CPU) is 99% of its norm away from its float32 value in eager and in ours alike, and
    torch.compile's differs from eager's by 100%."""
    for i, (got, want, ref) in enumerate(zip(outputs, expected, reference)):
        if got.shape != ref.shape:
            return f"output {i} has shape {list(got.shape)}, float32 eager's {list(ref.shape)}"
        ref = ref.double()
        norm = ref.norm().item()
        ours, eagers = ((t.double() - ref).norm().item() / norm if norm else 0.0 for t in (got, want))
        if not ours <= max(EAGER_ROUNDING_SLACK * eagers, GRAD_NORM_TOL[dtype]):  # (NaN fails too)
            return (f"output {i} is {ours:.3g} of its norm from eager run in float32 (eager's own {eagers:.3g}, "
                    f"up to {EAGER_ROUNDING_SLACK}x that allowed)")
    return None


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def _bench_case(case: Case, provs: list[Provider], device: str, quick: bool, bar: tqdm,
                bases: Sequence[str] = BASELINES) -> list[dict]:
    where = f"[{case.op} {case.label} {case.mode} {case.shape_str} {case.layout} {case.dtype_str}]"
    rows = {p.name: {"op": case.op, "case": case.label, "mode": case.mode, "shape": case.shape_str,
                     "layout": case.layout, "dtype": case.dtype_str, "provider": p.name, "error": "",
                     "params": case.params} for p in provs}
    skip = None  # why the providers still to run cannot be checked against eager, so are not timed
    try:
        inputs = case.make_inputs(device)  # runs eager itself where the backward's dy is shaped like its output
        copy_gbps = copy_bandwidth(device, case.dtype)
    except Exception as e:
        skip = f"making the inputs failed: {_error(e)}"
    # First every provider's call is made and checked against eager; then the providers that passed are timed
    # together (time_providers: interleaved on the CPU), each inside the backend it selects.
    expected = None
    eager, float32 = None, None  # eager's provider when its outputs are the reference; its float32 outputs (lazily)
    runs: dict[str, tuple[Callable, Callable]] = {}
    for p in sorted(provs, key=lambda p: p.name != "eager"):  # eager first: its outputs are the reference
        row = rows[p.name]
        if skip:
            row["error"] = f"{SKIPPED}{skip}"
            continue
        bar.set_postfix_str(f"{case.mode} {case.label} {case.layout} {p.name}")
        backend = functools.partial(classicnets_ext.use_backend, p.backend or "auto")
        try:
            if p.name == "compile":
                torch._dynamo.reset()  # a fresh compile per case: no recompile limit, no dynamic shapes
            with backend():
                run = case.bind(p.make(), inputs)
                t0 = time.perf_counter()
                outputs = run()  # the first call also compiles / autotunes: its time is worth recording
                row["first_call_s"] = time.perf_counter() - t0
                if expected is None:
                    expected, eager = [t.detach().clone() for t in outputs], p
                try:
                    _check(outputs, expected, case.dtype)
                except AssertionError as e:  # in fp16/bf16: as close to float32 as eager itself is, then?
                    if eager is None or case.dtype not in (torch.float16, torch.bfloat16):
                        raise
                    if float32 is None:
                        float32 = _float_reference(case, eager, inputs, rounded=False) or []
                    why = (_as_close_as_eager(outputs, expected, float32, case.dtype) if float32
                           else "eager failed in float32, nothing to weigh rounding against")
                    if why is not None:
                        raise AssertionError(f"{why}; against eager in {case.dtype_str}: {e}") from None
            runs[p.name] = (run, backend)
        except Exception as e:  # a failing provider is reported, never timed, and the run goes on
            row["error"] = _error(e)
            # eager failed (a dtype it lacks on this device): its float32 run rounded is the reference where it
            # can be made; otherwise the rest are skipped, not the run.
            if expected is None and (expected := _float_reference(case, p, inputs)) is not None:
                row["error"] = f"{UNSUPPORTED}{row['error']}; {FLOAT_REFERENCE}"
                tqdm.write(f"{where} {p.name} n/a: {row['error']}")
                continue
            tqdm.write(f"{where} {p.name} FAILED: {row['error']}")
            if expected is None:
                skip = f"no reference: {p.name} failed"
        outputs = None
    expected = None
    skipped = [name for name, r in rows.items() if r["error"].startswith(SKIPPED)]
    if skipped:
        tqdm.write(f"{where} {', '.join(skipped)} skipped: {skip}")
    times, paired = {}, False
    if runs:
        bar.set_postfix_str(f"{case.mode} {case.label} {case.layout} timing {', '.join(runs)}")
        try:
            times, paired = time_providers(runs, device, quick)
        except Exception as e:  # e.g. out of memory with every provider's tensors alive: none is timed
            for name in runs:
                rows[name]["error"] = _error(e)
            tqdm.write(f"{where} timing FAILED: {_error(e)}")
    for name, t in times.items():
        row = rows[name]
        row.update(summary(t))
        row["gbps"] = case.nbytes_by_provider.get(name, case.nbytes) / row["median_ms"] / 1e6
        row["pct_copy_bw"] = 100 * row["gbps"] / copy_gbps
    for name, r in rows.items():
        for base in bases:
            ok = name in times and base in times
            r[f"speedup_vs_{base}"] = speedup(times[base], times[name], paired) if ok else None
    return [rows[p.name] for p in provs]


def bench(module, device: str, quick: bool = False, batch: int | None = None,
          on_case: Callable[[list[dict]], None] | None = None, rows: list[dict] | None = None) -> list[dict]:
    """Run every case of ``module`` on ``device`` with a progress bar; one row per case and provider, appended
    to ``rows`` (a new list by default), which is returned. ``on_case(rows so far)`` is called after each case."""
    provs = module.providers(device)
    bases = getattr(module, "BASELINES", BASELINES)
    rows = [] if rows is None else rows
    todo = cases(module, device, quick, batch)
    with tqdm(todo, desc=f"{module.OP} on {device}", unit="case", dynamic_ncols=True) as bar:
        for case in bar:
            rows.extend(_bench_case(case, provs, device, quick, bar, bases))
            if device == "cuda":
                torch.cuda.empty_cache()
            if on_case:
                on_case(rows)
    return rows


def default_out_dir(op: str, device: str) -> Path:
    return REPO / "results" / f"{op}-{device}-{time.strftime('%Y%m%d-%H%M%S')}"


def report_failures(rows: list[dict]) -> bool:
    """Say how many provider runs failed or were skipped (the 'error' column has why), and where eager lacked
    the dtype (not a failure: the others were checked against it in float32); True when none failed or was
    skipped."""
    unsupported = sum(r["error"].startswith(UNSUPPORTED) for r in rows)
    failed = [r for r in rows if r["error"] and not r["error"].startswith(UNSUPPORTED)]
    skipped = sum(r["error"].startswith(SKIPPED) for r in failed)
    if unsupported:
        print(f"eager lacks the dtype of {unsupported} case(s) on this device (n/a): {FLOAT_REFERENCE}")
    if failed:
        print(f"{len(failed) - skipped} provider run(s) FAILED the correctness guard or raised, {skipped} skipped "
              "(nothing to check them against); see the 'error' column")
    return not failed


def run_op(module, device: str, quick: bool = False, batch: int | None = None,
           out_dir: Path | None = None) -> bool:
    """Bench one op on one device, write CSV/JSON/PNG, print the table. True when every provider passed."""
    meta = metadata(device)
    out_dir = Path(out_dir) if out_dir else default_out_dir(module.OP, device)
    stem = f"{module.OP}-{device}"

    def save(rows: list[dict], complete: bool = False) -> list[Path]:
        # Rewritten after every case, so a run cut short (a time limit on a lent GPU) still leaves data.
        meta["complete"] = complete
        meta["copy_gbps"] = {str(d).removeprefix("torch."): v for (dev, d), v in _copy_gbps.items()
                             if dev == device}
        return write_results(rows, meta, out_dir, stem)

    rows: list[dict] = []
    interrupted = False
    try:
        bench(module, device, quick, batch, on_case=save, rows=rows)
    except KeyboardInterrupt:  # Ctrl-C, or a time limit's SIGTERM (stop_on_sigterm): report the cases done
        interrupted = True
    paths = save(rows, complete=not interrupted)
    if rows:
        paths.append(plot(rows, meta, out_dir / f"{stem}.png"))
        print()
        print(table(rows, meta))
    print("results: " + ", ".join(_show(p) for p in paths))
    ok = report_failures(rows)
    if interrupted:
        print(f"INTERRUPTED: {module.OP} on {device} stopped before its last case; the table holds the cases done")
        raise KeyboardInterrupt
    return ok


def stop_on_sigterm() -> None:
    """Make SIGTERM (what ``timeout`` sends) stop the run as Ctrl-C does, so run_op still writes its results
    and prints the table of the cases done."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def gpu_compile_mode() -> str:
    """The torch.compile mode of the whole-net and Inception benches' GPU baseline: max-autotune (the
    strongest Inductor), or CLASSICNETS_BENCH_COMPILE_MODE -- gpu_suite.sh sets "default", whose compiles fit
    a short lease's steps."""
    mode = os.environ.get("CLASSICNETS_BENCH_COMPILE_MODE", "max-autotune")
    if mode not in _COMPILE_MODES:
        raise SystemExit(f"CLASSICNETS_BENCH_COMPILE_MODE={mode!r}: one of {', '.join(_COMPILE_MODES)}")
    return mode


# ------------------------------------------------------------------------------------------- command lines
# Every bench script checks its flags with these, so a bad value is caught the same way everywhere and before
# any work: one line naming the flag, exit status 2 (argparse's parser.error), never a traceback mid-run.

def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``low`` (argparse's error names the flag)."""
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return whole_number


def choose(parser: argparse.ArgumentParser, flag: str, text: str, known: Sequence[str]) -> list[str]:
    """The items of the comma-separated ``flag``, each one of ``known``. An empty list is an error too: it
    would run nothing and report success."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        parser.error(f"{flag}: names nothing to run; choose from {', '.join(known)}")
    unknown = [t for t in items if t not in known]
    if unknown:
        parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return items


def parse_dtypes(parser: argparse.ArgumentParser, text: str) -> tuple[torch.dtype, ...]:
    """``--dtypes``: names (or torch's aliases, e.g. half) of the dtypes the correctness guard has a tolerance
    for. Any other (an integer dtype, float8) would fail in every case, after the cases before it had run."""
    supported = ", ".join(str(d).removeprefix("torch.") for d in GUARD_TOL)
    items = [t.strip() for t in text.split(",") if t.strip()]
    dtypes = [getattr(torch, t, None) for t in items]
    bad = [t for t, d in zip(items, dtypes) if not (isinstance(d, torch.dtype) and d in GUARD_TOL)]
    if not items:
        parser.error(f"--dtypes: names nothing to run; choose from {supported}")
    if bad:
        parser.error(f"--dtypes: {', '.join(bad)} not benchmarked; choose from {supported}")
    return tuple(dtypes)


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """``--device cuda`` where torch sees no GPU stops the script now, in one line."""
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")


def writable_dir(parser: argparse.ArgumentParser, flag: str, path: str | None) -> Path | None:
    """``path`` (None: the script's default, left to it) created if need be and checked writable, so a bad
    ``flag`` fails now rather than when the first results are saved."""
    if path is None:
        return None
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        parser.error(f"{flag} {path}: {e.strerror or e}")
    return Path(path)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch.set_num_threads for every contender, applied by ``set_threads``. On a machine other
    jobs load, one thread: two OpenMP threads stall single calls by a scheduler tick, which the paired rounds
    do not cancel (a call, not a round, is hit)."""
    parser.add_argument("--threads", type=at_least(1), help="torch.set_num_threads (default: torch's, the cores); "
                        "1 on a loaded machine")


def set_threads(threads: int | None) -> None:
    """Before ``metadata()``, which records the count the results were measured with."""
    if threads is not None:
        torch.set_num_threads(threads)


def main(module, argv=None) -> int:
    """The standalone command line of an op's script: ``python bench/bench_<op>.py [--device cpu|cuda]
    [--quick] [--batch N] [--dtypes LIST] [--threads N] [--out DIR]``. Exit status 1 when any provider
    failed."""
    dtypes_str = lambda ts: ",".join(str(t).removeprefix("torch.") for t in ts)  # noqa: E731
    parser = argparse.ArgumentParser(description=module.__doc__.splitlines()[0])
    parser.add_argument("--device", choices=getattr(module, "DEVICES", ("cpu", "cuda")), default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer cases, shorter measurements")
    parser.add_argument("--batch", type=at_least(1), help=f"batch size N (default {module.DEFAULT_BATCH})")
    parser.add_argument("--dtypes", help="comma-separated, e.g. float16,bfloat16,float32 (default per device: "
                        + ", ".join(f"{d}: {dtypes_str(v)}" for d, v in module.DTYPES.items()) + ")")
    parser.add_argument("--out", help=f"output directory (default results/{module.OP}-<device>-<timestamp>)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    set_threads(args.threads)
    if args.dtypes is not None:
        module.DTYPES[args.device] = parse_dtypes(parser, args.dtypes)
    out = writable_dir(parser, "--out", args.out)
    stop_on_sigterm()
    try:
        return 0 if run_op(module, args.device, args.quick, args.batch, out) else 1
    except KeyboardInterrupt:
        return 130

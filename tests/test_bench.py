"""The bench scripts' command lines, case keys and failure handling -- never a real benchmark: the flag tests stop
at the flag, and the run tests bench a toy op of 5x5 inputs for a fraction of a second per provider."""
import contextlib
import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import classicnets_ext

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_ensemble  # noqa: E402
import bench_inception  # noqa: E402
import bench_linear  # noqa: E402
import bench_lrn  # noqa: E402
import bench_maxpool  # noqa: E402
import bench_models  # noqa: E402
import bench_pool_lrn  # noqa: E402
import bench_train  # noqa: E402
import harness  # noqa: E402
import results  # noqa: E402
import run  # noqa: E402
import timing  # noqa: E402


@pytest.fixture(autouse=True)
def small_cpu_flush(monkeypatch):
    """These tests check the harness, not speeds: a 1 MB flush instead of twice the L3 (~0.1 s a call here)."""
    monkeypatch.setitem(timing._flush_buffers, "cpu", torch.empty(1 << 20, dtype=torch.int8))


@pytest.fixture
def no_work(monkeypatch):
    """Every script's work fails the test: a bad flag must stop the script before it starts any."""
    def work(*args, **kwargs):
        pytest.fail("a bad flag reached the benchmark")
    for module, name in ((harness, "run_op"), (bench_models, "run_models"), (bench_train, "minimal"),
                         (bench_train, "ours"), (bench_train, "step_rate"), (bench_ensemble, "member")):
        monkeypatch.setattr(module, name, work)


def _file(tmp_path) -> str:
    path = tmp_path / "a-file"
    path.write_text("")
    return str(path)


# (main, argv, the flag the one-line error must name); "FILE" is replaced by a regular file's path.
BAD_FLAGS = [
    (run.main, ["--ops", "", "--device", "cpu"], "--ops"),
    (run.main, ["--ops", ",", "--device", "cpu"], "--ops"),
    (run.main, ["--ops", "lrn,bogus", "--device", "cpu"], "--ops"),
    (run.main, ["--ops", "lrn", "--device", "cpu", "--batch", "0"], "--batch"),
    (run.main, ["--ops", "lrn", "--device", "cpu", "--batch", "-1"], "--batch"),
    (run.main, ["--ops", "lrn", "--device", "cpu", "--out", "FILE/results"], "--out"),
    (run.main, ["--ops", "lrn", "--device", "cpu", "--dtypes", "int8"], "--dtypes"),
    (lambda argv: harness.main(bench_lrn, argv), ["--batch", "0"], "--batch"),
    (lambda argv: harness.main(bench_lrn, argv), ["--batch", "two"], "--batch"),
    (lambda argv: harness.main(bench_lrn, argv), ["--dtypes", "int32"], "--dtypes"),
    (lambda argv: harness.main(bench_lrn, argv), ["--dtypes", "float32,float8_e4m3fn"], "--dtypes"),
    (lambda argv: harness.main(bench_lrn, argv), ["--dtypes", ","], "--dtypes"),
    (lambda argv: harness.main(bench_maxpool, argv), ["--out", "FILE/results"], "--out"),
    (lambda argv: harness.main(bench_pool_lrn, argv), ["--batch", "-3"], "--batch"),
    (lambda argv: harness.main(bench_inception, argv), ["--dtypes", "bool"], "--dtypes"),
    (bench_models.main, ["--models", ""], "--models"),
    (bench_models.main, ["--models", "bogus"], "--models"),
    (bench_models.main, ["--batch", "0"], "--batch"),
    (bench_models.main, ["--modes", "training"], "--modes"),
    (bench_models.main, ["--dtypes", "int64"], "--dtypes"),
    (bench_models.main, ["--out", "FILE/results"], "--out"),
    (bench_train.main, ["--rounds", "0", "--skip-steps"], "--rounds"),
    (bench_train.main, ["--rounds", "-1", "--skip-steps"], "--rounds"),
    (bench_train.main, ["--reps", "0"], "--reps"),
    (bench_train.main, ["--epochs", "1"], "--epochs"),
    (bench_train.main, ["--step-batch", "0"], "--step-batch"),
    (bench_train.main, ["--device", "bogus"], "--device"),
    (bench_train.main, ["--out", "FILE/results"], "--out"),
    (bench_ensemble.main, ["--model", "bogus"], "--model"),
    (bench_ensemble.main, ["--data", "bogus"], "--data"),
    (bench_ensemble.main, ["--epochs", "0"], "--epochs"),
    (bench_ensemble.main, ["--members", "3", "--k", "4"], "--k"),
    (bench_ensemble.main, ["--target", "97.5"], "--target"),
    (bench_ensemble.main, ["--out", "FILE/results"], "--out"),
]


def _script(main) -> str:
    return "harness" if main.__name__ == "<lambda>" else main.__module__


@pytest.mark.parametrize("main, argv, flag", BAD_FLAGS, ids=[f"{_script(m)} {' '.join(a)}" for m, a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_and_exit_2_before_any_work(main, argv, flag, tmp_path, capsys, no_work):
    argv = [a.replace("FILE", _file(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error:" in err.strip().splitlines()[-1] and flag in err.strip().splitlines()[-1]


def test_ensemble_bad_flags_create_no_folders(tmp_path, capsys, no_work):
    for argv in (["--epochs", "0"], ["--data", "bogus"], ["--model", "bogus"]):
        with pytest.raises(SystemExit):
            bench_ensemble.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", [bench_lrn, bench_maxpool, bench_pool_lrn, bench_inception, bench_linear],
                         ids=lambda m: m.OP)
def test_every_case_has_its_own_key(module):
    """The table, plot and CSV tell cases apart by their key: GoogLeNet's 4b, 4c and 4d share 512x14x14 (and 5a,
    5b 832x7x7), and a key without the case's name showed only the last of them."""
    for device in module.DTYPES:
        cases = harness.cases(module, device, dtypes=(torch.float32,))
        keys = {results._case_key({"mode": c.mode, "case": c.label, "shape": c.shape_str, "layout": c.layout,
                                   "dtype": c.dtype_str}) for c in cases}
        assert len(keys) == len(cases)
        assert {c.label for c in cases} == {net.name for net in module.NETS}


def _row(case: str, provider: str, ms: float) -> dict:
    return {"op": "inception", "case": case, "mode": "inference", "shape": "1x512x14x14", "layout": "nchw",
            "dtype": "float32", "provider": provider, "error": "", "median_ms": ms, "pct_copy_bw": 1.0,
            "speedup_vs_eager": 1.0, "speedup_vs_compile": None}


def test_cases_with_one_shape_keep_their_rows(tmp_path):
    rows = [_row(block, p, ms) for block, ms in (("inception-4b", 1.0), ("inception-4c", 2.0),
                                                 ("inception-4d", 3.0)) for p in ("ext-cpu", "eager")]
    meta = {**harness.metadata("cpu"), "copy_gbps": {"float32": 10.0}}
    text = harness.table(rows, meta)
    for block in ("inception-4b", "inception-4c", "inception-4d"):
        assert sum(block in line for line in text.splitlines()) == 1
    csv_path, _ = harness.write_results(rows, meta, tmp_path, "inception-cpu")
    with csv_path.open(newline="") as f:
        assert [r["case"] for r in csv.DictReader(f)][::2] == ["inception-4b", "inception-4c", "inception-4d"]
    harness.plot(rows, meta, tmp_path / "inception-cpu.png")


def _op_module(name: str, eager, providers, nbytes: int = 1, nbytes_by_provider=None,
               dtypes=(torch.float32,), modes=("forward",)) -> types.ModuleType:
    """A bench op module (what bench/bench_*.py define) of one network, 1x2x5x5 inputs on the CPU, whose cases
    run ``eager`` as the reference and whose ``providers(device)`` are given."""
    module = types.ModuleType(name, f"The toy op {name}.")
    module.OP = name
    module.NETS = [harness.Net("toy-net", (2, 5, 5), {})]
    module.DEFAULT_BATCH = {"cpu": 1}
    module.DTYPES = {"cpu": tuple(dtypes)}
    module.MODES = tuple(modes)
    module.case = lambda mode, shape, dtype, layout, params: harness.unary_case(
        name, mode, shape, dtype, layout, params, eager, nbytes, nbytes_by_provider)
    module.providers = providers
    return module


def _toy_module() -> types.ModuleType:
    """An op whose eager has no float16 (as CPU LRN's avg_pool3d has no bf16) and no float64: doubling, 1x2x5x5
    inputs."""
    def eager(x):
        if x.dtype in (torch.float16, torch.float64):
            raise NotImplementedError(f"no {x.dtype}")
        return 2 * x

    return _op_module("toy", eager, lambda device: [harness.Provider("ext-toy", lambda: lambda x: x + x),
                                                    harness.Provider("eager", lambda: eager)],
                      dtypes=(torch.float16, torch.float64, torch.float32), modes=("forward", "forward+backward"))


def test_a_case_eager_cannot_run_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    """float16, which eager lacks: ours is checked against eager run in float32 and rounded, and timed; eager's
    row says n/a, not a failure. float64: no reference can be made, so ours is skipped and the run fails."""
    assert harness.run_op(_toy_module(), "cpu", quick=True, out_dir=tmp_path) is False
    rows = json.loads((tmp_path / "toy-cpu.json").read_text())["rows"]
    by = {(r["mode"], r["dtype"], r["provider"]): r for r in rows}
    assert len(rows) == 12
    for mode in ("forward", "forward+backward"):
        half = by[mode, "float16", "eager"]["error"]
        assert half.startswith(harness.UNSUPPORTED) and "NotImplementedError: no torch.float16" in half
        assert by[mode, "float16", "ext-toy"]["error"] == "" and by[mode, "float16", "ext-toy"]["median_ms"] > 0
        assert "NotImplementedError: no torch.float64" in by[mode, "float64", "eager"]["error"]
        assert by[mode, "float64", "ext-toy"]["error"].startswith(harness.SKIPPED)
        for provider in ("ext-toy", "eager"):
            assert by[mode, "float32", provider]["error"] == "" and by[mode, "float32", provider]["median_ms"] > 0
    out = capsys.readouterr().out
    assert "n/a" in out and "skipped" in out and "FAILED" in out
    assert "eager lacks the dtype of 2 case(s)" in out


def test_the_float_reference_still_catches_a_wrong_kernel(tmp_path):
    """Where eager lacks the dtype, a kernel that disagrees with eager in float32 fails the guard."""
    module = _toy_module()
    module.DTYPES = {"cpu": (torch.float16,)}
    eager = [p for p in module.providers("cpu") if p.name == "eager"]
    module.providers = lambda device: [harness.Provider("ext-toy", lambda: lambda x: 3 * x), *eager]
    assert harness.run_op(module, "cpu", quick=True, out_dir=tmp_path) is False
    rows = json.loads((tmp_path / "toy-cpu.json").read_text())["rows"]
    by = {(r["mode"], r["provider"]): r for r in rows}
    assert by["forward", "eager"]["error"].startswith(harness.UNSUPPORTED)
    assert "differs from eager" in by["forward", "ext-toy"]["error"]


def test_in_low_precision_an_output_as_close_to_float32_as_eagers_passes():
    """bf16, where eager's own result is mostly rounding ((x + 256) - 256: bf16 spaces 256's neighbours 2 apart):
    an implementation that rounds elsewhere disagrees with eager element by element, yet passes when it is no
    further from eager run in float32 than eager is ((x + 64) - 64, closer); a wrong one still fails, named."""
    module = _op_module("rounding", lambda x: (x + 256) - 256,
                        lambda device: [harness.Provider("ext-closer", lambda: lambda x: (x + 64) - 64),
                                        harness.Provider("ext-wrong", lambda: lambda x: 3 * x),
                                        harness.Provider("eager", lambda: lambda x: (x + 256) - 256)],
                        dtypes=(torch.bfloat16,))
    rows = harness.bench(module, "cpu", quick=True)
    by = {r["provider"]: r for r in rows}
    assert by["eager"]["error"] == "" and by["ext-closer"]["error"] == ""
    assert by["ext-closer"]["median_ms"] > 0
    wrong = by["ext-wrong"]["error"]
    assert wrong.startswith("AssertionError: output 0 is ") and "from eager run in float32 (eager's own" in wrong
    assert "median_ms" not in by["ext-wrong"]


def test_cpu_providers_are_timed_in_interleaved_rounds_each_inside_its_backend(monkeypatch):
    """On the CPU every round times each provider once, in a rotating order, so round i of two providers is a
    pair whose ratio a neighbour's load leaves alone; each call runs inside its provider's context (the backend
    it selects), which is entered outside the timed region. The calls and contexts advance a virtual clock, so
    the times are exact whatever else the machine runs (real sleeps overshot by milliseconds under load)."""
    import timing
    log = []
    clock = [0.0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    class Backend:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            log.append(("enter", self.name))
            clock[0] += 0.004  # slower than either call: timed, it would show in both medians

        def __exit__(self, *exc):
            log.append(("exit", self.name))

    def call(name, seconds):
        def fn():
            inside = [entry for entry in log if entry[0] != "call"][-1]
            assert inside == ("enter", name), "called outside its own context"
            log.append(("call", name))
            clock[0] += seconds
        return fn

    runs = {"slow": (call("slow", 0.002), lambda: Backend("slow")), "fast": (call("fast", 0.0005), lambda: Backend("fast"))}
    times, paired = timing.time_providers(runs, "cpu", quick=True)
    assert paired and len(times["slow"]) == len(times["fast"]) >= timing.MIN_REPS
    assert all(t == pytest.approx(2.0) for t in times["slow"]) and all(t == pytest.approx(0.5) for t in times["fast"])
    calls = [name for what, name in log if what == "call"]
    rounds = calls[-2 * len(times["slow"]):]  # after each provider's warm-up calls
    assert [rounds[i:i + 2] for i in range(0, 6, 2)] == [["slow", "fast"], ["fast", "slow"], ["slow", "fast"]]
    assert timing.speedup(times["slow"], times["fast"], paired) > 1.0
    # Paired times give the median of the rounds' ratios; unpaired (CUDA) the ratio of the medians.
    assert timing.speedup([1.0, 4.0, 9.0], [1.0, 2.0, 3.0], True) == 2.0
    assert timing.speedup([1.0, 4.0, 9.0], [1.0, 2.0, 3.0], False) == 2.0
    assert timing.speedup([1.0, 3.0, 9.0], [1.0, 1.0, 9.0], True) == 1.0
    assert timing.speedup([1.0, 3.0, 9.0], [1.0, 1.0, 9.0], False) == 3.0


def test_a_cases_rows_carry_the_speedups_and_bandwidth_of_their_times(monkeypatch):
    """The rows the harness writes for a case, on a virtual clock: ours takes 0.5 ms a call, compile 1 ms and eager
    2 ms, so ours is 4x eager and 2x compile (the speed-ups were once inverted: speedup(ours, eager) = 0.25 passed
    every test, as timing.speedup was tested but not the row that calls it). GB/s is the case's bytes (or its
    provider's override) over the median time: 1x2x5x5 float32 read and written is 400 bytes, 400 B / 0.5 ms =
    8e5 B/s = 8e-4 GB/s for ours; eager moves 600 (an override), 600 B / 2 ms = 3e-4 GB/s; compile 400 B / 1 ms =
    4e-4 GB/s. The copy bandwidth is set (measured on a virtual clock it would take no time): 10 GB/s."""
    clock = [0.0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setitem(timing._copy_gbps, ("cpu", torch.float32), 10.0)

    def taking(seconds):
        def fn(x):
            clock[0] += seconds
            return 2 * x
        return fn

    module = _op_module("timed_toy", taking(0.002), lambda device: [
        harness.Provider("ext-toy", lambda: taking(0.0005)), harness.Provider("eager", lambda: taking(0.002)),
        harness.Provider("compile", lambda: taking(0.001))], nbytes=2 * 50 * 4, nbytes_by_provider={"eager": 600})
    rows = {r["provider"]: r for r in harness.bench(module, "cpu", quick=True)}
    assert set(rows) == {"ext-toy", "eager", "compile"} and all(r["error"] == "" for r in rows.values())
    expected = {  # provider: (median ms, GB/s, vs eager, vs compile)
        "ext-toy": (0.5, 400 / 0.5e-3 / 1e9, 2.0 / 0.5, 1.0 / 0.5),
        "eager": (2.0, 600 / 2e-3 / 1e9, 1.0, 1.0 / 2.0),
        "compile": (1.0, 400 / 1e-3 / 1e9, 2.0 / 1.0, 1.0),
    }
    for name, (ms, gbps, vs_eager, vs_compile) in expected.items():
        row = rows[name]
        assert row["median_ms"] == pytest.approx(ms), name
        assert row["gbps"] == pytest.approx(gbps) and row["pct_copy_bw"] == pytest.approx(100 * gbps / 10.0), name
        assert row["speedup_vs_eager"] == pytest.approx(vs_eager), name
        assert row["speedup_vs_compile"] == pytest.approx(vs_compile), name
    assert rows["ext-toy"]["speedup_vs_eager"] == pytest.approx(4.0)
    assert rows["ext-toy"]["speedup_vs_compile"] == pytest.approx(2.0)


def test_guard_passes_a_gradient_through_a_flipped_relu_and_fails_a_broken_one():
    """Two correct blocks with ReLUs can disagree on whether a ReLU whose input is within rounding of 0 passes
    the gradient: a whole term, but on one window of one sample (torch.compile vs eager, Inception 3b). The
    guard lets that gradient through on its norm, and still fails a gradient wrong on 1 element in 100, one 10%
    off everywhere, a NaN, and the forward output with the same flip."""
    torch.manual_seed(0)
    y, g = torch.randn(2, 8, 14, 14), torch.randn(2, 64, 14, 14)
    flipped = g.clone()
    flipped[1, :, 5:8, 5:8] += 0.15  # a 3x3 conv's flipped ReLU: one 3x3 window, all its input channels
    with pytest.raises(AssertionError):  # the element-wise check alone would fail it
        torch.testing.assert_close(flipped, g, atol=harness.GUARD_TOL[torch.float32], rtol=1e-3)
    harness._check([y, flipped], [y, g], torch.float32)
    with pytest.raises(AssertionError, match="output 0 differs"):
        harness._check([flipped], [g], torch.float32)
    wrong = g.clone().flatten()
    some = torch.randperm(wrong.numel())[:wrong.numel() // 100]
    wrong[some] = torch.randn(len(some))
    nan = g.clone()
    nan[0, 0, 0, 0] = float("nan")
    for bad in (wrong.view_as(g), g * 1.1, nan):
        with pytest.raises(AssertionError, match="(?s)output 1 differs from eager.*norm is off"):
            harness._check([y, bad], [y, g], torch.float32)


@pytest.mark.parametrize("name, mode", [("resnet152", "inference"), ("resnet101", "train-step")])
def test_deep_resnets_pass_the_guard_between_correct_implementations(name, mode):
    """At torchvision's initialisation ResNet-152's eval logits reach ~1e8 and ResNet-101's first-layer gradient
    differs by 9% of its norm between eager on NCHW weights and our backend on channels-last ones: every
    provider failed the guard (`--models all`, batch 8 and 1). The bench's models start well conditioned."""
    c = bench_models.case(mode, (1, 3, 224, 224), torch.float32, "nchw", {"model": name})
    inputs = c.make_inputs("cpu")
    with classicnets_ext.use_backend("reference"):
        want = c.bind(bench_models._stock_instance, inputs)()
    with classicnets_ext.use_backend("auto"):
        got = c.bind(bench_models._instance, inputs)()
    harness._check(got, want, torch.float32)


def test_models_autocast_inference_runs_fp32_models_in_a_region_per_call():
    """The opt-in autocast-inference mode: fp32 model and input, bf16 computed (the case's dtype), ours and the
    stock model through the guard at bf16's tolerance."""
    c = bench_models.case(bench_models.AUTOCAST, (2, 3, 224, 224), torch.float32, "nchw", {"model": "alexnet"})
    assert c.dtype == torch.bfloat16
    inputs = c.make_inputs("cpu")
    assert inputs["x"].dtype == torch.float32
    with classicnets_ext.use_backend("reference"):
        want = c.bind(bench_models._stock_instance, inputs)()
    with classicnets_ext.use_backend("auto"):
        got = c.bind(bench_models._instance, inputs)()
    assert got[0].dtype == want[0].dtype == torch.bfloat16 and not torch.is_autocast_enabled("cpu")
    harness._check(got, want, torch.bfloat16)


def _capability(env: dict, code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=BENCH, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_inductor_cache_and_metadata_follow_torch_reading_of_aten_cpu_capability():
    """torch ignores ATEN_CPU_CAPABILITY=AVX2 (upper case) and runs its default: the cache and the metadata must
    name that default, not avx2, or a real avx2 run later loads the default's kernels."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}
    default = _capability(env, "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
    got = _capability({**env, "ATEN_CPU_CAPABILITY": "AVX2"},
                      "import os, harness; print(os.environ['TORCHINDUCTOR_CACHE_DIR'].rsplit('_', 1)[1], "
                      "harness.metadata('cpu')['cpu_capability'])")
    assert got.split() == [default, default]


def test_ensemble_member_cut_short_carries_on(tmp_path):
    """A member whose run stopped before its model.pt (killed, or the bench interrupted) is resumed from its
    last checkpoint on the next bench run; the train package used to refuse the folder (it already holds
    checkpoints) with a traceback."""
    import argparse

    from classicnets_ext.train import TrainConfig, train

    args = argparse.Namespace(out=str(tmp_path), model="lenet5", data="digits", epochs=1, val_fraction=None)
    folder = tmp_path / "lenet5-digits-e1" / "seed-0"
    train(TrainConfig(model="lenet5", data="digits", epochs=1, seed=0, out=str(folder), quiet=True))
    want = torch.load(folder / "model.pt", weights_only=False)["model"]
    os.remove(folder / "model.pt")  # as if killed after the last checkpoint
    probs, labels, _, history = bench_ensemble.member(args, 0)
    got = torch.load(folder / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want) and len(history) == 1
    assert probs.shape == (len(labels), 10)


def test_host_bench_runs_and_reports_every_row(capsys):
    """bench_host.py (gpu_suite's host step): one call per timing, every row printed with numbers."""
    import bench_host

    assert bench_host.main(["--calls", "2", "--repeats", "1"]) == 0
    rows = [(r[:26].strip(), r[26:].split()) for r in capsys.readouterr().out.splitlines()[2:]]
    assert [name for name, _ in rows] == ["Inception 3a", "Inception 3a, paper", "ConvBNReLU 1x1",
                                          "Bottleneck + projection", "googlenet, batch 1", "resnet50, batch 1"]
    for name, (ours, theirs, ratio, raw, python) in rows:
        assert float(ours) > 0
        assert (theirs == "-") == (name in ("Inception 3a, paper", "ConvBNReLU 1x1"))
        assert (raw == "-") == name.endswith("batch 1")


def test_model_bench_quick_keeps_every_named_network(tmp_path, capsys, monkeypatch):
    """--quick with --models benches each named network (gpu_suite's models step: both targets' inference),
    in the --modes asked for, with images/s in the table and the CSV. (Without the compile provider: compiling
    alexnet_paper takes a minute on 2 cores.)"""
    import csv

    full = bench_models.providers
    monkeypatch.setattr(bench_models, "providers", lambda device: [p for p in full(device) if p.name != "compile"])
    assert bench_models.main(["--models", "lenet5,alexnet_paper", "--modes", "inference", "--quick", "--batch",
                              "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "models-cpu.csv")))
    assert {(r["case"], r["mode"]) for r in rows} == {("lenet5", "inference"), ("alexnet_paper", "inference")}
    assert {r["provider"] for r in rows} == {"ext-cpu", "eager"}
    assert all(float(r["images_per_s"]) > 0 and not r["error"] for r in rows)
    # images/s is the batch (the shape's first dimension, 1 here; alexnet_paper's channels are 3) over the median
    for r in json.loads((tmp_path / "models-cpu.json").read_text())["rows"]:
        assert r["shape"].split("x")[0] == "1"
        assert r["images_per_s"] == pytest.approx(1 / r["median_ms"] * 1e3), r["case"]
    assert "alexnet_paper" in capsys.readouterr().out
    assert bench_models.MODES == ("inference", "train-step")  # restored for the next run in this process


def test_gpu_profile_tables_a_network_on_each_backend(capsys):
    """gpu_profile.py --cases models (gpu_suite's profile step): one table per backend asked for, each with its
    wall and host times; an unknown network is refused before any case runs."""
    import gpu_profile

    assert gpu_profile.main(["--device", "cpu", "--cases", "models", "--models", "lenet5", "--batch", "1",
                             "--iters", "1", "--backends", "cpu,reference"]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if line.startswith("== ")]
    assert [h.split(":")[0] for h in heads] == ["== lenet5 inference b1, cpu", "== lenet5 inference b1, reference"]
    assert all("wall" in h and "Error" not in h for h in heads)
    with pytest.raises(ValueError, match="unknown model 'lenet6'"):
        gpu_profile.main(["--device", "cpu", "--cases", "models", "--models", "lenet6"])


def test_gpu_profile_inception_training_cases_take_the_path_they_name():
    """The profile's pair of Inception training cases (gpu_notes item 42's comparison) run what they name: stacked,
    the block's forward has 4 convolutions (its three input 1x1 layers as one); one by one, torchvision's 6. The
    module's own device list is back after each step."""
    import gpu_profile
    from torch.utils._python_dispatch import TorchDispatchMode

    from classicnets_ext import _inception

    class Convolutions(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func is torch.ops.aten.convolution.default
            return func(*args, **(kwargs or {}))

    before = _inception._STACKED_TRAINING_DEVICES
    counts = {}
    for stacked in (False, True):
        step = gpu_profile._inception_training(stacked, batch=1)("cpu")
        with Convolutions() as mode:
            step()
        counts[stacked] = mode.count
        assert _inception._STACKED_TRAINING_DEVICES == before
    assert counts == {False: 6, True: 4}


def test_ensemble_statistics_from_known_members(tmp_path, monkeypatch, capsys):
    """bench_ensemble's counts on three made-up members of 4 images, each wrong on another one: every
    2-member softmax mean fixes both members' misses (0.9 against 0.4), so it beats its best member; image
    0 no member misses, images 1-3 one member each."""
    import json

    def member(args, seed):
        probs = torch.tensor([[0.9, 0.1]] * 4)
        probs[3 - seed] = torch.tensor([0.4, 0.6])  # seed 0 misses image 3, seed 1 image 2, seed 2 image 1
        return probs, torch.zeros(4, dtype=torch.long), 1.0, [{"epoch": 1, "val_top1": 0.75}]

    monkeypatch.setattr(bench_ensemble, "member", member)
    assert bench_ensemble.main(["--data", "digits", "--members", "3", "--k", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_ensemble.json").read_text())
    assert result["member_hits"] == [3, 3, 3] and result["all_members_ensemble_hits"] == 4
    assert (result["subsets"], result["beats_best"], result["ties_best"], result["below_best"]) == (3, 3, 0, 0)
    assert result["mean_margin_vs_best"] == 1.0 and result["images_wrong_by"] == [1, 3, 0, 0]
    # Loss: a member's is (-3 log 0.9 - log 0.4) / 4; a pair's mean softmax gives 0.65 on the two images one of
    # them misses, 0.9 on the other two.
    member_loss = -(3 * math.log(0.9) + math.log(0.4)) / 4
    pair_loss = -(2 * math.log(0.9) + 2 * math.log(0.65)) / 4
    assert result["member_losses"] == pytest.approx([member_loss] * 3)
    assert result["beats_best_loss"] == 3
    # The losses are float32 means, each within a few ulps of its ~0.3 (3e-8 apart): their difference, ~0.04, can
    # be 1e-7 off -- past approx's default relative 1e-6 of it (an AMD EPYC's run: 5.4e-8 off).
    assert result["mean_loss_gain_vs_best"] == pytest.approx(member_loss - pair_loss, rel=0, abs=2e-7)
    assert "images wrong for k members: k=1: 3 (a majority of members: 0)" in capsys.readouterr().out


def test_gpu_compile_mode_defaults_to_max_autotune_and_takes_the_suites(monkeypatch):
    monkeypatch.delenv("CLASSICNETS_BENCH_COMPILE_MODE", raising=False)
    assert harness.gpu_compile_mode() == "max-autotune"
    monkeypatch.setenv("CLASSICNETS_BENCH_COMPILE_MODE", "default")
    assert harness.gpu_compile_mode() == "default"
    monkeypatch.setenv("CLASSICNETS_BENCH_COMPILE_MODE", "fastest")
    with pytest.raises(SystemExit, match="CLASSICNETS_BENCH_COMPILE_MODE='fastest'"):
        harness.gpu_compile_mode()


def test_gpu_suite_stops_at_once_without_a_prebuilt_extension_of_these_sources(tmp_path):
    """Building on the GPU machine took the whole suite's time (every later step skipped): without a prebuilt
    extension whose digest matches the sources (none for this Python here) the suite stops within seconds,
    saying what to do, unless REBUILD=1."""
    import subprocess

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("REBUILD", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    suffix = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"],
                            capture_output=True, text=True).stdout.strip()
    sources = os.path.join(root, "classicnets_ext", f"_C{suffix}.sources")
    if os.path.exists(sources):
        pytest.skip(f"{sources} exists: the suite would go on to run")
    out = subprocess.run(["bash", os.path.join(root, "bench", "gpu_suite.sh")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    summary = (tmp_path / "summary.txt").read_text()
    assert "make gpu-prebuilt" in summary and "REBUILD=1" in summary
    assert "rc=" not in summary  # no step ran, the build's included


def test_gpu_suite_plan_puts_the_tests_and_the_models_first(tmp_path):
    """PLAN=1 runs nothing and gives each step the limit it would have if every earlier step ran to its own.
    Lease 4's tests step was cut at ~119 s (every bench kept 45 s) with the files it most needed collected last,
    and its models step never reached googlenet_paper. Now: the tests, their files in order of need; then the
    models and their profile; the op benches (measured on lease 4) in what is left; no step starved."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PLAN": "1"}
    for name in ("STEPS", "TESTS", "SUITE_S", "REBUILD"):
        env.pop(name, None)
    out = subprocess.run(["bash", os.path.join(root, "bench", "gpu_suite.sh")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line.split() for line in (tmp_path / "summary.txt").read_text().splitlines() if " rc=plan " in line]
    limits = {row[0]: int(row[2].rstrip("s")) for row in rows}
    foreground = [row[0] for row in rows if row[0] not in ("memcheck", "racecheck", "crash-probe")]
    assert foreground == ["build", "tests", "bench-models", "profile", "bench-pool_lrn", "bench-maxpool", "bench-lrn",
                          "bench-inception", "host"]
    assert limits["tests"] >= 170 and limits["bench-models"] >= 70 and limits["profile"] >= 50
    assert min(limits.values()) >= 20  # none skipped for lack of time
    # the foreground steps end inside the suite's 440 s (the build's prebuilt check: 10 s)
    assert 10 + sum(limits[name] for name in foreground[1:]) <= 440
    import tarfile

    with tarfile.open(tmp_path / "gpu_suite.tar.gz") as tar:  # the tests step's log: its command line
        log = tar.extractfile("gpu_suite/tests.log").read().decode()
    files = [word for word in log.split() if word.startswith("tests/test_")]
    assert files[:3] == ["tests/test_startup.py", "tests/test_maxpool.py", "tests/test_pool_lrn.py"]
    assert "tests/test_cuda_emu.py" not in files and len(files) == len(set(files)) > 20


def test_threads_flag_sets_the_thread_count_the_results_record(capsys):
    """--threads (harness.add_threads_argument) reaches torch before anything is timed, and the header says so."""
    import bench_host

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert bench_host.main(["--calls", "2", "--repeats", "1", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert ", 1 threads;" in capsys.readouterr().out.splitlines()[0]
    finally:
        torch.set_num_threads(before)


def test_cpu_calls_are_timed_after_a_flush_past_the_last_level_cache(monkeypatch):
    """A fixed 64 MB flush left a 9 MB input warm on a machine with a 480 MB L3: ours ran 1.4-1.7x faster than
    from DRAM, their ratios to eager that much higher. The flush is twice the largest cache sysfs reports."""
    llc = timing.last_level_cache_bytes()
    flush = timing.cpu_flush_bytes()
    assert flush >= 64 << 20 and (llc is None or flush >= min(2 * llc, 2 << 30))
    monkeypatch.setattr(timing, "last_level_cache_bytes", lambda: 480 << 20)
    assert timing.cpu_flush_bytes() == 960 << 20
    assert results.metadata("cpu")["cpu_flush_bytes"] == 960 << 20


def test_pool_lrn_separate_baseline_is_our_best_unfused_pair(monkeypatch):
    """ext-separate ran torch.relu on the whole input before pooling: a pass the unfused pair need not make
    (ReLU commutes with max), which inflated the fused op's gain. It pools first, as max_pool2d_lrn's unfused
    path does, and matches the composite."""
    seen = []
    relu = torch.relu
    monkeypatch.setattr(torch, "relu", lambda t: (seen.append(tuple(t.shape)), relu(t))[1])
    x = torch.randn(1, 8, 9, 9)
    got = bench_pool_lrn.separate(x, 3, 2, 0, False, 5, 1e-4, 0.75, 2.0, relu=True)
    assert seen == [(1, 8, 4, 4)]
    torch.testing.assert_close(got, F.local_response_norm(F.max_pool2d(relu(x), 3, 2), 5, 1e-4, 0.75, 2.0))


def test_our_provider_fails_the_run_when_our_kernels_cannot_run(monkeypatch, tmp_path, capsys):
    """A _C that failed to load left only eager and compile: the table compared torch with torch, and the run
    passed. Our provider is kept, and its row says why it did not run."""
    monkeypatch.setattr(classicnets_ext, "available_backends", lambda: ["reference"])
    module = _op_module("toy2", lambda x: 2 * x, lambda device: harness.ours(device, lambda x: x + x, "lrn") + [
        harness.Provider("eager", lambda: lambda x: 2 * x)])
    assert harness.run_op(module, "cpu", quick=True, out_dir=tmp_path) is False
    rows = {r["provider"]: r for r in json.loads((tmp_path / "toy2-cpu.json").read_text())["rows"]}
    assert rows["ext-cpu"]["error"].startswith("RuntimeError: not run: our cpu kernels")


def test_a_hung_test_leaves_its_stack_and_the_run_goes_on(tmp_path):
    """tests/_watchdog.py, as gpu_suite.sh's tests step runs it (two xdist workers): a test that hangs past
    CNX_TEST_TIMEOUT is dumped and reported as crashed, a failure's traceback is in CNX_FAILURE_LOG as it
    happens, and the other tests still pass."""
    import time

    pytest.importorskip("xdist")  # (without it a hung test ends the whole run: still with its stack)

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {tests_dir!r})\n"
        "from _watchdog import pytest_configure, pytest_runtest_logreport, pytest_runtest_protocol\n")
    (tmp_path / "test_w.py").write_text(
        "import time\n"
        "def test_hangs():\n    time.sleep(120)\n"
        "def test_fails():\n    assert 1 + 1 == 3, 'arithmetic'\n"
        "def test_passes():\n    pass\n")
    log = tmp_path / "failures.log"
    env = dict(os.environ, CNX_TEST_TIMEOUT="3", CNX_FAILURE_LOG=str(log))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert time.perf_counter() - t < 100, out.stdout  # not the 120 s sleep
    assert "1 passed" in out.stdout and "2 failed" in out.stdout, out.stdout + out.stderr
    text = log.read_text()
    assert "==== FAILED test_w.py::test_fails (call)" in text and "arithmetic" in text
    assert "==== FAILED test_w.py::test_hangs" in text and "crashed" in text
    assert 'line 3 in test_hangs' in text  # the watchdog's dump of the hung frame
    for value, usable in (("inf", True), ("0", True), ("nan", False), ("1e12", False), ("soon", False)):
        out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-k", "passes",
                              str(tmp_path)], env=dict(env, CNX_TEST_TIMEOUT=value), cwd=tmp_path,
                             capture_output=True, text=True, timeout=110)
        assert (out.returncode == 0) == usable and "INTERNALERROR" not in out.stdout + out.stderr, (value, out.stderr)
        assert usable or "CNX_TEST_TIMEOUT" in out.stderr


def test_summary_gives_the_20_50_80_quantiles_and_the_count():
    """Worked by hand: numpy's linear quantiles of 1..5 sit at positions 0.8, 2 and 3.2 (0-based), so q20 = 1.8,
    the median 3 and q80 = 4.2 -- q20 below the median, q80 above it."""
    got = timing.summary([5.0, 1.0, 4.0, 2.0, 3.0])
    assert got == pytest.approx({"q20_ms": 1.8, "median_ms": 3.0, "q80_ms": 4.2, "reps": 5})
    assert got["q20_ms"] < got["median_ms"] < got["q80_ms"]


def _virtual_clock(monkeypatch, step: float = 0.0) -> list[float]:
    """timing's perf_counter on a clock that only the test advances (and by ``step`` per reading)."""
    clock = [0.0]

    def perf_counter():
        clock[0] += step
        return clock[0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=perf_counter))
    return clock


def test_copy_bandwidth_counts_the_read_and_the_write(monkeypatch):
    """copy_bandwidth times dst.copy_(src) on a virtual clock on which each timed call takes 100 ms: the CPU's
    copy is 128 MiB (no LLC readable: the 64 MiB floor of the flush, under the 128 MiB floor of the copy), read
    and written, so 2 * 2**27 B / 0.1 s = 2.68 GB/s -- half that if only one direction were counted."""
    monkeypatch.setattr(timing, "last_level_cache_bytes", lambda: None)
    monkeypatch.delitem(timing._copy_gbps, ("cpu", torch.float32), raising=False)
    _virtual_clock(monkeypatch, step=0.1)  # each reading 0.1 s after the last: every timed call takes 100 ms
    gbps = timing.copy_bandwidth("cpu", torch.float32)
    assert gbps == pytest.approx(2 * (128 << 20) / 0.1 / 1e9)
    assert timing._copy_gbps["cpu", torch.float32] == gbps  # measured once


def test_cpu_flush_is_sized_from_the_largest_cache_sysfs_lists(monkeypatch, tmp_path):
    """last_level_cache_bytes reads every cpu0/cache/index*/size (here a fake sysfs: 48K L1d, 48K L1i, 2048K L2,
    491520K L3, and an entry that is no cache); the flush is twice the largest, 960 MiB -- the smallest would
    leave a 64 MiB flush, the 9 MB input of the docstring above warm in a 480 MB L3."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    for index, size in (("index0", "48K"), ("index1", "48K"), ("index2", "2048K"), ("index3", "491520K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    (tmp_path / "uevent").write_text("")

    def fake(path):
        path = os.fspath(path)
        assert path.startswith(root), path
        return str(tmp_path) + path[len(root):]
    real_open = open
    monkeypatch.setattr(timing, "os", types.SimpleNamespace(listdir=lambda path: os.listdir(fake(path)), path=os.path))
    monkeypatch.setattr(timing, "open", lambda path, *a, **k: real_open(fake(path), *a, **k), raising=False)
    assert timing.last_level_cache_bytes() == 491520 << 10
    assert timing.cpu_flush_bytes() == 960 << 20


def test_cpu_warm_up_runs_each_provider_for_its_warm_up_time_before_the_first_timed_round(monkeypatch):
    """On a virtual clock a call takes 1/64 s: CPU_WARMUP_S (0.05 s) of warm-up is 4 calls per provider (3 take
    0.047 s), all before the first flush of the timed rounds -- not a single call."""
    clock = _virtual_clock(monkeypatch)
    log = []
    monkeypatch.setattr(timing, "_flush_cache", lambda device: log.append("flush"))

    def call(name):
        def fn():
            log.append(name)
            clock[0] += 1 / 64
        return fn

    runs = {name: (call(name), contextlib.nullcontext) for name in ("a", "b")}
    times, _ = timing.time_providers(runs, "cpu", quick=True)
    warmup = log[:log.index("flush")]
    expected = math.ceil(timing.CPU_WARMUP_S * 64)
    assert expected == 4
    assert warmup == ["a"] * expected + ["b"] * expected
    assert all(t == pytest.approx(1000 / 64) for t in times["a"] + times["b"])


def test_a_case_whose_inputs_cannot_be_made_fails_the_run(tmp_path, capsys):
    """make_inputs raising leaves every provider SKIPPED (nothing was run, nothing checked): the run must not
    pass -- a skipped case is no evidence that ours is correct."""
    module = _toy_module()
    module.DTYPES = {"cpu": (torch.float32,)}
    module.MODES = ("forward",)
    make_case = module.case

    def broken(*args):
        def make_inputs(device):
            raise RuntimeError("no inputs today")
        return dataclasses.replace(make_case(*args), make_inputs=make_inputs)
    module.case = broken
    assert harness.run_op(module, "cpu", quick=True, out_dir=tmp_path) is False
    rows = json.loads((tmp_path / "toy-cpu.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["error"].startswith(harness.SKIPPED) for r in rows)
    assert all("no inputs today" in r["error"] for r in rows)
    assert "2 skipped" in capsys.readouterr().out


def test_quick_cases_take_the_first_batch_of_several(monkeypatch):
    """The models' CUDA batches are (64, 1, 256): --quick benches 64 (the first, the headline batch), the full
    run all three in that order. Case-building only: no GPU needed."""
    monkeypatch.setattr(bench_models, "NETS", [])
    bench_models.set_models(["lenet5", "alexnet_paper"], "cuda")
    assert bench_models.DEFAULT_BATCH["cuda"] == (64, 1, 256)
    quick = harness.cases(bench_models, "cuda", quick=True)
    assert quick and {c.shape[0] for c in quick} == {64}
    assert {c.label for c in quick} == {"lenet5"}
    full = harness.cases(bench_models, "cuda", dtypes=(torch.float16,))
    assert [c.shape[0] for c in full if c.mode == "inference" and c.label == "lenet5"] == [64, 1, 256]
    assert harness.cases(bench_models, "cuda", quick=True, batch=7)[0].shape[0] == 7


def test_run_dtypes_flag_reaches_the_op_benches(monkeypatch, tmp_path):
    """run.py --dtypes bfloat16: the op module run_op gets benches bfloat16 alone on that device."""
    seen = []
    monkeypatch.setattr(bench_lrn, "DTYPES", dict(bench_lrn.DTYPES))  # run.main rebinds it: restored after
    monkeypatch.setattr(harness, "stop_on_sigterm", lambda: None)
    monkeypatch.setattr(harness, "run_op", lambda module, device, *a, **k: (seen.append(
        (module.OP, device, module.DTYPES[device])), True)[1])
    assert run.main(["--ops", "lrn", "--device", "cpu", "--dtypes", "bfloat16", "--out", str(tmp_path)]) == 0
    assert seen == [("lrn", "cpu", (torch.bfloat16,))]
    assert [c.dtype for c in harness.cases(bench_lrn, "cpu")] and \
        {c.dtype for c in harness.cases(bench_lrn, "cpu")} == {torch.bfloat16}

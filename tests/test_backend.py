"""Backend selection: names, errors, the "auto" rule, and the environment variable."""
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

import classicnets_ext
from classicnets_ext import _backend


def test_default_is_auto_and_set_get_roundtrip():
    assert classicnets_ext.get_backend() == "auto"
    classicnets_ext.set_backend("reference")
    try:
        assert classicnets_ext.get_backend() == "reference"
    finally:
        classicnets_ext.set_backend("auto")


def test_use_backend_restores_on_exit_and_on_error():
    with pytest.raises(KeyError):
        with classicnets_ext.use_backend("reference"):
            assert classicnets_ext.get_backend() == "reference"
            raise KeyError
    assert classicnets_ext.get_backend() == "auto"


def test_use_backend_is_per_thread_and_set_backend_process_wide():
    """Two threads in use_backend blocks that overlap and exit out of order: each sees only its own block, and
    the default is "auto" again after both (the blocks set a process-wide global: one thread's block changed
    the other's ops, and the out-of-order exits left "reference" behind)."""
    import threading

    entered, seen = threading.Barrier(2), {}

    def worker(name, exit_first):
        with classicnets_ext.use_backend(name):
            entered.wait()
            if not exit_first:
                entered.wait()  # the other thread has left its block
            seen[name] = classicnets_ext.get_backend(), _backend.resolve("lrn", torch.zeros(1, 2, 1, 1))
        if exit_first:
            entered.wait()

    threads = [threading.Thread(target=worker, args=("reference", True)),
               threading.Thread(target=worker, args=("cpu", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"reference": ("reference", "reference"), "cpu": ("cpu", "cpu")}
    assert classicnets_ext.get_backend() == "auto"
    # set_backend is process-wide, and inside a block also sets the block's backend
    done = []
    with classicnets_ext.use_backend("reference"):
        classicnets_ext.set_backend("cpu")
        try:
            assert classicnets_ext.get_backend() == "cpu"
            t = threading.Thread(target=lambda: done.append(classicnets_ext.get_backend()))
            t.start()
            t.join()
            assert done == ["cpu"]
        finally:
            classicnets_ext.set_backend("auto")
    assert classicnets_ext.get_backend() == "auto"


def test_compile_follows_use_backend():
    """torch.compile guards on the thread's block: the same compiled function records the reference composite
    inside use_backend("reference") and our op outside it, compiling once for each (a thread-local default
    that torch.compile did not guard on kept the first graph in every block)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm

    f = torch.compile(lambda x: classicnets_ext.ops.local_response_norm(x, 3), backend=record, fullgraph=True)
    x = torch.randn(1, 4, 2, 2)
    f(x)
    with classicnets_ext.use_backend("reference"):
        f(x)
    f(x)
    assert len(graphs) == 2
    assert "classicnets_ext.lrn.default" in graphs[0] and not any("classicnets_ext" in t for t in graphs[1])


def test_blocks_that_end_out_of_order_on_one_thread_leave_nothing_behind():
    """Two asyncio tasks on one thread, each awaiting inside its own block, end them out of order: the blocks
    are the thread's (as torch.autocast's state is), and once both have ended no backend of theirs is left --
    not even one that shows only while another thread has a block open (the first task's used to)."""
    import asyncio
    import threading

    async def task(name, delay_in, delay_out):
        with classicnets_ext.use_backend(name):
            await asyncio.sleep(delay_in)
            await asyncio.sleep(delay_out)

    async def both():
        await asyncio.gather(task("reference", 0.0, 0.01), task("cpu", 0.02, 0.0))

    asyncio.run(both())
    assert classicnets_ext.get_backend() == "auto"
    entered, leave = threading.Event(), threading.Event()

    def other():
        with classicnets_ext.use_backend("cpu"):
            entered.set()
            leave.wait()

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait()
    try:
        assert classicnets_ext.get_backend() == "auto"
    finally:
        leave.set()
        thread.join()
    with classicnets_ext.use_backend("reference"):  # and nested blocks still restore in order
        with classicnets_ext.use_backend("cpu"):
            assert classicnets_ext.get_backend() == "cpu"
        assert classicnets_ext.get_backend() == "reference"


def test_other_threads_blocks_do_not_recompile_this_threads_functions():
    """Blocks opened in other threads leave this thread's backend alone, so a compiled function must not
    recompile for them: it used to guard on the process-wide count of open blocks, recompile at every new
    count and, past Dynamo's recompile limit, fail (fullgraph=True) or fall back to eager."""
    import threading

    graphs = []
    f = torch.compile(lambda x: classicnets_ext.ops.local_response_norm(x, 3), fullgraph=True,
                      backend=lambda gm, example_inputs: graphs.append(gm) or gm)
    x = torch.randn(1, 4, 2, 2)
    f(x)
    release, threads = threading.Event(), []
    try:
        for _ in range(10):  # one more thread parked in a block each time: 10 distinct counts
            entered = threading.Event()

            def park():
                with classicnets_ext.use_backend("cpu"):
                    entered.set()
                    release.wait()

            threads.append(threading.Thread(target=park))
            threads[-1].start()
            entered.wait()
            f(x)
    finally:
        release.set()
        for t in threads:
            t.join()
    assert len(graphs) == 1


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        classicnets_ext.set_backend("tpu")
    assert classicnets_ext.get_backend() == "auto"


def test_available_backends_lists_what_runs_here():
    available = classicnets_ext.available_backends()
    assert {"auto", "reference"} <= set(available)
    assert set(available) <= set(classicnets_ext.BACKENDS)
    assert ("cuda" in available) == (torch.cuda.is_available() and classicnets_ext._extension.build_info().get("cuda", False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_unavailable_backend_is_a_clear_error():
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        classicnets_ext.set_backend("cuda")


def test_auto_sends_cpu_tensors_to_the_cpp_kernel():
    x = torch.randn(1, 4, 2, 2)
    expected = "cpu" if classicnets_ext._extension.available() else "reference"
    assert _backend.resolve("lrn", x) == expected


class _CudaLike:
    """A CPU tensor that says it is on CUDA: resolve() reads the device (is_cpu / is_cuda under "auto") and,
    for a rule per layout, strides."""
    device = torch.device("cuda")
    is_cpu, is_cuda = False, True

    def __init__(self, tensor):
        self._tensor = tensor

    def __getattr__(self, name):
        return getattr(self._tensor, name)


def test_auto_cuda_rule_follows_the_gpu_bench():
    """The rule written from the GPU benches (bench/gpu_notes.md, leases 3 and 4): LRN and max-pool on CUDA C++
    in every layout; the fused pool -> LRN as its two ops, with a gradient recorded or not. A rule may still
    name one backend for a call that records a gradient and another for one that does not."""
    x = torch.randn(2, 8, 5, 5)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert _backend.auto_cuda_choice("lrn", x) == _backend.auto_cuda_choice("lrn", cl) == "cuda"
    assert _backend.auto_cuda_choice("max_pool2d", cl) == _backend.auto_cuda_choice("max_pool2d", x) == "cuda"
    assert _backend.auto_cuda_choice("max_pool2d_lrn", x) == "separate"
    assert _backend.resolve("max_pool2d_lrn", _CudaLike(x)) == "separate"
    w = x.clone().requires_grad_()
    assert _backend.auto_cuda_choice("max_pool2d_lrn", w) == "separate"
    rule = {"training": "cuda", "inference": "separate"}
    with mock.patch.dict(_backend.AUTO_CUDA, {"max_pool2d_lrn": rule}):
        assert _backend.auto_cuda_choice("max_pool2d_lrn", w) == "cuda"
        assert _backend.auto_cuda_choice("max_pool2d_lrn", x) == "separate"  # nothing requires grad
        with torch.no_grad():  # no gradient recorded
            assert _backend.auto_cuda_choice("max_pool2d_lrn", w) == "separate"
    # The measured choice where it runs; an unavailable one falls back to the other GPU backend (here, without
    # a GPU: triton, interpreted), else to the reference.
    cuda_runs = _backend._why_unavailable("cuda") is None
    triton_runs = _backend._why_unavailable("triton") is None
    for op, tensor in (("lrn", x), ("lrn", cl), ("max_pool2d", x)):
        if cuda_runs and triton_runs:
            want = _backend.auto_cuda_choice(op, tensor)
        else:
            want = "cuda" if cuda_runs else "triton" if triton_runs else "reference"
        assert _backend.resolve(op, _CudaLike(tensor)) == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_explicit_backend_never_moves_data_between_cpu_and_cuda():
    x = torch.randn(1, 4, 2, 2, device="cuda")
    with classicnets_ext.use_backend("cpu"), pytest.raises(RuntimeError, match="cannot run lrn on a cuda tensor"):
        classicnets_ext.ops.local_response_norm(x, 3)
    with classicnets_ext.use_backend("cuda"), pytest.raises(RuntimeError, match="cannot run lrn on a cpu tensor"):
        classicnets_ext.ops.local_response_norm(x.cpu(), 3)


def _python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("CLASSICNETS_BACKEND", "TRITON_INTERPRET")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)


def test_environment_variable_sets_the_initial_backend():
    # Case-insensitive, as set_backend is (test_backend_names_are_case_insensitive).
    out = _python("import classicnets_ext; print(classicnets_ext.get_backend())", CLASSICNETS_BACKEND=" Reference")
    assert out.returncode == 0 and out.stdout.strip() == "reference", out.stderr


def test_bad_environment_variable_warns_and_falls_back_to_auto():
    """An unknown name, or one that cannot run here, must not stop `import classicnets_ext` (nor `info`, which
    says what can run): a warning naming the variable, and "auto"."""
    out = _python("import classicnets_ext; print(classicnets_ext.get_backend())", CLASSICNETS_BACKEND="fastest")
    assert out.returncode == 0 and out.stdout.strip() == "auto", out.stderr
    assert "CLASSICNETS_BACKEND='fastest'" in out.stderr and "unknown backend 'fastest'" in out.stderr, out.stderr
    # No GPU visible (CUDA_VISIBLE_DEVICES hides any): 'cuda' cannot run; info still works and says why.
    full_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full_env.update(CLASSICNETS_BACKEND="cuda", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-m", "classicnets_ext", "info"], env=full_env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CLASSICNETS_BACKEND='cuda'" in out.stderr and "backend 'cuda' is not available" in out.stderr, out.stderr
    assert "(current: auto)" in out.stdout, out.stdout


@pytest.mark.skipif(not classicnets_ext._extension.build_info(), reason="_C is not built")
@pytest.mark.parametrize("value", ["default", "avx2", "AVX2", "Default", "avx-2"])
def test_cpu_capability_variable_is_read_as_torch_reads_it(value):
    """Our kernels must run the instruction set torch's do (the bench compares them, and they share caches):
    ATen takes the variable's lowercase names only and ignores anything else; "AVX2" once lowered ours while
    torch stayed on its best."""
    code = ("import torch, classicnets_ext; from classicnets_ext import _extension\n"
            "print(torch.backends.cpu.get_cpu_capability().lower(), _extension.build_info()['cpu_capability'])")
    out = _python(code, ATEN_CPU_CAPABILITY=value)
    assert out.returncode == 0, out.stderr
    theirs, ours = out.stdout.split()
    assert ours == theirs, out.stdout


def test_info_into_a_closed_pipe_is_quiet():
    """`info | head` style: the reader is gone before info writes; no BrokenPipeError traceback."""
    out = subprocess.run(f"{sys.executable} -m classicnets_ext info | true", shell=True, capture_output=True,
                         text=True, timeout=300)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


def test_info_rejects_unknown_arguments():
    out = subprocess.run([sys.executable, "-m", "classicnets_ext", "info", "--bogus"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "unrecognized arguments: --bogus" in out.stderr, out.stderr


def test_backend_names_are_case_insensitive():
    with classicnets_ext.use_backend("REFERENCE"):
        assert classicnets_ext.get_backend() == "reference"
    if "cpu" in classicnets_ext.available_backends():
        with classicnets_ext.use_backend("CPU"):
            assert classicnets_ext.get_backend() == "cpu"
    with pytest.raises(ValueError, match="unknown backend 'cpus'"):
        classicnets_ext.set_backend("cpus")


def test_auto_on_cuda_tensors_asks_what_cannot_change_once(monkeypatch):
    """"auto" resolves every op call; whether _C has CUDA and whether a GPU is visible do not change in a
    process, so they are asked once (they were asked on every call)."""
    calls = {"build_info": 0, "is_available": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(_backend._extension, "build_info", counted("build_info", _backend._extension.build_info))
    monkeypatch.setattr(torch.cuda, "is_available", counted("is_available", torch.cuda.is_available))
    monkeypatch.setattr(_backend, "_UNAVAILABLE", {})  # as in a fresh process
    cuda_tensor = _CudaLike(torch.empty(1, 4, 2, 2))
    first = _backend.resolve("lrn", cuda_tensor)
    for op in ("lrn", "max_pool2d", "max_pool2d_lrn", "inception") * 50:
        assert _backend.resolve(op, cuda_tensor) in ("cuda", "triton", "reference", "separate")
    assert _backend.resolve("lrn", cuda_tensor) == first
    assert calls["build_info"] <= 1 and calls["is_available"] <= 2, calls  # (asked for 'cuda' and 'triton')


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only rule")
def test_triton_on_cpu_needs_the_interpreter():
    code = ("import classicnets_ext, torch\n"
            "assert 'triton' not in classicnets_ext.available_backends()\n"
            "try:\n    classicnets_ext.set_backend('triton')\nexcept RuntimeError as e:\n    print(e)\n")
    out = _python(code)
    assert out.returncode == 0 and "TRITON_INTERPRET=1" in out.stdout, out.stderr
    out = _python("import classicnets_ext; print('triton' in classicnets_ext.available_backends())",
                  TRITON_INTERPRET="1")
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("module", ["max_pool2d", "max_pool2d_lrn", "inception"])
def test_checkpoint_context_recomputes_on_the_forwards_backend(module):
    """A checkpointed forward inside ``use_backend("reference")``, its backward after the block: the recompute
    ran on "auto" (our kernels, which save other tensors) and checkpoint raised a CheckpointError. With
    ``context_fn=checkpoint_context`` the gradients are bitwise those of the same forward not checkpointed."""
    from torch.utils.checkpoint import CheckpointError, checkpoint

    torch.manual_seed(0)
    layer = {"max_pool2d": lambda: classicnets_ext.nn.MaxPool2d(3, 2),
             "max_pool2d_lrn": lambda: classicnets_ext.nn.MaxPoolLRN(3, 2, size=3, relu=True),
             "inception": lambda: classicnets_ext.nn.Inception(16, 4, 4, 4, 2, 2, 2).eval()}[module]()
    x = torch.randn(2, 16, 15, 15)

    def grads(run):
        xr = x.clone().requires_grad_()
        with classicnets_ext.use_backend("reference"):
            y = run(xr)
        return torch.autograd.grad(y.square().sum(), [xr, *layer.parameters()])  # after the block

    want = grads(layer)
    got = grads(lambda t: checkpoint(layer, t, use_reentrant=False, context_fn=classicnets_ext.checkpoint_context))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    with pytest.raises(CheckpointError):  # what the context is for
        grads(lambda t: checkpoint(layer, t, use_reentrant=False))

"""Which raw-op argument errors crash the process on the GPU machine, and where (issue 14).

On the H200 (torch 2.11, Python 3.12) a C++ argument check that raises on the CUDA path killed the process
with SIGSEGV in two leases: a ValueError from LRN's, max-pool's and Inception's checks, while TypeErrors
raised by the same check functions just before came back cleanly. Lease 3 saw the same on CPU tensors: every
C++ ValueError of the extension that machine's /opt/gcc/bin/g++ built, while the C++ TypeError of the same
check function (int64 input) came back -- so not the device. The same source built on a CPU machine with
gcc 12 against the same torch and Python raises them all cleanly, and nothing reproduces in the CUDA
emulator. This probe runs each bad call in a process of its own and prints one line per call -- ok (the
right exception), or the signal that ended it -- then, at the first crash, the C++ stack under cuda-gdb
(`--gdb`; the GPU machine has no plain gdb). Its first lines name the compiler that built _C and the C++
runtimes the process maps.

    python3 bench/gpu_crash_probe.py [--gdb]      # a table on stdout; exit status 0 even when calls crash
"""
import argparse
import os
import shutil
import subprocess
import sys

# name -> (statement, exception); `x` is a float32 (2, 4, 6, 6) tensor on the device.
CASES = {
    "lrn-int-type": ("ops.lrn(x.long(), 3)", "TypeError"),
    "lrn-2d-view-value": ("ops.lrn(x[0, 0], 3)", "ValueError"),
    "lrn-2d-copy-value": ("ops.lrn(x[0, 0].clone(), 3)", "ValueError"),
    "lrn-size-value": ("ops.lrn(x, 0)", "ValueError"),
    "lrn-backward-shape-value": ("ops.lrn_backward(x[:1].clone(), x, 3, 1e-4, 0.75, 1.0)", "ValueError"),
    "maxpool-2d-value": ("ops.max_pool2d(x[0, 0], [3, 3], [2, 2], [0, 0], [1, 1], False, False)",
                         "ValueError"),
    "maxpool-int-type": ("ops.max_pool2d(x.long(), [3, 3], [2, 2], [0, 0], [1, 1], False, False)",
                         "TypeError"),
    "lrn-below-autograd-value": ("torch.ops.classicnets_ext.lrn.default.redispatch("
                                 "torch._C.DispatchKeySet(torch._C.DispatchKey.{k}), x[0, 0], 3, 1e-4, 0.75, 1.0)",
                                 "ValueError"),
}

CHILD = r"""
import faulthandler, sys, torch
faulthandler.enable()
import classicnets_ext
ops = torch.ops.classicnets_ext
x = torch.randn(2, 4, 6, 6, device="{d}")
try:
    {stmt}
except {exc} as e:
    print("raised", type(e).__name__)
    sys.exit(0)
except Exception as e:
    print("wrong exception", type(e).__name__, str(e)[:200])
    sys.exit(3)
print("no exception")
sys.exit(4)
"""


def child_source(device: str, name: str) -> str:
    stmt, exc = CASES[name]
    key = "CUDA" if device == "cuda" else "CPU"
    return CHILD.format(d=device, stmt=stmt.format(d=device, k=key), exc=exc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gdb", action="store_true", help="print the C++ stack of the first crashing call")
    args = parser.parse_args()
    import torch
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    first_crash = None
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}")
    print(runtimes())
    for device in devices:
        for name in CASES:
            src = child_source(device, name)
            out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=120)
            rc = out.returncode
            verdict = "ok" if rc == 0 else (f"killed by signal {-rc}" if rc < 0 else f"exit {rc}")
            print(f"{device:5s} {name:26s} {verdict:20s} {(out.stdout.strip().splitlines() or [''])[-1][:80]}")
            if rc < 0 and first_crash is None:
                first_crash = (device, name, src)
                crash = out.stderr.find("Fatal Python error")
                print("      " + out.stderr[crash:crash + 1500].replace("\n", "\n      ") if crash >= 0 else "")
                if args.gdb:  # at once: lease 3's probe was cut at its limit before reaching the end of the table
                    backtrace(device, name, src)
    return 0


def runtimes() -> str:
    """The compiler that built _C (its ELF .comment) and the C++ runtimes a process has mapped once _C is
    loaded. Lease 3 crashed on every C++ exception of an extension built there by /opt/gcc/bin/g++, CPU
    tensors included, while the same source built here with gcc 12 raises cleanly: two C++ runtimes in one
    process (torch's and that compiler's) is the suspect this line confirms or rules out."""
    src = ("import re, classicnets_ext._C as c\n"
           "found = re.findall(rb'GCC: \\([^)]*\\) [0-9.]+', open(c.__file__, 'rb').read())\n"
           "print('_C built by', sorted(set(found)))\n"
           "print('mapped', sorted({l.split()[-1] for l in open('/proc/self/maps') "
           "if 'libstdc++' in l or 'libgcc_s' in l}))\n")
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=120)
    return (out.stdout + out.stderr[-400:]).strip()


def backtrace(device: str, name: str, src: str) -> None:
    gdb = shutil.which("cuda-gdb") or shutil.which("gdb")
    if gdb is None:
        print("no cuda-gdb or gdb here")
        return
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "crash_case.py")
    with open(path, "w") as f:
        f.write(src)
    print(f"\n== {gdb} backtrace of {device} {name} ==")
    cmd = [gdb, "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40", "-ex", "info sharedlibrary",
           "--args", sys.executable, path]
    # 60 s: the suite's step is 120 s, and a probe killed there would take the captured stack with it.
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
    except subprocess.TimeoutExpired as slow:  # what it printed by then
        text = "".join(b.decode(errors="replace") if isinstance(b, bytes) else b
                       for b in (slow.stdout or "", slow.stderr or "")) + "\n(gdb timed out after 60 s)"
    print(text[-12000:] + "\n")


if __name__ == "__main__":
    sys.exit(main())

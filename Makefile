# Two entry points, each doing its own setup on a fresh machine with Python 3.10+ and pip:
#   make bench   -- the benchmark (the library's main job)
#   make test    -- the test suite (without the tests marked slow; `make test-all` runs them too)
#   make cuda-emu -- every CUDA C++ kernel run on the CPU by an emulator (g++ only, no GPU, no nvcc), against
#                    torch: plain, under AddressSanitizer + UBSan and under ThreadSanitizer (tests/emu/run.py)
#   make triton-compile -- every Triton kernel compiled for sm_90 as the GPU would (no GPU needed; the tests interpret them)
#   make fuzz    -- hypothesis fuzzing of the three ops and linear against torch, 2,000 examples each
#   make sanitize -- the CPU kernels under AddressSanitizer + UBSan, against the op tests' CPU cases and fuzzing
#   make sanitize-ci -- the same, built for the baseline and this CPU's instruction set only (CI: 3-6 minutes)
#   make gpu-prebuilt -- the extension for the GPU machine (its Python and torch, sm_90a), built here in place:
#                   bench/gpu_suite.sh uses it when it imports there, which saves a short lease the build
#   make dist    -- the sdist and the wheel in dist/ (python -m build --no-isolation, against the venv's torch)
# Setup: a venv in .venv, torch, then our extension built against that torch (no build isolation, which
# would build against a different torch than the one the extension must load into). CUDA sources are
# compiled whenever nvcc is found (FORCE_CUDA=1), even without a GPU.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1
# torchvision matching TORCH: a test dependency (parity with its models) and the bench baselines.
# rich: the summary/compare tables; torchinfo and ptflops: test-only, the references for the MAC counts.
TORCHVISION ?= torchvision==0.29.1
# ONNX export tests (tests/test_export.py): torch.onnx's dynamo exporter needs onnxscript (and onnx); onnxruntime
# runs the exported files. Versions that work with TORCH; also the runtime extra "export" (setup.py).
ONNX_DEPS ?= onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0
PY := $(VENV)/bin/python
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
FORCE_CUDA ?= $(if $(NVCC),1,0)
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# make test / test-all run the tests in TEST_WORKERS pytest-xdist processes, a test file per process at a time
# (--dist loadfile: a file's tests share module fixtures and caches). The suite is mostly single-threaded Python
# (the Triton interpreter, small shapes), so on CI's 2 cores two workers take it from 14 to 7.5 minutes. A venv
# made before xdist was in the list below runs them in one process.
TEST_WORKERS ?= $(MAX_JOBS)
PYTEST_PARALLEL = $$($(PY) -c "import xdist" 2>/dev/null && echo "-n $(TEST_WORKERS) --dist loadfile")

.PHONY: install test test-all bench info clean cuda-emu fuzz sanitize sanitize-ci dist triton-compile gpu-prebuilt

# Written once the last pip install has succeeded: a setup cut off halfway (a failed download, Ctrl-C) runs
# again next time, where the venv's python, made first, would pass for a finished one.
DEPS := $(VENV)/.deps-installed

$(DEPS):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel ninja
	$(PY) -m pip install "$(TORCH)" "$(TORCHVISION)" pytest pytest-xdist hypothesis numpy matplotlib tqdm rich torchinfo ptflops \
		mlxtend scikit-learn build $(ONNX_DEPS)
	touch $@

install: $(DEPS)
	PATH="$(dir $(NVCC)):$$PATH" FORCE_CUDA=$(FORCE_CUDA) MAX_JOBS=$(MAX_JOBS) \
		$(PY) -m pip install --no-build-isolation -v -e . > $(VENV)/build.log 2>&1 \
		|| { tail -n 60 $(VENV)/build.log; exit 1; }
	$(PY) -m classicnets_ext info

test: install
	$(PY) -m pytest tests -ra -q -m "not slow" $(PYTEST_PARALLEL)

test-all: install
	$(PY) -m pytest tests -ra -q $(PYTEST_PARALLEL)

# The Triton kernels compiled for an sm_90 target through a stand-in driver (tests/triton_compile.py): catches what
# only triton's compiler sees, which the interpreted tests cannot.
triton-compile: install
	$(PY) tests/triton_compile.py

# Property-based fuzzing of the three ops and linear against torch: 2,000 examples per op (the test suite runs 200).
fuzz: install
	CNX_FUZZ_EXAMPLES=2000 $(PY) -m pytest tests/test_fuzz.py -ra -q

# The CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer (build/sanitize/), the op tests'
# CPU cases and the fuzz tests run against them (tests/sanitize.py). CI runs sanitize-ci: the same tests on the
# kernels built for the baseline and this CPU's instruction set only (build/sanitize-ci/), the one it runs.
sanitize: $(DEPS)
	MAX_JOBS=$(MAX_JOBS) $(PY) tests/sanitize.py

sanitize-ci: $(DEPS)
	MAX_JOBS=$(MAX_JOBS) $(PY) tests/sanitize.py --ci

# The release artifacts: dist/classicnets_ext-VERSION.tar.gz (everything the build needs: MANIFEST.in) and a
# wheel built against the venv's torch (every CPU instruction set; CUDA when FORCE_CUDA=1).
dist: $(DEPS)
	PATH="$(dir $(NVCC)):$$PATH" FORCE_CUDA=$(FORCE_CUDA) MAX_JOBS=$(MAX_JOBS) \
		$(PY) -m build --sdist --wheel --no-isolation --outdir dist

# Needs the package installed (make install / make test): the emulated suite imports classicnets_ext.
# EMU_VARIANTS picks the variants (default: plain asan tsan); CI runs asan and tsan (see .ci/run).
EMU_VARIANTS ?=
cuda-emu: $(DEPS)
	MAX_JOBS=$(MAX_JOBS) $(PY) tests/emu/run.py $(EMU_VARIANTS)

bench: install
	$(PY) bench/run.py $(ARGS)

# The GPU machine runs Python 3.12 and torch 2.11 (+cu130) on an H200; the extension built here against the same
# pair loads there (lease 3), and the suite's build step then takes seconds instead of over five minutes.
GPU_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
GPU_TORCH ?= torch==2.11.0
GPU_VENV ?= .venv/gpu
gpu-prebuilt:
	test -x $(GPU_VENV)/bin/python || { $(GPU_PYTHON) -m venv $(GPU_VENV) && \
		$(GPU_VENV)/bin/pip install "$(GPU_TORCH)" numpy setuptools wheel ninja; }
	PATH="$(dir $(NVCC)):$$PATH" FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=$(MAX_JOBS) \
		$(GPU_VENV)/bin/python setup.py build_ext --inplace
	# without its debug sections (105 MB -> 24 MB): the device tool carries 64 MiB at most
	strip --strip-debug classicnets_ext/_C.cpython-312-*.so
	# the sources it was built from, which the suite checks before it trusts the build (bench/gpu_suite.sh)
	bash bench/gpu_sources_digest.sh > $$(ls classicnets_ext/_C.cpython-312-*.so).sources
	ls -l classicnets_ext/_C.*

info:
	$(PY) -m classicnets_ext info

clean:
	rm -rf build dist *.egg-info classicnets_ext/_C*.so

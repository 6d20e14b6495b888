# Two entry points, each doing its own setup on a fresh machine with Python 3.10+ and pip:
#   make bench   -- the benchmark (the library's main job)
#   make test    -- the test suite (without the tests marked slow; `make test-all` runs them too)
#   make cuda-emu -- every CUDA C++ kernel run on the CPU by an emulator (g++ only, no GPU, no nvcc), against
#                    torch: plain, under AddressSanitizer and under ThreadSanitizer (tests/emu/run.py)
# Setup: a venv in .venv, torch, then our extension built against that torch (no build isolation, which
# would build against a different torch than the one the extension must load into). CUDA sources are
# compiled whenever nvcc is found (FORCE_CUDA=1), even without a GPU.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1
# torchvision matching TORCH: a test dependency (parity with its models) and the bench baselines.
TORCHVISION ?= torchvision==0.29.1
PY := $(VENV)/bin/python
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
FORCE_CUDA ?= $(if $(NVCC),1,0)
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install test test-all bench info clean cuda-emu

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel ninja
	$(PY) -m pip install "$(TORCH)" "$(TORCHVISION)" pytest hypothesis numpy matplotlib tqdm \
		mlxtend scikit-learn

install: $(PY)
	PATH="$(dir $(NVCC)):$$PATH" FORCE_CUDA=$(FORCE_CUDA) MAX_JOBS=$(MAX_JOBS) \
		$(PY) -m pip install --no-build-isolation -v -e . > $(VENV)/build.log 2>&1 \
		|| { tail -n 60 $(VENV)/build.log; exit 1; }
	$(PY) -m classicnets_ext info

test: install
	$(PY) -m pytest tests -ra -q -m "not slow"

test-all: install
	$(PY) -m pytest tests -ra -q

# Needs the package installed (make install / make test): the emulated suite imports classicnets_ext.
cuda-emu: $(PY)
	MAX_JOBS=$(MAX_JOBS) $(PY) tests/emu/run.py

bench: install
	$(PY) bench/run.py $(ARGS)

info:
	$(PY) -m classicnets_ext info

clean:
	rm -rf build *.egg-info classicnets_ext/_C*.so

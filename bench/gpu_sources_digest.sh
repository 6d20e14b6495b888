#!/usr/bin/env bash
# One line: the digest of the sources the extension is built from (csrc/ and setup.py), names and contents (a
# file moved or renamed changes what the build compiles). `make gpu-prebuilt` writes it beside the extension it
# builds; bench/gpu_suite.sh compares it with the tree it runs on. csrc/emu/ is left out: the CUDA emulator
# (tests/emu/build.py) compiles it, the extension never does (cuda_compat.h includes it under CNX_CUDA_EMU).
cd "$(dirname "$0")/.." && find csrc setup.py -path csrc/emu -prune -o -type f -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum | sha256sum

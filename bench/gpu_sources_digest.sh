#!/usr/bin/env bash
# One line: the digest of the sources the extension is built from (csrc/ and setup.py). `make gpu-prebuilt`
# writes it beside the extension it builds; bench/gpu_suite.sh compares it with the tree it runs on.
cd "$(dirname "$0")/.." && find csrc setup.py -type f | LC_ALL=C sort | xargs cat | sha256sum

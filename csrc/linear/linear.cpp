// The linear op's schema. One kernel: the CPU's (linear_cpu.cpp). It exists for what MKL serves slowly on
// the CPU -- a product of a large weight with a few rows, the classifiers of AlexNet, ZFNet and VGG at
// inference batch sizes -- and ops.linear calls it only there; F.linear serves every other case and device.
#include <torch/library.h>

#include "common/macros.h"

// The backward is F.linear's (matrix products); classicnets_ext/_registrations.py registers it.
TORCH_LIBRARY_FRAGMENT(CNX_OPS, m) {
  m.def("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");
}

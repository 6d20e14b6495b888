// The linear op's schema and its backward's. One kernel each: the CPU's (linear_cpu.cpp). They exist for what
// MKL serves slowly on the CPU -- products of a large weight with a few rows, the classifiers of AlexNet, ZFNet
// and VGG at small batch sizes -- and ops.linear calls them only there; F.linear serves every other case and
// device.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <torch/library.h>

#include "common/macros.h"

// The backward's two products, for the same few rows: linear_grad_input = grad_output @ weight streams the
// weight once, linear_grad_weight = grad_output.T @ input writes the weight's gradient once (MKL's products for
// these shapes run far from either bound). Their autograd (classicnets_ext/_autograd/linear.py) calls them for a
// first-order backward and uses matrix products wherever a derivative of the backward may be asked for.
TORCH_LIBRARY_FRAGMENT(CNX_OPS, m) {
  m.def("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("linear_grad_input(Tensor grad_output, Tensor weight) -> Tensor");
  m.def("linear_grad_weight(Tensor grad_output, Tensor input) -> Tensor");
}

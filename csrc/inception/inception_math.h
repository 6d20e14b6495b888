#pragma once
// The fused GoogLeNet Inception block (Szegedy et al. 2014, Fig. 2b): the problem and the per-element math
// shared by the CPU and CUDA kernels.
//
//   out[:, 0:ch1x1)            = relu(x * W1[0:ch1x1] + b1)                     (1x1)
//   red3, red5                 = relu(x * W1[ch1x1:]   + b1)                     (the two 1x1 reductions)
//   out[:, off3:off3 + c3)     = relu(conv_k3(red3, W3) + b3)                    (3x3, pad k3/2)
//   out[:, off5:off5 + c5)     = relu(conv_k5(red5, W5) + b5)                    ("5x5": 3x3 in torchvision)
//   out[:, offp:offp + cp)     = relu(maxpool3x3/s1/p1(x) * Wp + bp)             (pool projection)
//
// Everything is channels-last, so a pixel is a row of C values and the three 1x1 convolutions that read x
// are one GEMM [N*H*W, C] x [C, ch1x1 + r3 + r5] whose columns are written to three destinations.
#include <cstdint>

#include "common/macros.h"

namespace cnx::inception {

struct Problem {
  int64_t N, C, H, W;        // input (channels-last)
  int64_t ch1x1, r3, r5;     // the 1x1 GEMM's three column ranges
  int64_t c3, c5, cp;        // the 3x3, 5x5 and pool-projection branches' widths
  int64_t k3, k5;            // the two spatial kernels (odd; padding k / 2)

  CNX_HOST_DEVICE int64_t pixels() const { return N * H * W; }
  CNX_HOST_DEVICE int64_t n1() const { return ch1x1 + r3 + r5; }
  CNX_HOST_DEVICE int64_t out_channels() const { return ch1x1 + c3 + c5 + cp; }
  CNX_HOST_DEVICE int64_t off3() const { return ch1x1; }
  CNX_HOST_DEVICE int64_t off5() const { return ch1x1 + c3; }
  CNX_HOST_DEVICE int64_t offp() const { return ch1x1 + c3 + c5; }
};

// relu(v + b) with torch's NaN rule (torch.relu keeps NaN: `v <= 0` is false for NaN).
template <typename T>
CNX_HOST_DEVICE T bias_relu(T v, T b) {
  v = v + b;
  return v <= T(0) ? T(0) : v;
}

}  // namespace cnx::inception

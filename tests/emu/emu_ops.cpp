// Test-only ops of the CUDA emulator's library (tests/emu/build.py): control of the emulated device, the
// log of launches (which kernel, grid, block and shared memory each case took), and a kernel of the
// emulator's own tests that uses what ours do not yet: static shared memory (CNX_SHARED) and 2-D blocks.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <sstream>
#include <string>
#include <vector>

#include "common/cuda_helpers.cuh"

namespace cnx::emu {
namespace {

// Sets the emulated device's SM count, threads per SM, opt-in shared memory per block, largest gridDim.y and
// the blocks that run at once (0 keeps a value); returns the previous five. Fewer SMs cap the grid sooner,
// and a lower gridDim.y limit the 2-D grids, so small shapes reach the grid-stride loops.
std::vector<int64_t> set_device(int64_t sms, int64_t threads_per_sm, int64_t smem_optin, int64_t max_grid_y,
                                int64_t concurrent_blocks) {
  DeviceProperties& p = mutable_device_properties();
  std::vector<int64_t> old{p.multiProcessorCount, p.maxThreadsPerMultiProcessor, int64_t(p.sharedMemPerBlockOptin),
                           p.maxGridSize[1], p.concurrentBlocks};
  if (sms > 0) p.multiProcessorCount = static_cast<int>(sms);
  if (threads_per_sm > 0) p.maxThreadsPerMultiProcessor = static_cast<int>(threads_per_sm);
  if (smem_optin > 0) p.sharedMemPerBlockOptin = static_cast<size_t>(smem_optin);
  if (max_grid_y > 0) p.maxGridSize[1] = static_cast<int>(max_grid_y);
  if (concurrent_blocks > 0) p.concurrentBlocks = static_cast<int>(concurrent_blocks);
  return old;
}

// The launches since the last clear, one line each: "<kernel parameter types>|grid|block|smem".
std::string launches(bool clear) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  std::ostringstream out;
  for (const LaunchRecord& r : launch_log())
    out << r.kernel << "|" << r.grid.x << "|" << r.block.x * r.block.y * r.block.z << "|" << r.smem << "\n";
  if (clear) launch_log().clear();
  return out.str();
}

// Each block of (16, 4) threads reverses its 64 elements through a static shared tile:
// y[b * 64 + i] = x[b * 64 + 63 - i].
constexpr int kTile = 64;
__global__ void reverse_tiles_kernel(const float* __restrict__ x, float* __restrict__ y) {
  CNX_SHARED(float, tile, [kTile]);
  const int i = threadIdx.y * blockDim.x + threadIdx.x;
  tile[i] = x[blockIdx.x * kTile + i];
  __syncthreads();
  y[blockIdx.x * kTile + i] = tile[kTile - 1 - i];
}

at::Tensor reverse_tiles(const at::Tensor& x) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat && x.numel() % kTile == 0);
  at::Tensor y = at::empty_like(x);
  cuda::launch(reverse_tiles_kernel, dim3(static_cast<unsigned int>(x.numel() / kTile)), dim3(16, kTile / 16), 0,
               cuda::current_stream(), x.const_data_ptr<float>(), y.mutable_data_ptr<float>());
  return y;
}

}  // namespace
}  // namespace cnx::emu

TORCH_LIBRARY_FRAGMENT(classicnets_ext_emu, m) {
  m.def("emu_set_device(int sms, int threads_per_sm, int smem_optin, int max_grid_y=0, "
        "int concurrent_blocks=0) -> int[]",
        &cnx::emu::set_device);
  m.def("emu_launches(bool clear) -> str", &cnx::emu::launches);
  m.def("emu_reverse_tiles(Tensor x) -> Tensor", &cnx::emu::reverse_tiles);
}

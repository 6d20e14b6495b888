#pragma once
// A CUDA execution emulator for our kernels, compiled by the host C++ compiler (-DCNX_CUDA_EMU; included
// through common/cuda_compat.h). It exists so that CI, which has no GPU, runs every CUDA C++ kernel against
// torch -- plain, under AddressSanitizer (memcheck) and under ThreadSanitizer (racecheck).
//
// Execution model: a launch runs its blocks two at a time (concurrentBlocks below), as co-resident blocks
// run on a GPU, so that blocks writing the same global memory without an order between them race (TSan
// reports it); each of the two runs its share of the grid's blocks one after another. Within a block every
// CUDA thread is an OS thread, all running at once, so a missing __syncthreads() is a real race (TSan reports
// it) and not a lucky ordering. __syncthreads() is a barrier among the block's threads still running the
// kernel (an exited thread no longer counts, as on the GPU). Shared memory lives one block: each block gets fresh heap
// allocations -- the dynamic buffer and one per CNX_SHARED array, so ASan catches an overrun of any of them,
// and a pointer kept from an earlier block is a use-after-free -- filled with 0xff bytes (NaN as floats), so
// a read of shared memory no thread wrote shows up as a wrong answer.
//
// The launch is checked as the GPU checks it: block size, grid size, and dynamic shared memory over 48 KB
// only after allow_dynamic_smem() opted the kernel in (up to the device's opt-in limit). The device is an
// H200-like one (132 SMs, 2048 threads per SM, 227 KB opt-in); tests may shrink it (set_device_properties)
// so that small shapes reach the grid-stride loops and the global-memory fallbacks.
//
// Not emulated (rejected at compile time, so a kernel using them cannot pass unnoticed): warp primitives and
// atomics. Math: the host's libm, and rsqrtf as 1/sqrtf (the GPU's is within 2 ulp).
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- The language: qualifiers, built-in variables, intrinsics ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory must be per block: declare it with CNX_SHARED (common/cuda_compat.h).
#define __shared__ static_assert(false, "cuda emulator: declare shared arrays with CNX_SHARED(type, name, [dims])");

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Each emulated CUDA thread is an OS thread: the built-in variables are thread-locals set by the launch.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return ::expf(x); }
inline float __logf(float x) { return ::logf(x); }
inline float __powf(float a, float b) { return ::powf(a, b); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

namespace cnx::emu {
template <typename... A>
constexpr bool kUnsupported = false;
}  // namespace cnx::emu
// Used by no kernel today; emulate them (per 32-thread warp) before a kernel may use them.
#define CNX_EMU_REJECT(name)                                                                              \
  template <typename... A>                                                                                \
  void name(A&&...) {                                                                                     \
    static_assert(::cnx::emu::kUnsupported<A...>, "cuda emulator: " #name " is not emulated (see cuda_emu.h)"); \
  }
CNX_EMU_REJECT(__shfl_sync)
CNX_EMU_REJECT(__shfl_up_sync)
CNX_EMU_REJECT(__shfl_down_sync)
CNX_EMU_REJECT(__shfl_xor_sync)
CNX_EMU_REJECT(__ballot_sync)
CNX_EMU_REJECT(__any_sync)
CNX_EMU_REJECT(__all_sync)
CNX_EMU_REJECT(__activemask)
CNX_EMU_REJECT(__syncwarp)
CNX_EMU_REJECT(atomicAdd)
CNX_EMU_REJECT(atomicMax)
CNX_EMU_REJECT(atomicCAS)
CNX_EMU_REJECT(atomicExch)
#undef CNX_EMU_REJECT

namespace cnx::emu {

// The fields of cudaDeviceProp our launchers read.
struct DeviceProperties {
  int multiProcessorCount = 132;
  int maxThreadsPerMultiProcessor = 2048;
  int maxBlocksPerMultiProcessor = 32;
  int maxGridSize[3] = {0x7fffffff, 65535, 65535};
  int maxThreadsPerBlock = 1024;
  size_t sharedMemPerBlock = 48 * 1024;
  size_t sharedMemPerBlockOptin = 227 * 1024;
  int concurrentBlocks = 2;  // the emulator's own: blocks of a launch that run at once (at least 1)
};

inline DeviceProperties& mutable_device_properties() {
  static DeviceProperties props;
  return props;
}
inline const DeviceProperties& device_properties() { return mutable_device_properties(); }

// A barrier whose party can shrink: threads that leave the kernel drop out, as exited GPU threads stop
// counting for bar.sync. Mutex + condition variable, so TSan sees the happens-before edges it creates and
// nothing else.
class Barrier {
 public:
  void reset(int parties) {
    std::lock_guard<std::mutex> lock(m_);
    parties_ = parties;
    arrived_ = 0;
  }
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const uint64_t gen = gen_;
    if (++arrived_ >= parties_) return release();
    cv_.wait(lock, [&] { return gen_ != gen; });
  }
  void drop() {
    std::lock_guard<std::mutex> lock(m_);
    --parties_;
    if (arrived_ > 0 && arrived_ >= parties_) release();
  }

 private:
  void release() {  // with m_ held
    arrived_ = 0;
    ++gen_;
    cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  int parties_ = 0, arrived_ = 0;
  uint64_t gen_ = 0;
};

struct FreeAligned {
  void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(16)); }
};
using SharedBuffer = std::unique_ptr<unsigned char[], FreeAligned>;

// A fresh 16-byte aligned allocation of exactly `bytes`, filled with 0xff (NaN as floats).
inline SharedBuffer new_shared(size_t bytes) {
  SharedBuffer p(static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t(16))));
  std::memset(p.get(), 0xff, bytes);
  return p;
}

// The running block: its barriers and its shared memory.
struct Block {
  Barrier sync;  // __syncthreads()
  Barrier done;  // every thread of the lane is done with this block before its next starts (start leaves it)
  size_t dynamic_bytes = 0;
  SharedBuffer dynamic;
  std::mutex statics_mutex;
  std::map<const void*, SharedBuffer> statics;  // CNX_SHARED arrays, by declaration site

  void start(int threads) {  // before any of its threads runs
    sync.reset(threads);
    statics.clear();
    dynamic = new_shared(dynamic_bytes);
  }
};

inline thread_local Block* current_block = nullptr;

inline Block& block() {
  TORCH_CHECK(current_block != nullptr, "cuda emulator: device code called outside a kernel launch");
  return *current_block;
}

inline unsigned char* dynamic_smem() { return block().dynamic.get(); }

template <typename T>
T& static_shared(const void* site) {
  static_assert(std::is_trivially_destructible_v<T>, "shared memory holds trivial types");
  Block& b = block();
  std::lock_guard<std::mutex> lock(b.statics_mutex);
  SharedBuffer& buffer = b.statics[site];
  if (!buffer) buffer = new_shared(sizeof(T));
  return *reinterpret_cast<T*>(buffer.get());
}

// ---- The runtime the launchers see through cnx::cuda (common/cuda_helpers.cuh) ----
struct Stream {};
inline Stream current_stream() { return {}; }
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
inline bool on_device(const at::Tensor& t) { return t.is_cpu(); }
inline c10::DeviceType device_type() { return c10::kCPU; }

// Dynamic shared memory each kernel was opted in to (cudaFuncAttributeMaxDynamicSharedMemorySize).
inline std::map<const void*, int64_t>& opt_ins() {
  static std::map<const void*, int64_t> m;
  return m;
}
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

template <typename... P>
void allow_dynamic_smem(void (*kernel)(P...), int64_t bytes) {
  TORCH_CHECK(bytes >= 0 && size_t(bytes) <= device_properties().sharedMemPerBlockOptin,
              "cuda emulator: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, ", bytes,
              ") exceeds the device's opt-in limit ", device_properties().sharedMemPerBlockOptin);
  std::lock_guard<std::mutex> lock(launch_mutex());
  opt_ins()[reinterpret_cast<const void*>(kernel)] = bytes;
}

// Every launch, for tests to check which kernel and geometry a case took.
struct LaunchRecord {
  std::string kernel;  // the kernel's parameter types
  dim3 grid, block;
  size_t smem;
};
inline std::vector<LaunchRecord>& launch_log() {
  static std::vector<LaunchRecord> log;
  return log;
}

// Runs `body` as every thread of every block of the grid (see the execution model above).
inline void run_grid(const void* kernel, const std::string& signature, dim3 grid, dim3 block, size_t smem,
                     const std::function<void()>& body) {
  const DeviceProperties& dev = device_properties();
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= dev.maxThreadsPerBlock && block.z <= 64,
              "cuda emulator: invalid block (", block.x, ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(grid.x >= 1 && grid.x <= unsigned(dev.maxGridSize[0]) && grid.y >= 1 &&
                  grid.y <= unsigned(dev.maxGridSize[1]) && grid.z >= 1 && grid.z <= unsigned(dev.maxGridSize[2]),
              "cuda emulator: invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  {
    std::lock_guard<std::mutex> lock(launch_mutex());
    const auto opted = opt_ins().find(kernel);
    const size_t limit = opted == opt_ins().end() ? dev.sharedMemPerBlock : size_t(opted->second);
    TORCH_CHECK(smem <= limit, "cuda emulator: ", smem, " bytes of dynamic shared memory exceed the kernel's limit of ",
                limit, opted == opt_ins().end() ? " (no cudaFuncSetAttribute opt-in)" : "");
    launch_log().push_back({signature, grid, block, smem});
  }
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  // Lane l runs blocks l, l + lanes, l + 2 lanes, ... one after another, with its own threads, barrier and
  // shared memory; the lanes run at once.
  const int64_t lanes = std::max<int64_t>(1, std::min<int64_t>(blocks, dev.concurrentBlocks));
  const std::unique_ptr<Block[]> running(new Block[lanes]);
  for (int64_t l = 0; l < lanes; ++l) {
    running[l].dynamic_bytes = smem;
    running[l].start(static_cast<int>(threads));
    running[l].done.reset(static_cast<int>(threads));
  }
  std::mutex error_mutex;
  std::exception_ptr error;
  const auto thread_main = [&](int64_t lane, int64_t t) {
    threadIdx = {unsigned(t % block.x), unsigned(t / block.x % block.y), unsigned(t / (int64_t(block.x) * block.y))};
    blockDim = block;
    gridDim = grid;
    Block& mine = running[lane];
    current_block = &mine;
    for (int64_t b = lane; b < blocks; b += lanes) {
      blockIdx = {unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (int64_t(grid.x) * grid.y))};
      try {
        body();
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      mine.sync.drop();
      mine.done.wait();
      if (t == 0 && b + lanes < blocks) mine.start(static_cast<int>(threads));  // fresh shared memory
      mine.done.wait();
    }
    current_block = nullptr;
  };
  std::vector<std::thread> pool;
  pool.reserve(lanes * threads);
  for (int64_t l = 0; l < lanes; ++l)
    for (int64_t t = 0; t < threads; ++t) pool.emplace_back(thread_main, l, t);
  for (std::thread& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

// "P = {...}" of a launch's __PRETTY_FUNCTION__: the kernel's parameter types.
inline std::string parameter_types(const std::string& pretty) {
  const size_t from = pretty.find("P = {");
  return from == std::string::npos ? pretty : pretty.substr(from + 4, pretty.find('}', from) - from - 3);
}

// kernel<<<grid, block, smem>>>(args...): the arguments are converted to the kernel's parameter types once,
// as the launch copies them, and every thread calls the kernel with that copy.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, Stream, A&&... args) {
  const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  run_grid(reinterpret_cast<const void*>(kernel), parameter_types(__PRETTY_FUNCTION__), grid, block, smem,
           [&] { std::apply(kernel, params); });
}

}  // namespace cnx::emu

inline void __syncthreads() { cnx::emu::block().sync.wait(); }


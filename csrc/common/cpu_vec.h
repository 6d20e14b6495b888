#pragma once
// Vector loads and stores shared by the per-instruction-set CPU kernels (*_cpu_kernel.cpp and the
// *_cpu_vec.h headers they include). Compiled only inside those files, once per CPU_CAPABILITY.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>  // at::vec::load_to_float
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace cnx::cpu::CPU_CAPABILITY {

// bf16 and fp16 data are computed in float (at::opmath_type). A whole vector converts with the instruction
// set's own conversion (AVX2/AVX-512: widen and shift for bf16, vcvtph2ps / vcvtps2ph for fp16, both
// rounding to nearest even as c10::BFloat16 and c10::Half do); only a partial vector goes element by element.
// Converting every element in a scalar loop made channels-last bf16 max-pool 4.7x slower than fp32 (and half
// as fast as eager), fp16 LRN 9x slower.
template <typename scalar_t, typename acc_t>
inline constexpr bool kWidened = at::vec::is_reduced_floating_point_v<scalar_t> && std::is_same_v<acc_t, float>;

// `count` elements of scalar_t as a vector of the accumulation type (zero-filled tail).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
at::vec::Vectorized<acc_t> load(const scalar_t* p, int64_t count) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vec::loadu(p, count);
  } else {
    if constexpr (kWidened<scalar_t, acc_t>) {
      if (count == Vec::size()) {
        Vec out;
        at::vec::load_to_float(p, out);
        return out;
      }
    }
    acc_t tmp[Vec::size()] = {};
    for (int64_t i = 0; i < count; ++i) tmp[i] = static_cast<acc_t>(p[i]);
    return Vec::loadu(tmp);
  }
}

// The first `count` lanes of v, converted to scalar_t.
template <typename scalar_t, typename acc_t>
void store(scalar_t* p, const at::vec::Vectorized<acc_t>& v, int64_t count) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(p, count);
  } else {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (kWidened<scalar_t, acc_t>) {
      if (count == Vec::size()) {
        const auto narrow = [](auto wide) {
          if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) return at::vec::cvtfp32_bf16(wide);
          else return at::vec::cvtfp32_fp16(wide);
        };
#if defined(CPU_CAPABILITY_AVX512)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(__m512(v)));
#else
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(__m256(v)));
#endif
        return;
      }
    }
#endif
    acc_t tmp[Vec::size()];
    v.store(tmp);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
  }
}

// store for lanes that already hold scalar_t values (a max, a ReLU, a masked copy of widened data: never the
// result of arithmetic). bf16 then narrows by dropping each lane's low half, which gives back the stored bits
// exactly (NaN payloads included) in 2-3 instructions, where the rounding conversion of store takes 8-10:
// channels-last bf16 max pooling spent as much time rounding its outputs as loading its nine taps on AVX2.
template <typename scalar_t, typename acc_t>
void store_exact(scalar_t* p, const at::vec::Vectorized<acc_t>& v, int64_t count) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    if (count == at::vec::Vectorized<acc_t>::size()) {
#if defined(CPU_CAPABILITY_AVX512)
      const __m512i high = _mm512_srli_epi32(_mm512_castps_si512(__m512(v)), 16);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(high));
#else
      const __m256i high = _mm256_srli_epi32(_mm256_castps_si256(__m256(v)), 16);
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(high, high), 0xD8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
#endif
      return;
    }
  }
#endif
  store(p, v, count);
}

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// The lanes [first, last) of a float vector, both clamped to [0, lanes), as a mask for masked loads and
// stores: a __mmask16 on AVX-512, a vector of all-ones lanes on AVX2.
#if defined(CPU_CAPABILITY_AVX512)
using FloatLaneMask = __mmask16;
#else
using FloatLaneMask = __m256i;
#endif
inline FloatLaneMask float_lanes(int64_t first, int64_t last) {
  constexpr int64_t L = at::vec::Vectorized<float>::size();
  first = std::clamp<int64_t>(first, 0, L);
  last = std::clamp<int64_t>(last, 0, L);
#if defined(CPU_CAPABILITY_AVX512)
  return static_cast<FloatLaneMask>(last > first ? ((1u << last) - 1) & ~((1u << first) - 1) : 0u);
#else
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(first)), lane),
                             _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(last)), lane));
#endif
}
#endif

// The grad_input rows that the fused pool -> LRN backward writes next (the next channel's rows of its tile),
// prefetched for writing while the current ones are written. Its gather reads the LRN gradient from an L2 tile,
// so the stores to grad_input are what it waits on (perf annotate: the samples pile up behind the masked store):
// each channel's rows are a short run of lines, every jump to the next restarts the hardware prefetcher, and the
// stores wait for the read-for-ownership of lines they never read. In-process A/B, 2 threads, cold cache, AMD
// EPYC Zen 5: AlexNet 8x96x55x55 (12 KB runs) 1.20-1.24x faster on AVX-512 and 1.05-1.08x on AVX2, 8x256x27x27
// (3 KB runs) 1.34-1.39x and 1.06x. Only runs up to kWriteAheadBytes: in one burst, a whole 50 KB plane of
// GoogLeNet's stem gained 1.02-1.06x on AVX-512 and lost 0.97-0.98x on AVX2 (whose scatter fills its rows first);
// a long run trains the hardware prefetcher anyway. Max-pool's own backward, whose gradient comes cold from memory
// and competes with the stores, gained nothing from it: 0.90-1.24x by shape on AVX-512, 0.98-1.06x on AVX2.
constexpr int64_t kWriteAheadBytes = 16384;

inline void prefetch_rows_for_write(const void* begin, int64_t bytes) {
  if (bytes > kWriteAheadBytes) return;
  const char* p = static_cast<const char*>(begin);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 1);
}

// A byte range brought into cache a little at a time, `advance()` by `advance()` between the steps of other
// work, so that its misses overlap that work. One burst of prefetches fills the core's miss queue and stalls
// the work behind it; issued nowhere, a read that jumps every few KiB (one channel's rows of a tile, then the
// next channel's) restarts the hardware prefetcher at each jump.
class PrefetchStream {
 public:
  PrefetchStream() = default;
  PrefetchStream(const void* begin, int64_t bytes, int64_t steps)
      : next_(static_cast<const char*>(begin)), end_(next_ + std::max<int64_t>(bytes, 0)),
        step_((std::max<int64_t>(bytes, 0) / std::max<int64_t>(steps, 1) + 63) / 64 * 64) {}
  void advance() {
    for (const char* stop = next_ + std::min<int64_t>(step_, end_ - next_); next_ < stop; next_ += 64)
      __builtin_prefetch(next_);
  }

 private:
  const char* next_ = nullptr;
  const char* end_ = nullptr;
  int64_t step_ = 0;
};

}  // namespace cnx::cpu::CPU_CAPABILITY

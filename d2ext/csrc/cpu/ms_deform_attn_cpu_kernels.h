// The CPU loops of multi-scale deformable attention, compiled once per
// instruction set: ms_deform_attn_cpu_<isa>.cpp includes ms_deform_attn_cpu.h
// (every header needed here), defines D2EXT_CPU_ISA (the namespace) and
// D2EXT_CPU_TARGET (the compiler's target string; none for the baseline build)
// and then includes this file, which therefore includes nothing and has no
// include guard.
//
// Forward parallelizes over (batch, query); backward over (batch, head), so
// that every thread owns a disjoint slice of grad_value and the result is
// deterministic without atomics.
#ifndef D2EXT_CPU_ISA
#error "define D2EXT_CPU_ISA, the namespace of the instruction set, before including this file"
#endif

#define D2EXT_PRAGMA(x) _Pragma(#x)
#ifdef D2EXT_CPU_TARGET
#if defined(__clang__)
#define D2EXT_TARGET_PUSH(t) D2EXT_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
D2EXT_TARGET_PUSH(D2EXT_CPU_TARGET)
#else
#define D2EXT_TARGET_PUSH(t) D2EXT_PRAGMA(GCC target(t))
#pragma GCC push_options
D2EXT_TARGET_PUSH(D2EXT_CPU_TARGET)
#endif
#endif

// The vectors below never cross a function boundary that another build could
// call, so GCC's note on their calling convention does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace d2ext {
namespace cpu {
namespace D2EXT_CPU_ISA {
namespace {

// The backward's four corner rows of a sample, each a pointer to D channels,
// their gradient rows, and their weights (bilinear times attention). A corner
// outside the map points at a row of zeros with weight 0 and at a scratch row
// for its gradient, so the channel loops below run branch-free over all four
// corners at once. (The forward sets up its rows in vectors: QueryRows.)
template <typename scalar_t, typename acc_t>
struct CornerRows {
  const scalar_t* value[4];
  acc_t* grad[4];
  acc_t weight[4];
};

template <typename scalar_t, typename acc_t>
CornerRows<scalar_t, acc_t> corner_rows(
    const BilinearCorners<acc_t>& corners,
    acc_t scale,
    const scalar_t* value_level,
    acc_t* grad_level,
    int64_t row_stride,
    const scalar_t* zeros,
    acc_t* scratch) {
  CornerRows<scalar_t, acc_t> rows;
  for (int c = 0; c < 4; ++c) {
    const bool inside = corners.pixel[c] >= 0;
    rows.value[c] = inside ? value_level + corners.pixel[c] * row_stride : zeros;
    rows.grad[c] = inside ? grad_level + corners.pixel[c] * row_stride : scratch;
    rows.weight[c] = inside ? scale * corners.weight[c] : acc_t(0);
  }
  return rows;
}

// Asks for the first and last cache lines of a sample's corner rows and their
// gradient rows (all of a row of D <= 32 float32), which the backward's channel
// loops then read and write: the rows of a (query, head) are scattered over the
// maps, and fetching them all at once overlaps the misses. (The forward, which
// sets up a whole query in vectors, measured faster without prefetching: the
// core then overlaps the misses of its channel loops by itself.)
template <typename scalar_t, typename acc_t>
inline void prefetch(const CornerRows<scalar_t, acc_t>& r, int64_t D) {
  for (int c = 0; c < 4; ++c) {
    __builtin_prefetch(r.value[c]);
    __builtin_prefetch(r.value[c] + D - 1);
    __builtin_prefetch(r.grad[c], 1);
    __builtin_prefetch(r.grad[c] + D - 1, 1);
  }
}

// The channel loops take the D channels in blocks of a width fixed at compile
// time, each block held in vectors of GCC and Clang's vector extensions, as
// wide as the target's registers (D2EXT_CPU_VECTOR_BYTES): D = 32 float32 is one
// block, two 512-bit registers with AVX-512 (four with AVX2), kept across all
// the samples of a (query, head). Blocks of 32, then one each of 16, 8, 4, 2 and 1
// as needed, cover any D.
constexpr int64_t kMaxBlock = 32;
#ifndef D2EXT_CPU_VECTOR_BYTES
#define D2EXT_CPU_VECTOR_BYTES 16
#endif

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define D2EXT_HAS_SHUFFLEVECTOR 1
#endif
#endif
#ifndef D2EXT_HAS_SHUFFLEVECTOR
#define D2EXT_HAS_SHUFFLEVECTOR 0
#endif

// The lanes of one vector of a block of W channels.
template <typename acc_t, int64_t W>
constexpr int64_t kLanes = std::min<int64_t>(W, D2EXT_CPU_VECTOR_BYTES / sizeof(acc_t));

template <typename T, int64_t N>
struct VecOf {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename T, int64_t N>
using Vec = typename VecOf<T, N>::type;

// N channels from p, converted to acc_t.
template <typename acc_t, int64_t N, typename scalar_t>
inline Vec<acc_t, N> load(const scalar_t* p) {
  Vec<acc_t, N> v;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(&v, p, sizeof(v));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    // bfloat16 is the top half of a float32
    Vec<uint16_t, N> bits;
    std::memcpy(&bits, p, sizeof(bits));
    const Vec<uint32_t, N> wide = __builtin_convertvector(bits, Vec<uint32_t, N>) << 16;
    std::memcpy(&v, &wide, sizeof(v));
  } else {
    for (int64_t k = 0; k < N; ++k) {
      v[k] = static_cast<acc_t>(p[k]);
    }
  }
  return v;
}

template <typename acc_t, int64_t N>
inline void store(acc_t* p, const Vec<acc_t, N>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// The bits of bfloat16 values, rounded from float32 as c10::BFloat16 does (to
// nearest even; NaN to c10's quiet NaN), in the low half of each lane.
template <int64_t N>
inline void bfloat16_bits(const Vec<float, N>& v, Vec<uint32_t, N>& out) {
  Vec<uint32_t, N> bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const Vec<uint32_t, N> rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;
  const Vec<uint32_t, N> nan = (Vec<uint32_t, N>)(v != v);
  out = (nan & 0x7FC0u) | (~nan & rounded);
}

// v, converted from acc_t, into N channels at p.
template <typename scalar_t, typename acc_t, int64_t N>
inline void store_as(scalar_t* p, const Vec<acc_t, N>& v) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(p, &v, sizeof(v));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    Vec<uint32_t, N> bits;
    bfloat16_bits<N>(v, bits);
    const Vec<uint16_t, N> out = __builtin_convertvector(bits, Vec<uint16_t, N>);
    std::memcpy(p, &out, sizeof(out));
  } else {
    for (int64_t k = 0; k < N; ++k) {
      p[k] = static_cast<scalar_t>(v[k]);
    }
  }
}

// A block of W channels of a row as K vectors of L acc_t lanes, for the
// forward. bfloat16 rows are read as 32-bit words, each split into its even
// channel (the word shifted up) and its odd one (the word masked): an
// instruction per vector, where widening takes two. The vectors then hold
// channels d0, d0 + 2, ... and d0 + 1, d0 + 3, ... in turn, which `write` puts
// back in order.
template <typename scalar_t, typename acc_t, int64_t W>
struct RowBlock {
  static constexpr bool kSplit = std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float> &&
      W >= 2 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
  static constexpr int64_t L = kLanes<acc_t, kSplit ? W / 2 : W>;
  static constexpr int64_t K = W / L;
  using V = Vec<acc_t, L>;

  static void read(const scalar_t* p, V (&v)[K]) {
    if constexpr (kSplit) {
      for (int64_t k = 0; k < K; k += 2) {
        Vec<uint32_t, L> words;
        std::memcpy(&words, p + k * L, sizeof(words));
        const Vec<uint32_t, L> even = words << 16, odd = words & 0xFFFF0000u;
        std::memcpy(&v[k], &even, sizeof(even));
        std::memcpy(&v[k + 1], &odd, sizeof(odd));
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        v[k] = load<acc_t, L>(p + k * L);
      }
    }
  }

  static void write(scalar_t* p, const V (&v)[K]) {
    if constexpr (kSplit) {
      for (int64_t k = 0; k < K; k += 2) {
        Vec<uint32_t, L> even, odd;
        bfloat16_bits<L>(v[k], even);
        bfloat16_bits<L>(v[k + 1], odd);
        const Vec<uint32_t, L> words = even | (odd << 16);
        std::memcpy(p + k * L, &words, sizeof(words));
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        store_as<scalar_t, acc_t, L>(p + k * L, v[k]);
      }
    }
  }
};

// The sum of v's lanes, halving the vector at each step.
template <typename acc_t, int64_t N>
inline acc_t reduce_add(const Vec<acc_t, N>& v) {
  if constexpr (N == 1) {
    return v[0];
  } else {
    Vec<acc_t, N / 2> lo, hi;
#if D2EXT_HAS_SHUFFLEVECTOR
    [&]<size_t... I>(std::index_sequence<I...>) {
      lo = __builtin_shufflevector(v, v, I...);
      hi = __builtin_shufflevector(v, v, (I + N / 2)...);
    }(std::make_index_sequence<N / 2>{});
#else
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
#endif
    return reduce_add<acc_t, N / 2>(lo + hi);
  }
}

// Calls fn(std::integral_constant<int64_t, width>{}, first channel) per block.
template <int64_t W = kMaxBlock, typename Fn>
inline void for_each_block(int64_t d, int64_t D, const Fn& fn) {
  for (; d + W <= D; d += W) {
    fn(std::integral_constant<int64_t, W>{}, d);
  }
  if constexpr (W > 1) {
    for_each_block<W / 2>(d, D, fn);
  }
}

// For each sample: dots[4 * i + c] += <grad_output, corner row c> over the
// block's channels, and grad row c += weight c * grad_output.
template <int64_t W, typename scalar_t, typename acc_t>
inline void backward_block(
    const CornerRows<scalar_t, acc_t>* rows,
    int64_t count,
    int64_t d0,
    const scalar_t* grad_output,
    acc_t* dots) {
  constexpr int64_t L = kLanes<acc_t, W>;
  Vec<acc_t, L> g[W / L];
  for (int64_t k = 0; k < W / L; ++k) {
    g[k] = load<acc_t, L>(grad_output + d0 + k * L);
  }
  for (int64_t i = 0; i < count; ++i) {
    const CornerRows<scalar_t, acc_t>& r = rows[i];
    for (int c = 0; c < 4; ++c) {
      Vec<acc_t, L> dot = {};
      for (int64_t k = 0; k < W / L; ++k) {
        const int64_t d = d0 + k * L;
        dot += g[k] * load<acc_t, L>(r.value[c] + d);
        store<acc_t, L>(r.grad[c] + d, load<acc_t, L>(r.grad[c] + d) + r.weight[c] * g[k]);
      }
      dots[4 * i + c] += reduce_add<acc_t, L>(dot);
    }
  }
}

// The forward's bilinear set-up takes the M * L * P samples of a query in
// vectors of kSetupLanes samples, as wide as the target's registers, and
// their corner addresses kAddressLanes at a time (GCC computes a vector wider
// than the registers lane by lane in places).
template <typename acc_t>
constexpr int64_t kSetupLanes = D2EXT_CPU_VECTOR_BYTES / sizeof(acc_t);
template <typename acc_t>
constexpr int64_t kAddressLanes = std::min<int64_t>(kSetupLanes<acc_t>, D2EXT_CPU_VECTOR_BYTES / sizeof(intptr_t));

constexpr int64_t round_up(int64_t n, int64_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

// What the set-up needs of the level of each sample slot (m, l, p) of a query,
// the same for every query; padded to whole vectors (the padding lanes are
// computed and never used).
template <typename acc_t, typename index_t>
struct SlotLevels {
  std::vector<acc_t> height, width; // H and W
  std::vector<index_t> height_px, width_px; // the same, as integers
  std::vector<intptr_t> first_row; // bytes from an image's value to pixel 0 of the level, head m
  std::vector<intptr_t> next_line; // bytes from a pixel to the one below it
  intptr_t next_pixel; // bytes from a pixel to the next one
};

template <typename scalar_t, typename acc_t, typename index_t>
SlotLevels<acc_t, index_t> slot_levels(
    const Sizes& s,
    const int64_t* spatial_shapes,
    const int64_t* level_start_index) {
  const int64_t samples = s.M * s.L * s.P;
  const int64_t padded = round_up(samples, kSetupLanes<acc_t>);
  const intptr_t pixel_bytes = s.M * s.D * sizeof(scalar_t);
  SlotLevels<acc_t, index_t> levels{
      std::vector<acc_t>(padded), std::vector<acc_t>(padded), std::vector<index_t>(padded),
      std::vector<index_t>(padded), std::vector<intptr_t>(padded), std::vector<intptr_t>(padded), pixel_bytes};
  for (int64_t slot = 0; slot < samples; ++slot) {
    const int64_t m = slot / (s.L * s.P), l = slot / s.P % s.L;
    const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
    levels.height[slot] = static_cast<acc_t>(H);
    levels.width[slot] = static_cast<acc_t>(W);
    levels.height_px[slot] = static_cast<index_t>(H);
    levels.width_px[slot] = static_cast<index_t>(W);
    levels.first_row[slot] = level_start_index[l] * pixel_bytes + m * s.D * sizeof(scalar_t);
    levels.next_line[slot] = W * pixel_bytes;
  }
  return levels;
}

// The corner rows of a query's samples, corner by corner: corner c of sample i
// is the row at address[c * stride + i] with weight[c * stride + i] (bilinear
// times attention). A corner outside the map is a row of zeros with weight 0.
template <typename acc_t>
struct QueryRows {
  int64_t stride;
  std::vector<intptr_t> address;
  std::vector<acc_t> weight;

  explicit QueryRows(int64_t samples)
      : stride(round_up(samples, kSetupLanes<acc_t>)), address(4 * stride), weight(4 * stride) {}
};

// Lanes [0, count) from p, the others 0: the last vector of a query reads no
// further than its samples.
template <typename T, int64_t V>
inline Vec<T, V> load_lanes(const T* p, int64_t count) {
  Vec<T, V> v = {};
  if (count >= V) {
    std::memcpy(&v, p, sizeof(v));
  } else if (count > 0) {
    std::memcpy(&v, p, count * sizeof(T));
  }
  return v;
}

// x and y of the (x, y) pairs at p (lanes past count are 0).
template <typename acc_t, int64_t V>
inline void load_pairs(const acc_t* p, int64_t count, Vec<acc_t, V>& x, Vec<acc_t, V>& y) {
  const Vec<acc_t, V> lo = load_lanes<acc_t, V>(p, 2 * count);
  const Vec<acc_t, V> hi = count > V / 2 ? load_lanes<acc_t, V>(p + V, 2 * count - V) : Vec<acc_t, V>{};
#if D2EXT_HAS_SHUFFLEVECTOR
  [&]<size_t... I>(std::index_sequence<I...>) {
    x = __builtin_shufflevector(lo, hi, (2 * I)...);
    y = __builtin_shufflevector(lo, hi, (2 * I + 1)...);
  }(std::make_index_sequence<V>{});
#else
  for (int64_t k = 0; k < V; ++k) {
    x[k] = k < V / 2 ? lo[2 * k] : hi[2 * k - V];
    y[k] = k < V / 2 ? lo[2 * k + 1] : hi[2 * k + 1 - V];
  }
#endif
}

// floor_to_int lane by lane, for values within index_t's range (an output
// argument: a returned vector wider than the target's registers draws GCC's
// ABI warning wherever the function is not inlined).
template <typename index_t, typename acc_t, int64_t V>
inline void floor_lanes(const Vec<acc_t, V>& v, Vec<index_t, V>& out) {
  const Vec<index_t, V> t = __builtin_convertvector(v, Vec<index_t, V>);
  // a true comparison is -1
  out = t + __builtin_convertvector(__builtin_convertvector(t, Vec<acc_t, V>) > v, Vec<index_t, V>);
}

// Lanes [first, first + N) of v.
template <typename T, int64_t V, int64_t N>
inline void lanes_of(const Vec<T, V>& v, int64_t first, Vec<T, N>& out) {
  std::memcpy(&out, reinterpret_cast<const char*>(&v) + first * sizeof(T), sizeof(out));
}

// The corner rows of the `count` samples of one query, from their locations
// (count, 2) and attention weights (count,): lane for lane what
// bilinear_corners and corner_rows give (bilinear.h), zero padding included. A
// location with no corner inside the map (or not finite) has its sample (zero,
// or NaN) as the weight of a row of zeros, as outside_sample gives it.
template <typename acc_t, typename index_t>
void set_up_query(
    const SlotLevels<acc_t, index_t>& levels,
    const acc_t* locations,
    const acc_t* attention_weights,
    int64_t count,
    intptr_t image,
    intptr_t zeros,
    QueryRows<acc_t>& rows) {
  constexpr int64_t V = kSetupLanes<acc_t>;
  constexpr int64_t VA = kAddressLanes<acc_t>;
  using F = Vec<acc_t, V>; // coordinates and weights
  using I = Vec<index_t, V>; // pixel coordinates and indices
  using U = Vec<std::make_unsigned_t<index_t>, V>;
  using IA = Vec<index_t, VA>;
  using A = Vec<intptr_t, VA>; // addresses
  using Mask = decltype(F{} < F{});
  intptr_t* const address_out = rows.address.data();
  acc_t* const weight_out = rows.weight.data();
  const int64_t stride = rows.stride;
  const intptr_t next_pixel = levels.next_pixel;
  const A zero_row = A{} + zeros;
  for (int64_t i = 0; i < count; i += V) {
    F x, y;
    load_pairs<acc_t, V>(locations + 2 * i, count - i, x, y);
    const F scale = load_lanes<acc_t, V>(attention_weights + i, count - i);
    const F H = load_lanes<acc_t, V>(levels.height.data() + i, V);
    const F W = load_lanes<acc_t, V>(levels.width.data() + i, V);
    const F h_im = y * H - acc_t(0.5);
    const F w_im = x * W - acc_t(0.5);
    // Written so that NaN fails it too.
    const Mask valid = (h_im >= acc_t(-1)) & (h_im < H) & (w_im >= acc_t(-1)) & (w_im < W);
    I h_low, w_low;
    floor_lanes<index_t, acc_t, V>(valid ? h_im : F{}, h_low);
    floor_lanes<index_t, acc_t, V>(valid ? w_im : F{}, w_low);
    const F lh = h_im - __builtin_convertvector(h_low, F);
    const F lw = w_im - __builtin_convertvector(w_low, F);
    const F hh = acc_t(1) - lh;
    const F hw = acc_t(1) - lw;
    const F bilinear[4] = {hh * hw, hh * lw, lh * hw, lh * lw};

    const I H_px = load_lanes<index_t, V>(levels.height_px.data() + i, V);
    const I W_px = load_lanes<index_t, V>(levels.width_px.data() + i, V);
    const I is_valid = __builtin_convertvector(valid, I);
    const I h_low_in = is_valid & (h_low >= 0) & (h_low < H_px);
    const I h_high_in = is_valid & (h_low + 1 < H_px);
    const I w_low_in = (w_low >= 0) & (w_low < W_px);
    const I w_high_in = w_low + 1 < W_px;
    const I inside[4] = {h_low_in & w_low_in, h_low_in & w_high_in, h_high_in & w_low_in, h_high_in & w_high_in};

    const F outside = scale * ((x - x) + (y - y)); // outside_sample(x, y)
    for (int c = 0; c < 4; ++c) {
      F weight = __builtin_convertvector(inside[c], Mask) ? scale * bilinear[c] : F{};
      if (c == 0) {
        weight = valid ? weight : outside;
      }
      std::memcpy(weight_out + c * stride + i, &weight, sizeof(weight));
    }

    // h_low * W + w_low wraps (unsigned) where a corner is outside, and is not used there
    const I pixel = (I)((U)h_low * (U)W_px + (U)w_low);
    for (int64_t j = 0; j < V; j += VA) {
      IA pixel_j;
      lanes_of<index_t, V, VA>(pixel, j, pixel_j);
      const A low_low = image + load_lanes<intptr_t, VA>(levels.first_row.data() + i + j, VA) +
          __builtin_convertvector(pixel_j, A) * next_pixel;
      const A below = load_lanes<intptr_t, VA>(levels.next_line.data() + i + j, VA);
      const A corner[4] = {low_low, low_low + next_pixel, low_low + below, low_low + below + next_pixel};
      for (int c = 0; c < 4; ++c) {
        IA inside_j;
        lanes_of<index_t, V, VA>(inside[c], j, inside_j);
        const A address = __builtin_convertvector(inside_j, A) ? corner[c] : zero_row;
        std::memcpy(address_out + c * stride + i + j, &address, sizeof(address));
      }
    }
  }
}

// out[d0 : d0 + W] = the sum of the weighted corner rows of samples
// [first, first + count) of a query.
template <int64_t W, typename scalar_t, typename acc_t>
inline void forward_block(const QueryRows<acc_t>& rows, int64_t first, int64_t count, int64_t d0, scalar_t* out) {
  using Block = RowBlock<scalar_t, acc_t, W>;
  constexpr int64_t K = Block::K;
  typename Block::V acc[K] = {};
  const intptr_t* address = rows.address.data();
  const acc_t* weight = rows.weight.data();
  const int64_t stride = rows.stride;
  for (int64_t i = first; i < first + count; ++i) {
    typename Block::V v[4][K];
    acc_t w[4];
    for (int c = 0; c < 4; ++c) {
      Block::read(reinterpret_cast<const scalar_t*>(address[c * stride + i]) + d0, v[c]);
      w[c] = weight[c * stride + i];
    }
    for (int64_t k = 0; k < K; ++k) {
      acc[k] += w[0] * v[0][k] + w[1] * v[1][k] + w[2] * v[2][k] + w[3] * v[3][k];
    }
  }
  Block::write(out + d0, acc);
}

// index_t: the set-up's integer lanes, int32 where every pixel index fits.
template <typename scalar_t, typename acc_t, typename index_t>
void forward_kernel(
    const Sizes& s,
    const scalar_t* value,
    const int64_t* spatial_shapes,
    const int64_t* level_start_index,
    const acc_t* sampling_locations,
    const acc_t* attention_weights,
    scalar_t* output) {
  const int64_t work_per_item = std::max<int64_t>(1, s.M * s.L * s.P * s.D);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / work_per_item);
  const int64_t samples = s.M * s.L * s.P; // of a query
  const int64_t head_samples = s.L * s.P;
  const auto levels = slot_levels<scalar_t, acc_t, index_t>(s, spatial_shapes, level_start_index);
  at::parallel_for(0, s.N * s.Lq, grain, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(s.D, scalar_t(0));
    QueryRows<acc_t> rows(samples);
    for (int64_t nq = begin; nq < end; ++nq) {
      const scalar_t* image = value + (nq / s.Lq) * s.S * s.M * s.D;
      set_up_query(
          levels, sampling_locations + 2 * nq * samples, attention_weights + nq * samples, samples,
          reinterpret_cast<intptr_t>(image), reinterpret_cast<intptr_t>(zeros.data()), rows);
      for (int64_t m = 0; m < s.M; ++m) {
        scalar_t* out = output + (nq * s.M + m) * s.D;
        for_each_block(0, s.D, [&](auto width, int64_t d0) {
          forward_block<decltype(width)::value>(rows, m * head_samples, head_samples, d0, out);
        });
      }
    }
  });
}

// A sample with a corner inside the map, kept for the location gradient once
// the channel loops have summed its dot products.
template <typename acc_t>
struct InsideSample {
  BilinearCorners<acc_t> corners;
  int64_t index, H, W;
};

template <typename scalar_t, typename acc_t>
void backward_kernel(
    const Sizes& s,
    const scalar_t* grad_output,
    const scalar_t* value,
    const int64_t* spatial_shapes,
    const int64_t* level_start_index,
    const acc_t* sampling_locations,
    const acc_t* attention_weights,
    acc_t* grad_value,
    acc_t* grad_sampling_locations,
    acc_t* grad_attention_weights) {
  const int64_t row_stride = s.M * s.D;
  at::parallel_for(0, s.N * s.M, 1, [&](int64_t begin, int64_t end) {
    std::vector<CornerRows<scalar_t, acc_t>> rows(s.L * s.P);
    std::vector<InsideSample<acc_t>> inside(s.L * s.P);
    std::vector<acc_t> dots(4 * s.L * s.P);
    std::vector<scalar_t> zeros(s.D, scalar_t(0));
    std::vector<acc_t> scratch(s.D);
    // Query by query over the thread's heads of one image: a query's rows of
    // grad_output, locations and weights are then read in memory order. Each
    // head still takes its queries in order, so the result does not depend on
    // how the heads are split among threads.
    for (int64_t n = begin / s.M; n * s.M < end; ++n) {
      const int64_t m_begin = std::max(begin - n * s.M, int64_t(0));
      const int64_t m_end = std::min(end - n * s.M, s.M);
      for (int64_t q = 0; q < s.Lq; ++q) {
        for (int64_t m = m_begin; m < m_end; ++m) {
          const int64_t head_offset = n * s.S * row_stride + m * s.D;
          const int64_t nqm = (n * s.Lq + q) * s.M + m;
          int64_t count = 0;
          int64_t sample = nqm * s.L * s.P;
          for (int64_t l = 0; l < s.L; ++l) {
            const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
            const int64_t level_offset = head_offset + level_start_index[l] * row_stride;
            for (int64_t p = 0; p < s.P; ++p, ++sample) {
              const acc_t x = sampling_locations[2 * sample], y = sampling_locations[2 * sample + 1];
              const acc_t weight = attention_weights[sample];
              InsideSample<acc_t>& in = inside[count];
              if (bilinear_corners(x, y, H, W, in.corners)) {
                in.index = sample;
                in.H = H;
                in.W = W;
                rows[count] = corner_rows<scalar_t, acc_t>(
                    in.corners, weight, value + level_offset, grad_value + level_offset, row_stride, zeros.data(),
                    scratch.data());
                prefetch(rows[count++], s.D);
                continue;
              }
              // zero, or NaN for a location or weight that is not finite; grad_value stays zero
              const acc_t outside = outside_sample(x, y);
              grad_attention_weights[sample] = outside;
              grad_sampling_locations[2 * sample] = weight * outside;
              grad_sampling_locations[2 * sample + 1] = weight * outside;
            }
          }
          std::fill(dots.begin(), dots.begin() + 4 * count, acc_t(0));
          const scalar_t* g = grad_output + nqm * s.D;
          for_each_block(0, s.D, [&](auto width, int64_t d0) {
            backward_block<decltype(width)::value>(rows.data(), count, d0, g, dots.data());
          });
          for (int64_t i = 0; i < count; ++i) {
            const InsideSample<acc_t>& in = inside[i];
            const acc_t weight = attention_weights[in.index];
            const BilinearGrad<acc_t> bg = bilinear_grad(in.corners, &dots[4 * i], in.H, in.W);
            grad_attention_weights[in.index] = bg.sampled;
            grad_sampling_locations[2 * in.index] = weight * bg.grad_x;
            grad_sampling_locations[2 * in.index + 1] = weight * bg.grad_y;
          }
        }
      }
    }
  });
}

void forward(
    const Sizes& s,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto run = [&](auto index) {
      forward_kernel<scalar_t, acc_t, decltype(index)>(
          s,
          value.const_data_ptr<scalar_t>(),
          spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<acc_t>(),
          attention_weights.const_data_ptr<acc_t>(),
          output.mutable_data_ptr<scalar_t>());
    };
    // The set-up's integer lanes hold a level's H, W and pixel indices, all at most S.
    if (s.S <= std::numeric_limits<int32_t>::max()) {
      run(int32_t{});
    } else {
      run(int64_t{});
    }
  });
}

void backward(
    const Sizes& s,
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_value,
    const at::Tensor& grad_sampling_locations,
    const at::Tensor& grad_attention_weights) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t>(
        s,
        grad_output.const_data_ptr<scalar_t>(),
        value.const_data_ptr<scalar_t>(),
        spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(),
        sampling_locations.const_data_ptr<acc_t>(),
        attention_weights.const_data_ptr<acc_t>(),
        grad_value.mutable_data_ptr<acc_t>(),
        grad_sampling_locations.mutable_data_ptr<acc_t>(),
        grad_attention_weights.mutable_data_ptr<acc_t>());
  });
}

} // namespace

Kernels kernels() {
  return {&forward, &backward};
}

} // namespace D2EXT_CPU_ISA
} // namespace cpu
} // namespace d2ext

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#ifdef D2EXT_CPU_TARGET
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

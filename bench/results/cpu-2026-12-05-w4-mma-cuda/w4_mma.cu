// awqd_w4 x activations on mma.sync (m16n8k16) for 1 to 128 tokens, in CUDA C++ (issue 15).
//
// Each lane streams its own weight words, DEPTH steps of 128 input columns ahead, through a ring in shared memory:
// it copies them with cp.async and reads back only what it copied itself, after cp.async.wait_group, so the loop
// has no barrier, and the depth costs shared memory rather than registers. The awqd_w4 layout gives each lane of a
// quad (t = lane % 4) one 16-byte copy per row and step, the four words of run t of a 128-column step. Those words
// hold the fragment values of four lanes of one 32-column run, so the MMA's K axis is permuted instead of the words:
// lane t's A operand covers run t, and its B operand is then the same run of its token, four 16-byte chunks of the
// activations as they lie. K order does not change a dot product.
//
// In a 128-column step, column 32t + 16h + 8p + 2j + e (run t, word j, nibble pair (h, p), e the pair's half) sits
// at MMA position 16(2j + h) + 8p + 2t + e: k16 step 2j + h, A register p, lane t. The layout's nibble pair i of word
// j (unpacked together by one lop3) is (h, p) = (i & 1, i >> 1). B register p of k16 step 2j + h is word j of chunk
// 4t + 2h + p of the step.
//
// The activations of a block's K slice are copied once into shared memory with cp.async (16-byte chunks, in order,
// swizzled so that a quarter warp's chunk reads fall in distinct banks), ahead of the first weight steps.
//
// Per group of 128 columns the MMAs form sum (q - z) x in fp32 from the exact small integers q - z, and the partial
// is scaled into the accumulator (one rounding fewer than dequantizing first). With smaller groups a lane's four runs
// may belong to different groups inside one MMA, so there (and with SCALE_FIRST) the A operand is dequantized to
// (q - z) * s before the MMA.
//
// Split-K: gridDim.y slices of K; each slice writes fp32 partials and the slice that finishes a row tile last adds
// them in slice order (deterministic) and writes the output. Warps can also split a block's K (KW), reduced in
// shared memory in warp order.

typedef unsigned int u32;
typedef unsigned short u16;

struct alignas(16) Words {
  u32 w[4];
};

template <bool BF16>
struct Num;

// The 16-bit type's operations, as PTX: TYPE is f16 or bf16. MAGIC holds the number whose mantissa's unit is 1 in
// both halves, so OR-ing q into its low bits gives MAGIC + q exactly: 1024.0 in fp16, 128.0 in bf16 (7 mantissa bits).
#define AWQD_NUM(IS_BF16, TYPE, MAGIC_BITS, OFFSET_VALUE)                                                \
  template <>                                                                                           \
  struct Num<IS_BF16> {                                                                                 \
    static constexpr u32 MAGIC = MAGIC_BITS;                                                            \
    static constexpr float OFFSET = OFFSET_VALUE;                                                       \
    __device__ static u32 sub(u32 a, u32 b) {                                                           \
      u32 d;                                                                                            \
      asm("sub.rn." TYPE "x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));                                  \
      return d;                                                                                         \
    }                                                                                                   \
    __device__ static u32 mul(u32 a, u32 b) {                                                           \
      u32 d;                                                                                            \
      asm("mul.rn." TYPE "x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));                                  \
      return d;                                                                                         \
    }                                                                                                   \
    __device__ static u32 pair(float lo, float hi) {                                                    \
      u32 d;                                                                                            \
      asm("cvt.rn." TYPE "x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));                            \
      return d;                                                                                         \
    }                                                                                                   \
    __device__ static u16 round(float v) {                                                              \
      u16 d;                                                                                            \
      asm("cvt.rn." TYPE ".f32 %0, %1;" : "=h"(d) : "f"(v));                                            \
      return d;                                                                                         \
    }                                                                                                   \
    __device__ static void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {                      \
      asm("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "  \
          "{%8,%9}, {%0,%1,%2,%3};"                                                                     \
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                              \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                              \
    }                                                                                                   \
  };

AWQD_NUM(false, "f16", 0x64006400u, 1024.f)
AWQD_NUM(true, "bf16", 0x43004300u, 128.f)

__device__ __forceinline__ float half_to_float(u32 bits) {
  float f;
  u16 h = static_cast<u16>(bits);
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

// Nibbles i and i + 4 of w as the 16-bit pair (MAGIC + q_i, MAGIC + q_{i+4}).
template <u32 MAGIC, int I>
__device__ __forceinline__ u32 nibble_pair(u32 w) {
  u32 d;
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xea;" : "=r"(d) : "r"(w >> (4 * I)), "n"(MAGIC));
  return d;
}

__device__ __forceinline__ Words load_shared(u32 address) {
  Words v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3])
               : "r"(address));
  return v;
}

// 16 bytes from global to shared memory, asynchronously; zeros where `valid` is false.
__device__ __forceinline__ void copy_async(u32 address, const void* source, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(address), "l"(source), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void copy_word_async(u32 address, const void* source, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(address), "l"(source), "r"(valid ? 4 : 0));
}

__device__ __forceinline__ u32 load_shared_word(u32 address) {
  u32 v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(address));
  return v;
}

__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most N of this thread's newest copy groups are still in flight.
template <int N>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Chunk c of a staged token row lies at c ^ swizzle: a quarter warp (tokens n, n + 1; t = 0..3) reading chunk
// 4t + 2h + p of a step then meets all eight 16-byte bank groups.
__device__ __forceinline__ int swizzle(int chunk, int token) { return ((chunk >> 3) & 1) << 1 | (token & 1); }

// f(rt, nt, e) for each accumulator element a lane holds, unrolled so that the register arrays stay registers.
template <int R, int MT, class F>
__device__ __forceinline__ void each_value(F&& f) {
#pragma unroll
  for (int rt = 0; rt < R; rt++)
#pragma unroll
    for (int nt = 0; nt < MT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) f(rt, nt, e);
}

// Grid (row groups, K slices); 32 * RW * KW threads. A block stages its K slice of the activations once and then
// streams `tiles` row tiles of BLOCK_ROWS rows through it, one after another (the weight loads run on across the
// tiles' boundaries), so that the staged activations are read from L2 once per tiles * BLOCK_ROWS rows. Dynamic
// shared memory: the staged activations (TOKENS rows of k_slice columns, swizzled), the weight ring (DEPTH slots of
// each thread's R x 2 word vectors, then of its R x 2 scale-zero words, thread-minor so that a warp's reads are
// contiguous), then the KW reduction.
template <int MT, int R, int RW, int KW, int DEPTH, int GROUP, bool SCALE_FIRST, bool BF16>
__device__ __forceinline__ void w4_mma(const u16* __restrict__ x, const Words* __restrict__ qweight,
                                       const u32* __restrict__ scale_zero, const float* __restrict__ bias,
                                       u16* __restrict__ y, float* __restrict__ partials, u32* __restrict__ counters,
                                       int M, int N, int K, int k_slice, int tiles) {
  using T = Num<BF16>;
  static_assert(SCALE_FIRST || GROUP == 128, "a group smaller than a step is dequantized before the MMA");
  constexpr int THREADS = 32 * RW * KW;
  constexpr int TOKENS = 8 * MT;
  constexpr int BLOCK_ROWS = 16 * R * RW;
  constexpr int VALUES = R * MT * 4;  // accumulators a lane
  extern __shared__ Words shared[];
  __shared__ int finishing;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_row = warp % RW, warp_k = warp / RW;
  const int g = lane >> 2, t = lane & 3;
  const int split = blockIdx.y, splits = gridDim.y;
  const int k0 = split * k_slice;
  const int steps = min(k_slice, K - k0) / 128;  // the host keeps it a multiple of KW
  const int my_steps = steps / KW;
  const int first_tile = blockIdx.x * tiles;
  const int my_tiles = min(tiles, (N + BLOCK_ROWS - 1) / BLOCK_ROWS - first_tile);
  const int total = my_tiles * my_steps;
  const int lane_row = warp_row * R * 16 + g;  // within a tile
  const int row_words = K / 32;  // 16-byte vectors a weight row
  const int row_groups = K / GROUP;

  const int chunks = k_slice / 8;
  const u32 shared_base = static_cast<u32>(__cvta_generic_to_shared(shared));
  const u32 ring_words = shared_base + TOKENS * k_slice * 2;
  const u32 ring_scales = ring_words + DEPTH * R * 2 * THREADS * 16;
  auto ring_index = [&](int slot, int rt, int half) { return ((slot * R + rt) * 2 + half) * THREADS + tid; };
  auto word_slot = [&](int slot, int rt, int half) { return ring_words + ring_index(slot, rt, half) * 16; };
  auto scale_slot = [&](int slot, int rt, int half) { return ring_scales + ring_index(slot, rt, half) * 4; };

  // Step i of row tile `tile` into ring slot `slot`: this lane's word vectors and scale-zero words.
  auto copy_step = [&](int slot, int tile, int i) {
    const int kb = k0 / 128 + i * KW + warp_k;
    const int group = SCALE_FIRST ? (kb * 128 + 32 * t) / GROUP : kb;
    const int row0 = (first_tile + tile) * BLOCK_ROWS + lane_row;
#pragma unroll
    for (int rt = 0; rt < R; rt++)
#pragma unroll
      for (int half = 0; half < 2; half++) {
        const int row = row0 + rt * 16 + half * 8;
        const bool valid = row < N;
        const int source_row = valid ? row : 0;
        copy_async(word_slot(slot, rt, half), qweight + source_row * row_words + kb * 4 + t, valid);
        copy_word_async(scale_slot(slot, rt, half), scale_zero + source_row * row_groups + group, valid);
      }
  };

  // The slice's activations as they lie, swizzled (see swizzle): the first copy group.
  {
    const int k_chunks = steps * 16;
    for (int c = tid; c < TOKENS * k_chunks; c += THREADS) {
      const int n = c / k_chunks, chunk = c % k_chunks;
      const bool valid = n < M;
      const u16* source = x + static_cast<long>(valid ? n : 0) * K + k0 + chunk * 8;
      copy_async(shared_base + (n * chunks + (chunk ^ swizzle(chunk, n))) * 16, source, valid);
    }
    commit_copies();
  }
  // Then one group per weight step (empty past the end, so that the count stays DEPTH - 1 ahead).
  int load_tile = 0, load_step = 0;  // the next (tile, step) to copy, in order
  auto advance = [&](int& tile, int& step) {
    if (++step == my_steps) {
      step = 0;
      tile++;
    }
  };
  for (int d = 0; d < DEPTH - 1; d++) {
    if (d < total) {
      copy_step(d, load_tile, load_step);
      advance(load_tile, load_step);
    }
    commit_copies();
  }
  wait_copies<DEPTH - 1>();  // the activations are in
  __syncthreads();

  // This lane's B chunks: token 8 nt + g, chunk 16 step + 4t + (2h + p) ^ swizzle; the swizzle is the same for
  // every step and nt (it depends on t >> 1 and g & 1 only).
  const u32 b_row = shared_base + g * chunks * 16;
  const int b_swizzle = swizzle(4 * t, g);
  float* reduce = reinterpret_cast<float*>(shared) + TOKENS * k_slice / 2 + DEPTH * R * 2 * THREADS * 5;

  float acc[R][MT][4];
  each_value<R, MT>([&](int rt, int nt, int e) { acc[rt][nt][e] = 0.f; });

  auto compute = [&](const Words(&ws)[R][2], const u32(&szs)[R][2], int i) {
    const int step = i * KW + warp_k;
    u32 zero[R][2], scale_pair[R][2];
    float scale[R][2];
#pragma unroll
    for (int rt = 0; rt < R; rt++)
#pragma unroll
      for (int half = 0; half < 2; half++) {
        const float z = half_to_float(szs[rt][half] >> 16) + T::OFFSET;
        zero[rt][half] = T::pair(z, z);
        scale[rt][half] = half_to_float(szs[rt][half]);
        if (SCALE_FIRST) scale_pair[rt][half] = T::pair(scale[rt][half], scale[rt][half]);
      }
    // The step's A operands (k16 step 2j + h of row tile rt), dequantized once and used for every token tile.
    u32 a[4][2][R][4];
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int rt = 0; rt < R; rt++) {
        const u32 w0 = ws[rt][0].w[j], w1 = ws[rt][1].w[j];
        const u32 pairs[2][4] = {{nibble_pair<T::MAGIC, 0>(w0), nibble_pair<T::MAGIC, 0>(w1),
                                  nibble_pair<T::MAGIC, 2>(w0), nibble_pair<T::MAGIC, 2>(w1)},
                                 {nibble_pair<T::MAGIC, 1>(w0), nibble_pair<T::MAGIC, 1>(w1),
                                  nibble_pair<T::MAGIC, 3>(w0), nibble_pair<T::MAGIC, 3>(w1)}};
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
          for (int r = 0; r < 4; r++) {
            a[j][h][rt][r] = T::sub(pairs[h][r], zero[rt][r & 1]);
            if (SCALE_FIRST) a[j][h][rt][r] = T::mul(a[j][h][rt][r], scale_pair[rt][r & 1]);
          }
      }
    float part[R][MT][4];
    if (!SCALE_FIRST) each_value<R, MT>([&](int rt, int nt, int e) { part[rt][nt][e] = 0.f; });
#pragma unroll
    for (int nt = 0; nt < MT; nt++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const u32 chunk = b_row + nt * 8 * chunks * 16 + (step * 16 + 4 * t) * 16;
        const Words b0 = load_shared(chunk + ((2 * h) ^ b_swizzle) * 16);
        const Words b1 = load_shared(chunk + ((2 * h + 1) ^ b_swizzle) * 16);
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
          for (int rt = 0; rt < R; rt++)
            T::mma(SCALE_FIRST ? acc[rt][nt] : part[rt][nt], a[j][h][rt], b0.w[j], b1.w[j]);
      }
    if (!SCALE_FIRST)
      each_value<R, MT>([&](int rt, int nt, int e) { acc[rt][nt][e] += scale[rt][e >> 1] * part[rt][nt][e]; });
  };

  // A finished row tile: warps 1.. of each row group hand their sums to warp 0 (added in warp order), which writes
  // the output, or with split K its fp32 partial; the slice that finishes the tile last adds the partials in slice
  // order and writes the output.
  auto finish = [&](int tile) {
    const int tile_index = first_tile + tile;
    const int row0 = tile_index * BLOCK_ROWS + lane_row;
    auto slot = [&](int k, int rt, int nt, int e) {  // warp k's value in the reduction
      return (((k - 1) * RW + warp_row) * VALUES + (rt * MT + nt) * 4 + e) * 32 + lane;
    };
    if (KW > 1) {
      if (warp_k > 0)
        each_value<R, MT>([&](int rt, int nt, int e) { reduce[slot(warp_k, rt, nt, e)] = acc[rt][nt][e]; });
      __syncthreads();
      if (warp_k == 0)
        for (int k = 1; k < KW; k++)
          each_value<R, MT>([&](int rt, int nt, int e) { acc[rt][nt][e] += reduce[slot(k, rt, nt, e)]; });
      __syncthreads();
    }
    // Accumulator element e of tile (rt, nt): row row0 + 16 rt + 8 (e >> 1), token 8 nt + 2 t + (e & 1).
    auto store = [&](auto&& write) {  // write(row, token, value) for each element inside the output (warp_k 0)
      if (warp_k == 0)
        each_value<R, MT>([&](int rt, int nt, int e) {
          const int row = row0 + rt * 16 + 8 * (e >> 1), token = nt * 8 + 2 * t + (e & 1);
          if (row < N && token < M) write(row, token, acc[rt][nt][e]);
        });
    };
    if (splits == 1) {
      store([&](int row, int token, float value) {
        y[static_cast<long>(token) * N + row] = T::round(value + (bias ? bias[row] : 0.f));
      });
    } else {
      store([&](int row, int token, float value) {
        partials[(static_cast<long>(split) * M + token) * N + row] = value;
      });
    }
    if (splits > 1) {
      __threadfence();
      __syncthreads();
      if (tid == 0) finishing = atomicAdd(counters + tile_index, 1u) == static_cast<u32>(splits - 1);
      __syncthreads();
      if (finishing) {
        __threadfence();
        store([&](int row, int token, float) {
          float sum = bias ? bias[row] : 0.f;
          for (int s = 0; s < splits; s++) sum += __ldcg(partials + (static_cast<long>(s) * M + token) * N + row);
          y[static_cast<long>(token) * N + row] = T::round(sum);
        });
        if (tid == 0) counters[tile_index] = 0;
      }
    }
    each_value<R, MT>([&](int rt, int nt, int e) { acc[rt][nt][e] = 0.f; });
  };

  int tile = 0, step = 0;  // the (tile, step) to compute
  for (int f = 0; f < total; f++) {
    if (f + DEPTH - 1 < total) {  // into the slot this thread read for step f - 1, before this copy was issued
      copy_step((f + DEPTH - 1) % DEPTH, load_tile, load_step);
      advance(load_tile, load_step);
    }
    commit_copies();
    wait_copies<DEPTH - 1>();  // step f is in
    const int slot = f % DEPTH;
    Words ws[R][2];
    u32 szs[R][2];
#pragma unroll
    for (int rt = 0; rt < R; rt++)
#pragma unroll
      for (int half = 0; half < 2; half++) {
        ws[rt][half] = load_shared(word_slot(slot, rt, half));
        szs[rt][half] = load_shared_word(scale_slot(slot, rt, half));
      }
    compute(ws, szs, step);
    if (step == my_steps - 1) finish(tile);
    advance(tile, step);
  }
}

// BOUNDS: (threads), where ptxas may cap the registers for occupancy, or (threads, 1), where it does not.
#define AWQD_W4_MMA(NAME, BOUNDS, MT, R, RW, KW, DEPTH, GROUP, SCALE_FIRST, BF16)                                      \
  extern "C" __global__ void __launch_bounds__ BOUNDS                                                    \
      NAME(const u16* x, const Words* qweight, const u32* scale_zero, const float* bias, u16* y, float* partials, \
           u32* counters, int M, int N, int K, int k_slice, int tiles) {                                        \
    w4_mma<MT, R, RW, KW, DEPTH, GROUP, SCALE_FIRST, BF16>(x, qweight, scale_zero, bias, y, partials, counters, M, \
                                                           N, K, k_slice, tiles);                               \
  }

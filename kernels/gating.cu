/* Sigmoid gating (see the header).
 *
 * Parallelisation: elementwise, one thread per output element in a
 * grid-stride loop (256 threads, at most 65535 blocks), the channel
 * fastest so that a warp reads and writes consecutive floats of a pixel
 * row. The gate (m[p] or e[c]) is re-read per element; those reads hit L1
 * and the sigmoid costs far less than the memory traffic, so precomputing
 * the gate in a separate pass would only add a launch. */
#include "common.cuh"
#include "gating.cuh"

#define GL__K_GATE_THREADS 256

namespace {

__global__ void gl__k_sigmoid_kernel(const float *x, float *y, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    y[i] = gl__k_sigmoid(x[i]);
}

/* PER_CHANNEL selects mul_channel (gate e[b*ch + c]), else mul_map (gate
 * m[b*hw + p]). */
template <bool PER_CHANNEL>
__global__ void gl__k_gate_kernel(const float *x, const float *g, float *y, uint32_t batch,
                                  size_t hw, uint32_t ch, size_t ld_x, size_t ld_y, bool sig) {
  const size_t total = (size_t)batch * hw * ch;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    const size_t row = i / ch; /* b*hw + p */
    const uint32_t c = (uint32_t)(i - row * ch);
    float gate = PER_CHANNEL ? g[(row / hw) * ch + c] : g[row];
    if (sig)
      gate = gl__k_sigmoid(gate);
    y[row * ld_y + c] = x[row * ld_x + c] * gate;
  }
}

template <bool PER_CHANNEL>
cudaError_t gl__k_gate(const float *x, const float *g, float *y, uint32_t batch, size_t hw,
                       uint32_t ch, size_t ld_x, size_t ld_y, int apply_sigmoid,
                       cudaStream_t stream) {
  if (batch == 0 || hw == 0 || ch == 0 || ld_x < ch || ld_y < ch || !x || !g || !y)
    return cudaErrorInvalidValue;
  const size_t total = (size_t)batch * hw * ch;
  gl__k_gate_kernel<PER_CHANNEL>
      <<<gl__k_blocks(total, GL__K_GATE_THREADS), GL__K_GATE_THREADS, 0, stream>>>(
          x, g, y, batch, hw, ch, ld_x, ld_y, apply_sigmoid != 0);
  return gl__k_launched();
}

} // namespace

extern "C" cudaError_t gl__k_sigmoid(const float *x, float *y, size_t n, cudaStream_t stream) {
  if (n == 0 || !x || !y)
    return cudaErrorInvalidValue;
  gl__k_sigmoid_kernel<<<gl__k_blocks(n, GL__K_GATE_THREADS), GL__K_GATE_THREADS, 0, stream>>>(
      x, y, n);
  return gl__k_launched();
}

extern "C" cudaError_t gl__k_mul_map(const float *x, const float *m, float *y, uint32_t batch,
                                     size_t hw, uint32_t ch, size_t ld_x, size_t ld_y,
                                     int apply_sigmoid, cudaStream_t stream) {
  return gl__k_gate<false>(x, m, y, batch, hw, ch, ld_x, ld_y, apply_sigmoid, stream);
}

extern "C" cudaError_t gl__k_mul_channel(const float *x, const float *e, float *y, uint32_t batch,
                                         size_t hw, uint32_t ch, size_t ld_x, size_t ld_y,
                                         int apply_sigmoid, cudaStream_t stream) {
  return gl__k_gate<true>(x, e, y, batch, hw, ch, ld_x, ld_y, apply_sigmoid, stream);
}

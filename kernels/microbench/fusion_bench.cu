// Figure 7 of the POD-Attention paper: ways of fusing a compute-bound and a memory-bound kernel.
//
//   fusion_bench --blocks 2048 --threads 256 --mem-steps 64 --inner 128 --iters 20,40,...,200
//                --repeats 5 --calls 20
//
// Memory kernel: every CTA streams `mem-steps` tiles of c += a + b (arrays far larger than L2).
// Compute kernel: every CTA runs `iters` steps of `inner` dependent multiply-adds per thread, on
// registers. Both synchronise their threads after each step, as the paper's kernels do, so the
// fusion variants pay for their barriers. Variants (one CSV line each, per iteration count):
//   memory_only, compute_only  the two kernels alone (the ideal is max of the two)
//   serial                     two launches on one stream
//   streams                    two launches on two streams
//   intra_thread               one launch, every thread does a compute step and a memory step
//   warp_parallel              one launch of 2x threads: the first half computes and the second
//                              half streams, each half with its own named barrier (bar.sync id, n)
//   cta_parallel               one launch of 2x CTAs split by block index
//   sm_aware_cta               one launch of 2x CTAs; each reads %smid, takes a ticket from that
//                              SM's counter and alternates compute/memory per SM, falling back to
//                              the other work when one runs out; the last CTA resets the counters
// Every variant's outputs are compared bit for bit with the serial variant's; a mismatch is
// reported (verified=0) and its time left empty. Nothing assumes an SM count or a GPU model.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CHECK(x)                                                                        \
  do {                                                                                  \
    cudaError_t err_ = (x);                                                             \
    if (err_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(err_),      \
                   __FILE__, __LINE__, cudaGetErrorString(err_));                       \
      std::exit(2);                                                                     \
    }                                                                                   \
  } while (0)

struct Params {
  int blocks, threads, mem_steps, inner, iters;
  float *a, *b, *c, *d;
};

// Named barrier for `count` threads (a multiple of 32): only the warps of one role wait.
__device__ __forceinline__ void named_barrier(int id, int count) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}

__device__ __forceinline__ unsigned smid() {
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}

// One CTA's share of the memory kernel (tile `work`), run by `nthreads` threads numbered `tid`.
template <int kBarrier>
__device__ void memory_work(const Params& p, int work, int tid, int nthreads) {
  for (int s = 0; s < p.mem_steps; ++s) {
    size_t i = ((size_t)s * p.blocks + work) * p.threads + tid;
    p.c[i] += p.a[i] + p.b[i];
    if (kBarrier == 0) __syncthreads(); else named_barrier(kBarrier, nthreads);
  }
}

// One CTA's share of the compute kernel: 4 independent chains so that the FMA pipes fill.
template <int kBarrier>
__device__ void compute_work(const Params& p, int work, int tid, int nthreads) {
  size_t i = (size_t)work * p.threads + tid;
  float x0 = p.d[4 * i], x1 = p.d[4 * i + 1], x2 = p.d[4 * i + 2], x3 = p.d[4 * i + 3];
  for (int s = 0; s < p.iters; ++s) {
    for (int k = 0; k < p.inner; ++k) {
      x0 = x0 * 0.999f + 0.001f; x1 = x1 * 0.999f + 0.002f;
      x2 = x2 * 0.999f + 0.003f; x3 = x3 * 0.999f + 0.004f;
    }
    if (kBarrier == 0) __syncthreads(); else named_barrier(kBarrier, nthreads);
  }
  p.d[4 * i] = x0; p.d[4 * i + 1] = x1; p.d[4 * i + 2] = x2; p.d[4 * i + 3] = x3;
}

__global__ void memory_kernel(Params p) { memory_work<0>(p, blockIdx.x, threadIdx.x, blockDim.x); }
__global__ void compute_kernel(Params p) { compute_work<0>(p, blockIdx.x, threadIdx.x, blockDim.x); }

// Each thread interleaves a compute step and a memory step; one CTA-wide barrier per step.
__global__ void intra_thread_kernel(Params p) {
  size_t i = (size_t)blockIdx.x * p.threads + threadIdx.x;
  float x0 = p.d[4 * i], x1 = p.d[4 * i + 1], x2 = p.d[4 * i + 2], x3 = p.d[4 * i + 3];
  int steps = max(p.iters, p.mem_steps);
  for (int s = 0; s < steps; ++s) {
    if (s < p.iters) {
      for (int k = 0; k < p.inner; ++k) {
        x0 = x0 * 0.999f + 0.001f; x1 = x1 * 0.999f + 0.002f;
        x2 = x2 * 0.999f + 0.003f; x3 = x3 * 0.999f + 0.004f;
      }
    }
    if (s < p.mem_steps) {
      size_t j = ((size_t)s * p.blocks + blockIdx.x) * p.threads + threadIdx.x;
      p.c[j] += p.a[j] + p.b[j];
    }
    __syncthreads();
  }
  p.d[4 * i] = x0; p.d[4 * i + 1] = x1; p.d[4 * i + 2] = x2; p.d[4 * i + 3] = x3;
}

// HFuse-style: threads [0, T) compute with barrier 1, threads [T, 2T) stream with barrier 2.
__global__ void warp_parallel_kernel(Params p) {
  int t = threadIdx.x, n = p.threads;
  if (t < n) compute_work<1>(p, blockIdx.x, t, n);
  else memory_work<2>(p, blockIdx.x, t - n, n);
}

// CTA-parallel: block index picks the work; the hardware decides which CTAs share an SM.
__global__ void cta_parallel_kernel(Params p) {
  int b = blockIdx.x;
  if (b < p.blocks) compute_work<0>(p, b, threadIdx.x, blockDim.x);
  else memory_work<0>(p, b - p.blocks, threadIdx.x, blockDim.x);
}

// Counters: [0] next compute tile, [1] next memory tile, [2] CTAs finished, [3..] per-SM tickets.
__global__ void sm_aware_kernel(Params p, unsigned* counters, int num_sms) {
  __shared__ int op, work;
  if (threadIdx.x == 0) {
    unsigned sm = smid() % (unsigned)num_sms;
    unsigned ticket = atomicAdd(&counters[3 + sm], 1u);
    int want = ticket & 1;  // 50:50: alternate compute and memory CTAs on each SM
    int w = (int)atomicAdd(&counters[want], 1u);
    if (w >= p.blocks) {  // that work ran out: take the other
      want ^= 1;
      w = (int)atomicAdd(&counters[want], 1u);
    }
    op = want;
    work = w;
  }
  __syncthreads();
  if (work < p.blocks) {
    if (op == 0) compute_work<0>(p, work, threadIdx.x, blockDim.x);
    else memory_work<0>(p, work, threadIdx.x, blockDim.x);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(&counters[2], 1u) == gridDim.x - 1) {  // last CTA: ready for the next launch
      for (int i = 0; i < 3 + num_sms; ++i) counters[i] = 0;
      __threadfence();
    }
  }
}

struct Bench {
  Params p{};
  size_t mem_elems = 0, comp_elems = 0;
  float *a0 = nullptr, *c0 = nullptr, *d0 = nullptr;  // initial contents, restored before checks
  unsigned* counters = nullptr;
  int num_sms = 0;
  cudaStream_t s1{}, s2{};
  cudaEvent_t e0{}, e1{}, join{};

  void restore() {
    CHECK(cudaMemcpy(p.c, c0, mem_elems * sizeof(float), cudaMemcpyDeviceToDevice));
    CHECK(cudaMemcpy(p.d, d0, comp_elems * sizeof(float), cudaMemcpyDeviceToDevice));
    // device-to-device copies do not wait on the host, and s1/s2 do not wait on the legacy stream
    CHECK(cudaDeviceSynchronize());
  }

  void launch(const std::string& v) {
    int B = p.blocks, T = p.threads;
    if (v == "memory_only") memory_kernel<<<B, T, 0, s1>>>(p);
    else if (v == "compute_only") compute_kernel<<<B, T, 0, s1>>>(p);
    else if (v == "serial") { compute_kernel<<<B, T, 0, s1>>>(p); memory_kernel<<<B, T, 0, s1>>>(p); }
    else if (v == "streams") {
      CHECK(cudaEventRecord(join, s1));
      CHECK(cudaStreamWaitEvent(s2, join, 0));
      compute_kernel<<<B, T, 0, s1>>>(p);
      memory_kernel<<<B, T, 0, s2>>>(p);
      CHECK(cudaEventRecord(join, s2));
      CHECK(cudaStreamWaitEvent(s1, join, 0));
    } else if (v == "intra_thread") intra_thread_kernel<<<B, T, 0, s1>>>(p);
    else if (v == "warp_parallel") warp_parallel_kernel<<<B, 2 * T, 0, s1>>>(p);
    else if (v == "cta_parallel") cta_parallel_kernel<<<2 * B, T, 0, s1>>>(p);
    else if (v == "sm_aware_cta") sm_aware_kernel<<<2 * B, T, 0, s1>>>(p, counters, num_sms);
    else { std::fprintf(stderr, "unknown variant %s\n", v.c_str()); std::exit(2); }
    CHECK(cudaGetLastError());
  }

  // Median, min and max ms per launch over `repeats` samples of `calls` back-to-back launches.
  void time(const std::string& v, int repeats, int calls, double* med, double* lo, double* hi) {
    launch(v);  // warm-up
    CHECK(cudaStreamSynchronize(s1));
    std::vector<double> ms;
    for (int r = 0; r < repeats; ++r) {
      CHECK(cudaEventRecord(e0, s1));
      for (int k = 0; k < calls; ++k) launch(v);
      CHECK(cudaEventRecord(e1, s1));
      CHECK(cudaEventSynchronize(e1));
      float t = 0;
      CHECK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t / calls);
    }
    std::sort(ms.begin(), ms.end());
    *med = ms[ms.size() / 2];
    *lo = ms.front();
    *hi = ms.back();
  }
};

static std::vector<int> parse_list(const char* s) {
  std::vector<int> out;
  std::string text(s);
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t next = text.find(',', pos);
    if (next == std::string::npos) next = text.size();
    if (next > pos) out.push_back(std::atoi(text.substr(pos, next - pos).c_str()));
    pos = next + 1;
  }
  return out;
}

int main(int argc, char** argv) {
  int blocks = 2048, threads = 256, mem_steps = 64, inner = 128, repeats = 5, calls = 10;
  std::vector<int> iters = {20, 40, 60, 80, 100, 120, 140, 160, 180, 200};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k(argv[i]);
    if (k == "--blocks") blocks = std::atoi(argv[i + 1]);
    else if (k == "--threads") threads = std::atoi(argv[i + 1]);
    else if (k == "--mem-steps") mem_steps = std::atoi(argv[i + 1]);
    else if (k == "--inner") inner = std::atoi(argv[i + 1]);
    else if (k == "--repeats") repeats = std::atoi(argv[i + 1]);
    else if (k == "--calls") calls = std::atoi(argv[i + 1]);
    else if (k == "--iters") iters = parse_list(argv[i + 1]);
    else { std::fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
  }
  if (threads % 32 || threads < 32 || 2 * threads > 1024 || blocks < 1 || mem_steps < 1 || inner < 1 ||
      repeats < 1 || calls < 1 || iters.empty()) {
    std::fprintf(stderr, "bad sizes: threads must be a multiple of 32 up to 512 (the warp-parallel "
                         "variant launches twice as many), the rest positive\n");
    return 2;
  }
  int dev = 0;
  cudaDeviceProp prop{};
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaGetDeviceProperties(&prop, dev));

  Bench bench;
  bench.num_sms = prop.multiProcessorCount;
  bench.mem_elems = (size_t)blocks * threads * mem_steps;
  bench.comp_elems = (size_t)blocks * threads * 4;
  Params& p = bench.p;
  p.blocks = blocks; p.threads = threads; p.mem_steps = mem_steps; p.inner = inner;
  size_t mb = bench.mem_elems * sizeof(float), cb = bench.comp_elems * sizeof(float);
  CHECK(cudaMalloc(&p.a, mb)); CHECK(cudaMalloc(&p.b, mb)); CHECK(cudaMalloc(&p.c, mb));
  CHECK(cudaMalloc(&p.d, cb)); CHECK(cudaMalloc(&bench.c0, mb)); CHECK(cudaMalloc(&bench.d0, cb));
  CHECK(cudaMalloc(&bench.counters, (3 + bench.num_sms) * sizeof(unsigned)));
  CHECK(cudaMemset(bench.counters, 0, (3 + bench.num_sms) * sizeof(unsigned)));
  {
    std::vector<float> h(bench.mem_elems);
    for (size_t i = 0; i < h.size(); ++i) h[i] = (float)(i % 97) * 0.01f;
    CHECK(cudaMemcpy(p.a, h.data(), mb, cudaMemcpyHostToDevice));
    for (size_t i = 0; i < h.size(); ++i) h[i] = (float)(i % 89) * 0.02f;
    CHECK(cudaMemcpy(p.b, h.data(), mb, cudaMemcpyHostToDevice));
    for (size_t i = 0; i < h.size(); ++i) h[i] = (float)(i % 13);
    CHECK(cudaMemcpy(bench.c0, h.data(), mb, cudaMemcpyHostToDevice));
    std::vector<float> hd(bench.comp_elems);
    for (size_t i = 0; i < hd.size(); ++i) hd[i] = (float)(i % 7) * 0.5f;
    CHECK(cudaMemcpy(bench.d0, hd.data(), cb, cudaMemcpyHostToDevice));
  }
  CHECK(cudaStreamCreateWithFlags(&bench.s1, cudaStreamNonBlocking));
  CHECK(cudaStreamCreateWithFlags(&bench.s2, cudaStreamNonBlocking));
  CHECK(cudaEventCreate(&bench.e0)); CHECK(cudaEventCreate(&bench.e1));
  CHECK(cudaEventCreateWithFlags(&bench.join, cudaEventDisableTiming));

  const char* variants[] = {"memory_only", "compute_only", "serial", "streams", "intra_thread",
                            "warp_parallel", "cta_parallel", "sm_aware_cta"};
  std::printf("compute_iters,variant,time_ms_median,time_ms_min,time_ms_max,repeats,calls,verified,"
              "blocks,threads,mem_steps,inner,mem_bytes,sm_count,gpu_name\n");
  std::vector<float> ref_c(bench.mem_elems), ref_d(bench.comp_elems), got_c(ref_c.size()), got_d(ref_d.size());
  for (int it : iters) {
    p.iters = it;
    for (const char* v : variants) {
      std::string name(v);
      int verified = 1;
      bench.restore();
      bench.launch(name);
      CHECK(cudaStreamSynchronize(bench.s1));
      if (name == "serial") {
        CHECK(cudaMemcpy(ref_c.data(), p.c, mb, cudaMemcpyDeviceToHost));
        CHECK(cudaMemcpy(ref_d.data(), p.d, cb, cudaMemcpyDeviceToHost));
      } else if (name != "memory_only" && name != "compute_only") {
        CHECK(cudaMemcpy(got_c.data(), p.c, mb, cudaMemcpyDeviceToHost));
        CHECK(cudaMemcpy(got_d.data(), p.d, cb, cudaMemcpyDeviceToHost));
        verified = std::memcmp(got_c.data(), ref_c.data(), mb) == 0 &&
                   std::memcmp(got_d.data(), ref_d.data(), cb) == 0;
      }
      double med = 0, lo = 0, hi = 0;
      if (verified) bench.time(name, repeats, calls, &med, &lo, &hi);
      // 3 arrays read or written per memory step: a, b read, c read and written
      if (verified)
        std::printf("%d,%s,%.6f,%.6f,%.6f,%d,%d,1,%d,%d,%d,%d,%zu,%d,\"%s\"\n", it, v, med, lo, hi, repeats,
                    calls, blocks, threads, mem_steps, inner, 4 * mb, bench.num_sms, prop.name);
      else
        std::printf("%d,%s,,,,%d,%d,0,%d,%d,%d,%d,%zu,%d,\"%s\"\n", it, v, repeats, calls, blocks, threads,
                    mem_steps, inner, 4 * mb, bench.num_sms, prop.name);
      std::fflush(stdout);
    }
  }
  return 0;
}

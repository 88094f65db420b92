// The fused routed-MoE op of one layer: plan (validate + group tokens by expert) and run.
#pragma once

#include <cstdint>
#include <memory>

#include "int4_moe/int4_moe.h"
#include "int4_moe/packed_experts.h"
#include "thread_pool.h"

namespace hk2 {

struct MoeCall {
  const ExpertStore* experts;
  const void* x;          // x: [T, D] fp32 or bf16
  bool x_bf16;
  int T;
  const void* ids;        // expert_ids: [T, K] int32 or int64
  bool ids_i64;
  int K;
  const float* weights;   // weights: [T, K] fp32
  float* out;             // out: [T, D] fp32 (fully overwritten)
  bool fast;              // q8 activations (fast) or fp32 (exact)
  const MoeKernels* kern;
};

class MoeJob;

// Checks the call (ids in range, experts loaded) and groups tokens by expert; throws hk2::Error.
std::shared_ptr<MoeJob> plan_moe(const MoeCall& call, int nthreads);
// Runs on every worker of `pool`: out = sum_k w[t,k] * down(silu(gate x[t]) * up x[t]).
void run_moe(MoeJob& job, ThreadPool& pool, int tid, int nthreads);

}  // namespace hk2

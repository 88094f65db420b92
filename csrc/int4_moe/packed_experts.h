// ExpertStore: one MoE layer's INT4 experts in host RAM, in the kernel layout "ct-int4-g32".
//
// [NOTE] Layout "ct-int4-g32" = the compressed-tensors bytes unchanged (see int4_moe.h), so the loader
// copies each checkpoint tensor once and nothing is repacked. Per expert e, one contiguous,
// 64-byte aligned block holds, each section 64-byte aligned:
//   gate_packed [I, D/2] u8 | up_packed [I, D/2] | down_packed [D, I/2] |
//   gate_scale [I, D/32] bf16 | up_scale [I, D/32] | down_scale [D, I/32]
// The memory comes from mmap (page aligned, untouched until loaded), so that a NUMA build can bind
// each node's slice with mbind before the first touch (docs/kernels.md, "NUMA").
#pragma once

#include <cstdint>
#include <string>

#include "int4_moe/int4_moe.h"

namespace hk2 {

constexpr const char* kLayoutCt = "ct-int4-g32";

struct ExpertSections {  // byte offsets inside one expert's block
  int64_t gate_packed, up_packed, down_packed, gate_scale, up_scale, down_scale, bytes;
};

class ExpertStore {
 public:
  ExpertStore(int num_experts, int hidden, int intermediate, const std::string& layout);
  ~ExpertStore();
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  // Copies one expert's checkpoint tensors (already validated for shape by the caller).
  void load_expert(int e, const void* gate_packed, const void* gate_scale, const void* up_packed,
                   const void* up_scale, const void* down_packed, const void* down_scale);

  Int4Matrix gate(int e) const { return matrix(e, s_.gate_packed, s_.gate_scale, I_, D_); }
  Int4Matrix up(int e) const { return matrix(e, s_.up_packed, s_.up_scale, I_, D_); }
  Int4Matrix down(int e) const { return matrix(e, s_.down_packed, s_.down_scale, D_, I_); }

  int num_experts() const { return E_; }
  int hidden() const { return D_; }
  int intermediate() const { return I_; }
  const std::string& layout() const { return layout_; }
  const ExpertSections& sections() const { return s_; }
  int64_t expert_stride() const { return stride_; }
  int64_t total_bytes() const { return total_; }
  uint8_t* data() const { return base_; }
  bool loaded(int e) const { return loaded_[e] != 0; }

 private:
  Int4Matrix matrix(int e, int64_t packed, int64_t scale, int rows, int cols) const {
    const uint8_t* b = base_ + stride_ * e;
    return {b + packed, reinterpret_cast<const uint16_t*>(b + scale), rows, cols};
  }
  int E_, D_, I_;
  std::string layout_;
  ExpertSections s_;
  int64_t stride_, total_;
  uint8_t* base_;
  uint8_t* loaded_;
};

}  // namespace hk2

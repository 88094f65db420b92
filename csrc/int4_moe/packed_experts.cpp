#include "int4_moe/packed_experts.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "common.h"

namespace hk2 {

ExpertStore::ExpertStore(int num_experts, int hidden, int intermediate, const std::string& layout)
    : E_(num_experts), D_(hidden), I_(intermediate), layout_(layout) {
  HK2_CHECK(layout == kLayoutCt, "unsupported expert layout '" << layout << "'");
  HK2_CHECK(E_ > 0 && D_ > 0 && I_ > 0, "experts need num_experts, hidden, intermediate > 0");
  HK2_CHECK(D_ % 32 == 0 && I_ % 32 == 0,
            "hidden and intermediate must be multiples of the group size 32");
  const int64_t gu = int64_t(I_) * D_ / 2, gs = int64_t(I_) * (D_ / 32) * 2;
  const int64_t dn = int64_t(D_) * I_ / 2, ds = int64_t(D_) * (I_ / 32) * 2;
  int64_t o = 0;
  auto take = [&](int64_t n) { int64_t at = o; o = round_up(o + n, 64); return at; };
  s_.gate_packed = take(gu);
  s_.up_packed = take(gu);
  s_.down_packed = take(dn);
  s_.gate_scale = take(gs);
  s_.up_scale = take(gs);
  s_.down_scale = take(ds);
  s_.bytes = o;
  stride_ = o;
  total_ = stride_ * E_;
  void* p = mmap(nullptr, size_t(total_), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  HK2_CHECK(p != MAP_FAILED, "cannot allocate " << total_ << " bytes for the experts");
#ifdef MADV_HUGEPAGE
  madvise(p, size_t(total_), MADV_HUGEPAGE);  // fewer TLB misses while streaming; harmless if refused
#endif
  base_ = static_cast<uint8_t*>(p);
  loaded_ = static_cast<uint8_t*>(std::calloc(size_t(E_), 1));
}

ExpertStore::~ExpertStore() {
  munmap(base_, size_t(total_));
  std::free(loaded_);
}

void ExpertStore::load_expert(int e, const void* gate_packed, const void* gate_scale,
                              const void* up_packed, const void* up_scale, const void* down_packed,
                              const void* down_scale) {
  HK2_CHECK(e >= 0 && e < E_, "expert " << e << " out of range [0, " << E_ << ")");
  uint8_t* b = base_ + stride_ * e;
  const int64_t gu = int64_t(I_) * D_ / 2, gs = int64_t(I_) * (D_ / 32) * 2;
  const int64_t dn = int64_t(D_) * I_ / 2, ds = int64_t(D_) * (I_ / 32) * 2;
  std::memcpy(b + s_.gate_packed, gate_packed, gu);
  std::memcpy(b + s_.up_packed, up_packed, gu);
  std::memcpy(b + s_.down_packed, down_packed, dn);
  std::memcpy(b + s_.gate_scale, gate_scale, gs);
  std::memcpy(b + s_.up_scale, up_scale, gs);
  std::memcpy(b + s_.down_scale, down_scale, ds);
  loaded_[e] = 1;
}

}  // namespace hk2

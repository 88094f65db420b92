// Test builds only: the AVX-512 and AMX kernel sources compiled for any x86-64 with AVX2, on SIMDe
// (Debian libsimde-dev) plus amx_emu.h. Fill-ins below cover the intrinsics SIMDe 0.7.4 lacks.
#pragma once

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include "tests/emu/amx_emu.h"
#include "tests/emu/simde_fillins.h"

#pragma once
#include <seccomp.h>
#include <stdint.h>

// Swift cannot import function-like macros.
static inline uint32_t sbx_scmp_act_errno(uint16_t e) { return SCMP_ACT_ERRNO(e); }
static inline uint32_t sbx_scmp_act_allow(void) { return SCMP_ACT_ALLOW; }
static inline uint32_t sbx_scmp_act_kill_process(void) { return SCMP_ACT_KILL_PROCESS; }
static inline uint32_t sbx_scmp_act_trap(void) { return SCMP_ACT_TRAP; }
static inline uint32_t sbx_scmp_act_log(void) { return SCMP_ACT_LOG; }
static inline uint32_t sbx_scmp_arch_native(void) { return SCMP_ARCH_NATIVE; }

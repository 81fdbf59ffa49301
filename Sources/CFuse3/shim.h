#pragma once
// At 312 Debian's versioned symbols make fuse_session_loop_mt a real function.
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

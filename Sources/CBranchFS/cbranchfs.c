#include "cbranchfs.h"

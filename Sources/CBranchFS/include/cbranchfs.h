#pragma once
// Syscalls and constants Swift's Glibc module hides (it is built without _GNU_SOURCE).
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/xattr.h>

extern const unsigned CBFS_RENAME_NOREPLACE;
extern const unsigned CBFS_RENAME_EXCHANGE;
extern const long CBFS_UTIME_OMIT;
extern const long CBFS_UTIME_NOW;

/// Copies `len` bytes from `in` to `out` (both at offset 0 onwards) with copy_file_range,
/// falling back to read/write across filesystems. Returns 0 or -errno.
int cbfs_copy_data(int in, int out, uint64_t len);
/// renameat2(2) (tests use it for RENAME_NOREPLACE through a branch).
int cbfs_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned flags);
/// A whiteout: a character device 0/0 (kernel overlayfs's format).
int cbfs_mknod_whiteout(int dirfd, const char *name);
int cbfs_mknodat(int dirfd, const char *name, mode_t mode, uint64_t rdev);
int cbfs_is_whiteout(mode_t mode, uint64_t rdev);
/// fsync of a regular file or directory given by path relative to dirfd (others: no-op); 0 or -errno.
int cbfs_fsync_at(int dirfd, const char *path);
/// fsyncs `n` paths (files or directories) from a persistent pool of threads, so the disk sees
/// them together; 0, or -errno of a failure with its index in *failed_index.
int cbfs_fsync_many(const char *const *paths, int n, int *failed_index);

#pragma once
// Syscalls and constants Swift's Glibc module hides (it is built without _GNU_SOURCE).
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/xattr.h>

extern const unsigned CBFS_RENAME_NOREPLACE;
extern const unsigned CBFS_RENAME_EXCHANGE;
/// O_NOATIME (hidden from Swift without _GNU_SOURCE): reading a file to commit it leaves its atime alone.
extern const int CBFS_O_NOATIME;
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
/// fsyncs `npaths` paths (files or directories), then `nfds` open files, from a persistent pool
/// of threads, so the disk sees them together; 0, or -errno of a failure with its index (paths
/// first, then fds) in *failed_index.
int cbfs_fsync_many(const char *const *paths, int npaths, const int *fds, int nfds, int *failed_index);
/// Sets FS_TOPDIR_FL (`chattr +T`) on the directory open at `fd`; 0 or -errno (-ENOTTY or
/// -EOPNOTSUPP where the filesystem has no such flag).
int cbfs_set_topdir(int fd);
/// 1 if the directory open at `fd` carries FS_TOPDIR_FL, 0 if not, -errno if it has no flags.
int cbfs_is_topdir(int fd);

struct iovec;
/// Transport for libfuse's custom I/O (fuse_session_custom_io): plain read/writev/splice on
/// the /dev/fuse fd, except that the INIT reply also accepts FUSE_HANDLE_KILLPRIV_V2 when the
/// kernel offers it (libfuse 3.14 does not know the flag). With it the kernel marks the mount
/// SB_NOSEC and stops asking for security.capability before every write; the server then owes
/// the kernel what it no longer does: clearing setuid/setgid when a caller without
/// CAP_FSETID writes or truncates (see FuseServer), capabilities being dropped by the backing
/// filesystem itself on the server's own write.
ssize_t cbfs_io_read(int fd, void *buf, size_t len, void *userdata);
ssize_t cbfs_io_writev(int fd, struct iovec *iov, int count, void *userdata);
ssize_t cbfs_io_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned flags, void *userdata);
ssize_t cbfs_io_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned flags, void *userdata);

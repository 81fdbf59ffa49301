#include "cbranchfs.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <pthread.h>

const unsigned CBFS_RENAME_NOREPLACE = RENAME_NOREPLACE;
const unsigned CBFS_RENAME_EXCHANGE = RENAME_EXCHANGE;
const int CBFS_O_NOATIME = O_NOATIME;
const long CBFS_UTIME_OMIT = UTIME_OMIT;
const long CBFS_UTIME_NOW = UTIME_NOW;

int cbfs_copy_data(int in, int out, uint64_t len) {
    loff_t off_in = 0, off_out = 0;
    while ((uint64_t)off_in < len) {
        ssize_t n = copy_file_range(in, &off_in, out, &off_out, len - off_in, 0);
        if (n > 0) continue;
        if (n == 0) break; // source shrank under us
        if (errno == EINTR) continue;
        if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) return -errno;
        // Different filesystems (older kernels) or a special file: plain copy.
        char buf[1 << 16];
        while ((uint64_t)off_in < len) {
            ssize_t r = pread(in, buf, sizeof buf, off_in);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) return -errno;
            if (r == 0) return 0;
            for (ssize_t done = 0; done < r;) {
                ssize_t w = pwrite(out, buf + done, r - done, off_out);
                if (w < 0 && errno == EINTR) continue;
                if (w < 0) return -errno;
                done += w;
                off_out += w;
            }
            off_in += r;
        }
    }
    return 0;
}

int cbfs_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}

int cbfs_mknod_whiteout(int dirfd, const char *name) {
    return mknodat(dirfd, name, S_IFCHR | 0, makedev(0, 0));
}

int cbfs_mknodat(int dirfd, const char *name, mode_t mode, uint64_t rdev) {
    return mknodat(dirfd, name, mode, (dev_t)rdev);
}

int cbfs_is_whiteout(mode_t mode, uint64_t rdev) {
    return S_ISCHR(mode) && major(rdev) == 0 && minor(rdev) == 0;
}


int cbfs_fsync_at(int dirfd, const char *path) {
    // Only files and directories hold data to sync; opening a FIFO would block, a symlink
    // is made durable by its directory.
    struct stat st;
    if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) != 0) return -errno;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) return 0;
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return -errno;
    int r = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return r;
}

// A persistent pool: creating threads per call cost more (70-270 us each, measured) than
// the fsyncs they overlap.
enum { POOL_THREADS = 15 };
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;   // one batch at a time
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER;
static int pool_started;
static unsigned long pool_generation;
static const char *const *job_paths;
static const int *job_fds;
static int job_npaths, job_n, job_next, job_finished, job_failed_index, job_failed_errno;

static void run_jobs(void) {
    for (;;) {
        pthread_mutex_lock(&pool_mu);
        int i = job_next < job_n ? job_next++ : -1;
        pthread_mutex_unlock(&pool_mu);
        if (i < 0) return;
        int r = i < job_npaths ? cbfs_fsync_at(AT_FDCWD, job_paths[i])
                               : (fsync(job_fds[i - job_npaths]) == 0 ? 0 : -errno);
        pthread_mutex_lock(&pool_mu);
        if (r != 0 && job_failed_index < 0) { job_failed_index = i; job_failed_errno = -r; }
        if (++job_finished == job_n) pthread_cond_broadcast(&pool_done);
        pthread_mutex_unlock(&pool_mu);
    }
}

static void *pool_worker(void *arg) {
    (void)arg;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&pool_mu);
        while (pool_generation == seen) pthread_cond_wait(&pool_work, &pool_mu);
        seen = pool_generation;
        pthread_mutex_unlock(&pool_mu);
        run_jobs();
    }
    return NULL;
}

int cbfs_fsync_many(const char *const *paths, int npaths, const int *fds, int nfds, int *failed_index) {
    int n = npaths + nfds;
    pthread_mutex_lock(&pool_lock);
    if (!pool_started) {
        for (int i = 0; i < POOL_THREADS; i++) {
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setstacksize(&attr, 64 * 1024);
            if (pthread_create(&t, &attr, pool_worker, NULL) == 0) pthread_detach(t);
            pthread_attr_destroy(&attr);
        }
        pool_started = 1;
    }
    pthread_mutex_lock(&pool_mu);
    job_paths = paths; job_fds = fds; job_npaths = npaths; job_n = n; job_next = 0; job_finished = 0; job_failed_index = -1; job_failed_errno = 0;
    if (n > 1) { pool_generation++; pthread_cond_broadcast(&pool_work); }
    pthread_mutex_unlock(&pool_mu);
    run_jobs(); // the caller works too
    pthread_mutex_lock(&pool_mu);
    while (job_finished < job_n) pthread_cond_wait(&pool_done, &pool_mu);
    *failed_index = job_failed_index;
    int r = job_failed_index >= 0 ? -job_failed_errno : 0;
    job_n = 0;
    pthread_mutex_unlock(&pool_mu);
    pthread_mutex_unlock(&pool_lock);
    return r;
}

// --- custom /dev/fuse transport -------------------------------------------------------------

#include <linux/fuse.h>
#include <stdatomic.h>
#include <sys/uio.h>

// Per /dev/fuse fd: the unique of an INIT that offered KILLPRIV_V2 and awaits its reply. INIT
// is the first request on a session's fd and its reply the first answer, before any other
// request exists.
#define CBFS_IO_FDS 4096
static _Atomic uint64_t cbfs_init_unique[CBFS_IO_FDS];

ssize_t cbfs_io_read(int fd, void *buf, size_t len, void *userdata) {
    (void)userdata;
    ssize_t n = read(fd, buf, len);
    if (n >= (ssize_t)(sizeof(struct fuse_in_header) + sizeof(struct fuse_init_in)) && fd >= 0 && fd < CBFS_IO_FDS) {
        const struct fuse_in_header *h = buf;
        const struct fuse_init_in *in = (const void *)(h + 1);
        if (h->opcode == FUSE_INIT && (in->flags & FUSE_HANDLE_KILLPRIV_V2)) atomic_store(&cbfs_init_unique[fd], h->unique);
    }
    return n;
}

ssize_t cbfs_io_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;
    if (fd >= 0 && fd < CBFS_IO_FDS && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
        uint64_t want = atomic_load(&cbfs_init_unique[fd]);
        const struct fuse_out_header *h = iov[0].iov_base;
        if (want != 0 && h->unique == want && h->error == 0 && iov[1].iov_len >= offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
            struct fuse_init_out *out = iov[1].iov_base;
            out->flags |= FUSE_HANDLE_KILLPRIV_V2;
            atomic_store(&cbfs_init_unique[fd], 0);
        }
    }
    return writev(fd, iov, count);
}

ssize_t cbfs_io_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned flags, void *userdata) {
    (void)userdata;
    return splice(fdin, offin, fdout, offout, len, flags);
}

ssize_t cbfs_io_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned flags, void *userdata) {
    (void)userdata;
    return splice(fdin, offin, fdout, offout, len, flags);
}

int cbfs_set_topdir(int fd) {
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) return -errno;
    if (flags & FS_TOPDIR_FL) return 0;
    flags |= FS_TOPDIR_FL;
    return ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0 ? 0 : -errno;
}

int cbfs_is_topdir(int fd) {
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) return -errno;
    return (flags & FS_TOPDIR_FL) != 0;
}

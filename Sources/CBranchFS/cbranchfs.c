#include "cbranchfs.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <pthread.h>

const int CBFS_O_PATH = O_PATH;
const int CBFS_O_NOFOLLOW = O_NOFOLLOW;
const int CBFS_AT_EMPTY_PATH = AT_EMPTY_PATH;
const unsigned CBFS_RENAME_NOREPLACE = RENAME_NOREPLACE;
const unsigned CBFS_RENAME_EXCHANGE = RENAME_EXCHANGE;
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

uint64_t cbfs_makedev(unsigned ma, unsigned mi) { return makedev(ma, mi); }

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

struct fsync_job {
    const char *const *paths;
    int n;
    int next;          // next index to take (atomic)
    int failed_index;  // first failure, -1 if none
    int failed_errno;
};

static void *fsync_worker(void *arg) {
    struct fsync_job *job = arg;
    for (;;) {
        int i = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (i >= job->n) return NULL;
        int r = cbfs_fsync_at(AT_FDCWD, job->paths[i]);
        if (r != 0) {
            int expected = -1;
            if (__atomic_compare_exchange_n(&job->failed_index, &expected, i, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                job->failed_errno = -r;
        }
    }
}

int cbfs_fsync_many(const char *const *paths, int n, int max_threads, int *failed_index) {
    struct fsync_job job = { paths, n, 0, -1, 0 };
    int threads = n < max_threads ? n : max_threads;
    pthread_t tids[64];
    if (threads > 64) threads = 64;
    int started = 0;
    // This thread works too; the others only add disk queue depth.
    for (; started < threads - 1; started++)
        if (pthread_create(&tids[started], NULL, fsync_worker, &job) != 0) break;
    fsync_worker(&job);
    for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
    *failed_index = job.failed_index;
    return job.failed_index >= 0 ? -job.failed_errno : 0;
}

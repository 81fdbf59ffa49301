#pragma once
// At 312 Debian's versioned symbols make fuse_session_loop_mt a real function.
#define FUSE_USE_VERSION 312
#include <stddef.h>
#include <fuse_lowlevel.h>

static inline struct fuse_session *cbfs_session_new(int argc, char **argv, const struct fuse_lowlevel_ops *ops, void *userdata) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse_session *se = fuse_session_new(&args, ops, sizeof(*ops), userdata);
    fuse_opt_free_args(&args);
    return se;
}

static inline int cbfs_session_loop_mt(struct fuse_session *se, unsigned max_idle) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    fuse_loop_cfg_set_idle_threads(cfg, max_idle);
    int r = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
    return r;
}

static inline void cbfs_conn_configure(struct fuse_conn_info *conn, unsigned max_write) {
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (conn->capable & FUSE_CAP_SPLICE_READ) conn->want |= FUSE_CAP_SPLICE_READ;
    if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
    // Not auto_inval_data: it would drop a branch file's pages after each of its own writes.
    // FuseServer does that job for main, whose files change behind our back.
    conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
    // READDIRPLUS only when the kernel sees stats follow a listing (a plain find stays cheap).
    if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
    if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
    // Opens are zero-message (ENOSYS), so O_TRUNC must reach us as a SETATTR, not an OPEN flag.
    conn->want &= ~(unsigned)FUSE_CAP_ATOMIC_O_TRUNC;
    conn->max_write = max_write;
    conn->max_readahead = max_write;
}

// Replies with `size` bytes of `fd` at `off`, letting libfuse splice instead of copying.
static inline int cbfs_reply_fd(fuse_req_t req, int fd, size_t size, off_t off) {
    struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
    buf.buf[0].flags = (enum fuse_buf_flags)(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
    buf.buf[0].fd = fd;
    buf.buf[0].pos = off;
    return fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

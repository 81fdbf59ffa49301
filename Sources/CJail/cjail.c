// See include/cjail.h for the shape of the launch.
//
// Both children share the caller's address space and TLS. Rules that follow:
// only raw syscalls (no errno, no PLT, no locks, no malloc), no stack
// protector, no large struct initialisers the compiler could turn into memset.
#include "cjail.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#define MOUNT_ATTR_NOEXEC 0x00000008
#endif
// <linux/mount.h> clashes with glibc 2.36's <sys/mount.h>.
struct sbx_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

#define SECBITS_LOCKED_DOWN 0x2f /* NOROOT|NO_SETUID_FIXUP|KEEP_CAPS_LOCKED and their locks */
#define SECBIT_NO_CAP_AMBIENT_RAISE_AND_LOCK 0xc0

const uint64_t CJAIL_MOUNT_ATTR_RDONLY = MOUNT_ATTR_RDONLY;
const uint64_t CJAIL_MOUNT_ATTR_NOSUID = MOUNT_ATTR_NOSUID;
const uint64_t CJAIL_MOUNT_ATTR_NODEV = MOUNT_ATTR_NODEV;
const uint64_t CJAIL_MOUNT_ATTR_NOEXEC = MOUNT_ATTR_NOEXEC;
const int CJAIL_CLONE_NEWUSER = CLONE_NEWUSER;
const int CJAIL_CLONE_NEWNS = CLONE_NEWNS;
const int CJAIL_CLONE_NEWPID = CLONE_NEWPID;
const int CJAIL_CLONE_NEWNET = CLONE_NEWNET;
const int CJAIL_CLONE_NEWIPC = CLONE_NEWIPC;
const int CJAIL_CLONE_NEWUTS = CLONE_NEWUTS;
const int CJAIL_CLONE_NEWCGROUP = CLONE_NEWCGROUP;
const int CJAIL_CLONE_NEWTIME = 0x80;
const unsigned long CJAIL_MS_NOSUID = MS_NOSUID;
const unsigned long CJAIL_MS_NODEV = MS_NODEV;
const unsigned long CJAIL_MS_NOEXEC = MS_NOEXEC;

// MARK: - raw syscalls (return -errno, never touch errno)

static inline long rs6(long n, long a, long b, long c, long d, long e, long f) {
#if defined(__x86_64__)
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc 0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
#else
#error "cjail supports x86_64 and aarch64"
#endif
}
#define RS(n, a, b, c, d, e, f) rs6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))
#define rs0(n) RS(n, 0, 0, 0, 0, 0, 0)
#define rs1(n, a) RS(n, a, 0, 0, 0, 0, 0)
#define rs2(n, a, b) RS(n, a, b, 0, 0, 0, 0)
#define rs3(n, a, b, c) RS(n, a, b, c, 0, 0, 0)
#define rs4(n, a, b, c, d) RS(n, a, b, c, d, 0, 0)
#define rs5(n, a, b, c, d, e) RS(n, a, b, c, d, e, 0)

static void mark(struct cjail_config *cfg, int which) {
    struct timespec ts;
    if (rs2(SYS_clock_gettime, CLOCK_MONOTONIC, &ts) == 0)
        cfg->marks[which] = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void signal_state(volatile int *word, int value) {
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
    rs6(SYS_futex, (long)word, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0);
}

__attribute__((noreturn)) static void die(struct cjail_config *cfg) {
    // A jail that dies before taking its own fd table must still release the caller.
    if (__atomic_load_n(&cfg->files_state, __ATOMIC_SEQ_CST) == 0) signal_state(&cfg->files_state, -1);
    for (;;) rs1(SYS_exit_group, 125);
}

static void zero(void *p, size_t n) {
    volatile unsigned char *c = p;
    while (n--) *c++ = 0;
}

static size_t slen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

/// Appends the decimal form of v at dst; returns the new end.
static char *put_u(char *dst, unsigned long v) {
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *dst++ = tmp[--n];
    return dst;
}

static char *put_s(char *dst, const char *s) {
    while (*s) *dst++ = *s++;
    return dst;
}

// MARK: - helper: host side, host root

static long write_id_map(pid_t pid, const char *file, uint32_t inside, uint32_t host) {
    char path[64], line[64];
    char *p = put_s(path, "/proc/");
    p = put_u(p, (unsigned long)pid);
    p = put_s(p, "/");
    p = put_s(p, file);
    *p = 0;
    char *l = put_u(line, inside);
    *l++ = ' ';
    l = put_u(l, host);
    l = put_s(l, " 1\n");
    long fd = rs4(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC, 0);
    if (fd < 0) return fd;
    long w = rs3(SYS_write, fd, line, l - line);
    rs1(SYS_close, fd);
    return w < 0 ? w : 0;
}

static int jail_main(void *arg);
static int command_main(void *arg);

#define CLONE_INTO_CGROUP_FLAG 0x200000000ULL
struct clone_args_v2 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};
long cjail_clone3(struct clone_args_v2 *args, size_t size, int (*fn)(void *), void *arg);

static int helper_main(void *arg) {
    struct cjail_config *cfg = arg;
    mark(cfg, CJAIL_MARK_HELPER);
    // rlimits here, as host root: raising a hard limit needs CAP_SYS_RESOURCE in the
    // initial user namespace, which the jail never has. The jail inherits them.
    for (int i = 0; i < cfg->rlimit_count; i++) {
        struct { uint64_t cur, max; } rl = {cfg->rlimits[i].soft, cfg->rlimits[i].hard};
        long r = rs4(SYS_prlimit64, 0, cfg->rlimits[i].resource, &rl, 0);
        if (r < 0) {
            cfg->failed_step = CJAIL_STEP_RLIMIT;
            cfg->failed_errno = (int)-r;
            die(cfg);
        }
    }
    char *stack_top = (char *)cfg->stack_memory + 2 * cfg->stack_size;
    pid_t pid;
    if (cfg->cgroup_dir_fd >= 0) {
        // v2: born in its cgroup. Migrating a process instead write-locks the global
        // cgroup_threadgroup_rwsem, which waits for an RCU grace period (milliseconds).
        struct clone_args_v2 args;
        zero(&args, sizeof args);
        args.flags = (uint64_t)(cfg->clone_flags | CLONE_VM | CLONE_FILES | CLONE_PARENT) | CLONE_INTO_CGROUP_FLAG;
        args.exit_signal = 0;  // with CLONE_PARENT it is inherited from the helper (SIGCHLD)
        args.stack = (uint64_t)(uintptr_t)cfg->stack_memory + cfg->stack_size;
        args.stack_size = cfg->stack_size;
        args.cgroup = (uint64_t)cfg->cgroup_dir_fd;
        long r = cjail_clone3(&args, sizeof args, jail_main, cfg);
        if (r < 0) {
            cfg->failed_step = CJAIL_STEP_CLONE;
            cfg->failed_errno = (int)-r;
            die(cfg);
        }
        pid = (pid_t)r;
    } else {
        pid = clone(jail_main, (void *)((uintptr_t)stack_top & ~(uintptr_t)15),
                    cfg->clone_flags | CLONE_VM | CLONE_FILES | CLONE_PARENT | SIGCHLD, cfg);
        if (pid < 0) {
            cfg->failed_step = CJAIL_STEP_CLONE;
            cfg->failed_errno = errno;
            die(cfg);
        }
    }
    cfg->jail_pid = pid;
    mark(cfg, CJAIL_MARK_CLONED);

    long m = 0;
    if (cfg->clone_flags & CLONE_NEWUSER) {
        m = write_id_map(pid, "uid_map", cfg->inside_uid, cfg->host_uid);
        if (m == 0) m = write_id_map(pid, "gid_map", cfg->inside_gid, cfg->host_gid);
    }
    mark(cfg, CJAIL_MARK_MAPPED);
    __atomic_store_n(&cfg->maps_state, m == 0 ? 1 : (int)m, __ATOMIC_SEQ_CST);
    rs6(SYS_futex, (long)&cfg->maps_state, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0);
    // Done. The jail sets itself up once the caller publishes the plan; its setup errors
    // arrive through the config (which the caller keeps alive) when it exits.
    rs1(SYS_exit_group, 0);
    return 0;
}

// MARK: - jail: pid 1 of the new namespaces

#define FAIL(step, err)                         \
    do {                                        \
        cfg->failed_step = (step);              \
        cfg->failed_errno = (int)-(err);        \
        die(cfg);                                  \
    } while (0)
#define CHECK(step, expr)                       \
    do {                                        \
        long _r = (expr);                       \
        if (_r < 0) FAIL(step, _r);             \
    } while (0)

static long make_dir(const char *path, unsigned int mode) {
    long r = rs3(SYS_mkdirat, AT_FDCWD, path, mode);
    return r == -EEXIST ? 0 : r;
}

static long make_file(const char *path) {
    long fd = rs4(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_CLOEXEC, 0444);
    if (fd < 0) return fd;
    rs1(SYS_close, fd);
    return 0;
}

static long set_mount_attr(const char *path, uint64_t attr, unsigned int flags) {
    struct sbx_mount_attr a;
    zero(&a, sizeof a);
    a.attr_set = attr;
    return rs5(SYS_mount_setattr, AT_FDCWD, path, flags, &a, sizeof a);
}

static long apply_op(const struct cjail_op *op) {
    long r;
    switch (op->kind) {
    case CJAIL_OP_MKDIR:
        return make_dir(op->target, op->mode);
    case CJAIL_OP_SYMLINK:
        return rs3(SYS_symlinkat, op->data, AT_FDCWD, op->target);
    case CJAIL_OP_WRITE_FILE: {
        long fd = rs4(SYS_openat, AT_FDCWD, op->target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, op->mode);
        if (fd < 0) return fd;
        size_t done = 0;
        while (done < op->data_len) {
            long w = rs3(SYS_write, fd, op->data + done, op->data_len - done);
            if (w == -EINTR) continue;
            if (w < 0) { rs1(SYS_close, fd); return w; }
            done += (size_t)w;
        }
        return rs1(SYS_close, fd);
    }
    case CJAIL_OP_TMPFS:
        if ((r = make_dir(op->target, 0755)) < 0) return r;
        return RS(SYS_mount, "tmpfs", op->target, "tmpfs", op->flags, op->data, 0);
    case CJAIL_OP_BIND:
        r = op->is_file ? make_file(op->target) : make_dir(op->target, 0755);
        if (r < 0) return r;
        if ((r = RS(SYS_mount, op->source, op->target, 0, MS_BIND | MS_REC, 0, 0)) < 0) return r;
        if (op->attr) return set_mount_attr(op->target, op->attr, AT_RECURSIVE);
        return 0;
    case CJAIL_OP_PROC:
        if ((r = make_dir(op->target, 0555)) < 0) return r;
        return RS(SYS_mount, "proc", op->target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0, 0);
    case CJAIL_OP_DEVPTS:
        if ((r = make_dir(op->target, 0755)) < 0) return r;
        return RS(SYS_mount, "devpts", op->target, "devpts", MS_NOSUID | MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620", 0);
    case CJAIL_OP_SET_ATTR:
        return set_mount_attr(op->target, op->attr, op->flags ? AT_RECURSIVE : 0);
    }
    return -EINVAL;
}

static long loopback_up(void) {
    long s = rs3(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return s;
    struct ifreq ifr;
    zero(&ifr, sizeof ifr);
    ifr.ifr_name[0] = 'l';
    ifr.ifr_name[1] = 'o';
    long r = rs3(SYS_ioctl, s, SIOCGIFFLAGS, &ifr);
    if (r == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        r = rs3(SYS_ioctl, s, SIOCSIFFLAGS, &ifr);
    }
    rs1(SYS_close, s);
    return r;
}

/// Puts `from` at fd `to` without close-on-exec (dup3 cannot do that when from == to).
static long place_fd(int from, int to) {
    if (from == to) return rs3(SYS_fcntl, to, F_SETFD, 0);
    return rs3(SYS_dup3, from, to, 0);
}

static long drop_capabilities(int last_cap) {
    long r = rs5(SYS_prctl, PR_SET_SECUREBITS, SECBITS_LOCKED_DOWN | SECBIT_NO_CAP_AMBIENT_RAISE_AND_LOCK, 0, 0, 0);
    if (r < 0) return r;
    for (int cap = 0; cap <= last_cap; cap++) {
        r = rs5(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0);
        if (r < 0 && r != -EINVAL) return r;
    }
    r = rs5(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (r < 0 && r != -EINVAL) return r;
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[2];
    zero(&data, sizeof data);
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    return rs2(SYS_capset, &hdr, data);
}

static int jail_main(void *arg) {
    struct cjail_config *cfg = arg;

    while (__atomic_load_n(&cfg->maps_state, __ATOMIC_SEQ_CST) == 0)
        rs6(SYS_futex, (long)&cfg->maps_state, FUTEX_WAIT_PRIVATE, 0, 0, 0, 0);
    int maps = __atomic_load_n(&cfg->maps_state, __ATOMIC_SEQ_CST);
    if (maps < 0) FAIL(CJAIL_STEP_ID_MAP, maps);
    while (__atomic_load_n(&cfg->plan_state, __ATOMIC_SEQ_CST) == 0)
        rs6(SYS_futex, (long)&cfg->plan_state, FUTEX_WAIT_PRIVATE, 0, 0, 0, 0);
    if (__atomic_load_n(&cfg->plan_state, __ATOMIC_SEQ_CST) < 0) die(cfg);
    // Until now we shared the caller's fd table, so that the pipes and cgroup files it opened
    // while planning are ours too; from here on our fd changes must not touch it.
    CHECK(CJAIL_STEP_FDS, rs1(SYS_unshare, CLONE_FILES));
    signal_state(&cfg->files_state, 1);
    mark(cfg, CJAIL_MARK_JAIL);

    // cgroup v1: join by writing "0" to `tasks` (fds the caller opened as root). Moving only the
    // calling thread skips the global cgroup_threadgroup_rwsem, whose write side waits for an RCU
    // grace period. Then a cgroup namespace rooted there.
    for (int i = 0; i < cfg->cgroup_fd_count; i++) CHECK(CJAIL_STEP_CGROUP_JOIN, rs3(SYS_write, cfg->cgroup_fds[i], "0", 1));
    if (cfg->unshare_cgroup_ns) CHECK(CJAIL_STEP_CGROUP_JOIN, rs1(SYS_unshare, CLONE_NEWCGROUP));

    // Become the mapped root: host credentials are now the unprivileged host ids.
    CHECK(CJAIL_STEP_SET_IDS, rs3(SYS_setresgid, 0, 0, 0));
    CHECK(CJAIL_STEP_SET_IDS, rs2(SYS_setgroups, 0, 0));
    CHECK(CJAIL_STEP_SET_IDS, rs3(SYS_setresuid, 0, 0, 0));
    // We share sbx's (host root's) memory until we exec sbx-init, and the command runs as our
    // uid meanwhile: never dumpable, whatever fs.suid_dumpable says, so /proc/1/mem, environ
    // and ptrace stay closed to it.
    CHECK(CJAIL_STEP_SET_IDS, rs5(SYS_prctl, PR_SET_DUMPABLE, 0, 0, 0, 0));

    if (cfg->clone_flags & CLONE_NEWNS) {
        CHECK(CJAIL_STEP_MOUNT_PRIVATE, RS(SYS_mount, 0, "/", 0, MS_REC | MS_PRIVATE, 0, 0));
        CHECK(CJAIL_STEP_ROOT_TMPFS, RS(SYS_mount, "tmpfs", cfg->staging_dir, "tmpfs", MS_NOSUID | MS_NODEV,
                                        cfg->root_tmpfs_options, 0));
        CHECK(CJAIL_STEP_PIVOT_ROOT, rs1(SYS_chdir, cfg->staging_dir));
        CHECK(CJAIL_STEP_PIVOT_ROOT, rs3(SYS_mkdirat, AT_FDCWD, "oldroot", 0700));
        CHECK(CJAIL_STEP_PIVOT_ROOT, rs2(SYS_pivot_root, ".", "oldroot"));
        CHECK(CJAIL_STEP_PIVOT_ROOT, rs1(SYS_chdir, "/"));
        mark(cfg, CJAIL_MARK_PIVOTED);
        for (int i = 0; i < cfg->op_count; i++) {
            long r = apply_op(&cfg->ops[i]);
            if (r < 0) {
                cfg->failed_op = i;
                FAIL(CJAIL_STEP_MOUNT_OP, r);
            }
        }
        CHECK(CJAIL_STEP_DETACH_OLDROOT, rs2(SYS_umount2, "/oldroot", MNT_DETACH));
        CHECK(CJAIL_STEP_DETACH_OLDROOT, rs3(SYS_unlinkat, AT_FDCWD, "/oldroot", AT_REMOVEDIR));
        CHECK(CJAIL_STEP_ROOT_READONLY, set_mount_attr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0));
    }
    mark(cfg, CJAIL_MARK_MOUNTED);
    if (cfg->hostname && (cfg->clone_flags & CLONE_NEWUTS))
        CHECK(CJAIL_STEP_HOSTNAME, rs2(SYS_sethostname, cfg->hostname, slen(cfg->hostname)));
    if (cfg->bring_up_loopback) CHECK(CJAIL_STEP_LOOPBACK, loopback_up());
    CHECK(CJAIL_STEP_CHDIR, rs1(SYS_chdir, cfg->cwd));
    CHECK(CJAIL_STEP_SETSID, rs0(SYS_setsid));
    CHECK(CJAIL_STEP_CAPS, drop_capabilities(cfg->last_cap));
    CHECK(CJAIL_STEP_NO_NEW_PRIVS, rs5(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    // After the credential changes, which clear it.
    CHECK(CJAIL_STEP_PDEATHSIG, rs5(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0));
    mark(cfg, CJAIL_MARK_LOCKED);

    // fds: move every source above the targets first, so placing one cannot clobber another.
    int src[5] = {cfg->stdio_fds[0], cfg->stdio_fds[1], cfg->stdio_fds[2], cfg->status_fd, cfg->init_fd};
    for (int i = 0; i < 5; i++) {
        long r = rs3(SYS_fcntl, src[i], F_DUPFD_CLOEXEC, 16);
        if (r < 0) FAIL(CJAIL_STEP_FDS, r);
        src[i] = (int)r;
    }
    for (int i = 0; i < 4; i++) CHECK(CJAIL_STEP_FDS, place_fd(src[i], i));
    // Everything above init's status fd closes at exec (the setup-error path stays usable until then).
    CHECK(CJAIL_STEP_FDS, rs3(SYS_close_range, 4, ~0U, CLOSE_RANGE_CLOEXEC));

    // Default signal dispositions for init and the command; the mask stays full for
    // init (it waits with sigwaitinfo), the command empties its own.
    for (int sig = 1; sig < 65; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        struct { void *handler; unsigned long flags; void *restorer; uint64_t mask; } act;
        zero(&act, sizeof act);
        rs4(SYS_rt_sigaction, sig, &act, 0, 8);
    }

    // Seccomp last: the filters may forbid what the steps above needed.
    for (int i = 0; i < cfg->filter_count; i++) {
        struct sock_fprog prog;
        prog.len = cfg->filters[i].count;
        prog.filter = (struct sock_filter *)cfg->filters[i].insns;
        CHECK(CJAIL_STEP_SECCOMP, rs3(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog));
    }
    cfg->init_fd_in_jail = src[4];
    mark(cfg, CJAIL_MARK_EXEC);

    // The command runs as pid 2, started before init so that exec'ing init is off its path.
    char *stack_top = (char *)cfg->stack_memory + 3 * cfg->stack_size;
    long cmd = clone(command_main, (void *)((uintptr_t)stack_top & ~(uintptr_t)15), CLONE_VM | CLONE_VFORK | SIGCHLD, cfg);
    if (cmd < 0) FAIL(CJAIL_STEP_CLONE, -errno);
    char *p = put_u(cfg->init_pid_text, (unsigned long)cmd);
    *p = 0;
    cfg->init_argv[0] = "sbx-init";
    cfg->init_argv[1] = cfg->init_pid_text;
    cfg->init_argv[2] = 0;
    long r = rs5(SYS_execveat, cfg->init_fd_in_jail, "", cfg->init_argv, cfg->envp, AT_EMPTY_PATH);
    FAIL(CJAIL_STEP_EXEC, r);  // pid 1 dies, and with it the command
    return 0;
}

/// Appends s to the line buffer, bounded.
static char *put_b(char *dst, char *end, const char *s) {
    while (*s && dst < end) *dst++ = *s++;
    return dst;
}

/// ENOENT from execve of a file that exists: its #! interpreter or ELF loader is missing.
#define ERR_BAD_INTERPRETER (-100000)

__attribute__((noreturn)) static void command_failed(const char *name, long err) {
    char line[512];
    char *end = line + sizeof line - 2, *p = line;
    p = put_b(p, end, "sbx: ");
    p = put_b(p, end, name);
    if (err == ERR_BAD_INTERPRETER) p = put_b(p, end, ": bad interpreter (the #! program or ELF loader is missing)");
    else if (err == -ENOENT || err == -ENOTDIR) p = put_b(p, end, ": command not found");
    else if (err == -EACCES) p = put_b(p, end, ": permission denied");
    else if (err == -ENOEXEC) p = put_b(p, end, ": exec format error");
    else {
        p = put_b(p, end, ": cannot execute (errno ");
        if (p + 12 < end) p = put_u(p, (unsigned long)-err);
        p = put_b(p, end, ")");
    }
    *p++ = '\n';
    rs3(SYS_write, 2, line, p - line);
    for (;;) rs1(SYS_exit_group, (err == -ENOENT || err == -ENOTDIR) ? 127 : 126);  // as a shell does
}

/// execve, falling back to /bin/sh for a script without #! (as execvp does).
static long exec_one(struct cjail_config *cfg, const char *path) {
    long r = rs3(SYS_execve, path, cfg->command_argv, cfg->envp);
    if (r == -ENOEXEC && cfg->shell_argv) {
        cfg->shell_argv[1] = (char *)path;
        rs3(SYS_execve, "/bin/sh", cfg->shell_argv, cfg->envp);
    }
    if (r == -ENOENT) {
        char st[256];  // struct stat: we only ask whether the file itself exists
        if (rs4(SYS_newfstatat, AT_FDCWD, path, st, 0) == 0) return ERR_BAD_INTERPRETER;
    }
    return r;
}

/// pid 2: the command. Searches PATH like execvp, with raw syscalls only.
static int command_main(void *arg) {
    struct cjail_config *cfg = arg;
    rs1(SYS_close, 3);  // init's status pipe
    uint64_t empty = 0;
    rs4(SYS_rt_sigprocmask, SIG_SETMASK, &empty, 0, 8);
    const char *name = cfg->command_argv[0];
    int has_slash = 0;
    for (const char *c = name; *c; c++) if (*c == '/') has_slash = 1;
    if (has_slash) command_failed(name, exec_one(cfg, name));

    long result = -ENOENT;
    int denied = 0;
    const char *dir = cfg->path_list;
    size_t name_len = slen(name);
    while (1) {
        const char *end = dir;
        while (*end && *end != ':') end++;
        size_t dir_len = (size_t)(end - dir);
        if (dir_len + name_len + 2 <= sizeof cfg->path_buf) {
            char *p = cfg->path_buf;
            for (size_t i = 0; i < dir_len; i++) *p++ = dir[i];
            if (dir_len == 0) *p++ = '.';
            *p++ = '/';
            for (size_t i = 0; i < name_len; i++) *p++ = name[i];
            *p = 0;
            long r = exec_one(cfg, cfg->path_buf);
            if (r == -EACCES) denied = 1;
            else if (r == ERR_BAD_INTERPRETER) { result = r; break; }
            else if (r != -ENOENT && r != -ENOTDIR && r != -ESTALE && r != -ENODEV && r != -ETIMEDOUT) { result = r; break; }
        }
        if (!*end) break;
        dir = end + 1;
    }
    command_failed(name, denied && result == -ENOENT ? -EACCES : result);
}

// MARK: - caller side

int cjail_spawn(struct cjail_config *cfg) {
    cfg->maps_state = 0;
    cfg->plan_state = 0;
    cfg->files_state = 0;
    cfg->failed_step = CJAIL_STEP_NONE;
    cfg->failed_op = -1;
    cfg->failed_errno = 0;
    cfg->jail_pid = 0;
    cfg->helper_pid = 0;
    for (int i = 0; i < CJAIL_MARK_COUNT; i++) cfg->marks[i] = 0;

    // No handler of the caller may run on the children's stacks.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    char *stack_top = (char *)cfg->stack_memory + cfg->stack_size;
    // CLONE_FILES: the jail shares our fd table until the plan is published (see jail_main).
    pid_t pid = clone(helper_main, (void *)((uintptr_t)stack_top & ~(uintptr_t)15), CLONE_VM | CLONE_FILES | SIGCHLD, cfg);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, 0);
    if (pid < 0) {
        cfg->failed_step = CJAIL_STEP_CLONE;
        cfg->failed_errno = err;
        return -1;
    }
    cfg->helper_pid = pid;
    return 0;
}

void cjail_publish(struct cjail_config *cfg, const struct cjail_config *plan) {
    if (plan) {
        for (int i = 0; i < 4; i++) cfg->cgroup_fds[i] = plan->cgroup_fds[i];
        cfg->cgroup_fd_count = plan->cgroup_fd_count;
        cfg->unshare_cgroup_ns = plan->unshare_cgroup_ns;
        for (int i = 0; i < 3; i++) cfg->stdio_fds[i] = plan->stdio_fds[i];
        cfg->status_fd = plan->status_fd;
        cfg->init_fd = plan->init_fd;
        cfg->staging_dir = plan->staging_dir;
        cfg->root_tmpfs_options = plan->root_tmpfs_options;
        cfg->ops = plan->ops;
        cfg->op_count = plan->op_count;
        cfg->hostname = plan->hostname;
        cfg->bring_up_loopback = plan->bring_up_loopback;
        cfg->cwd = plan->cwd;
        cfg->last_cap = plan->last_cap;
        cfg->filters = plan->filters;
        cfg->filter_count = plan->filter_count;
        cfg->command_argv = plan->command_argv;
        cfg->envp = plan->envp;
        cfg->path_list = plan->path_list;
        cfg->shell_argv = plan->shell_argv;
    }
    __atomic_store_n(&cfg->plan_state, plan ? 1 : -1, __ATOMIC_SEQ_CST);
    rs6(SYS_futex, (long)&cfg->plan_state, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0);
}

int cjail_wait_jail_files(struct cjail_config *cfg) {
    for (;;) {
        int state = __atomic_load_n(&cfg->files_state, __ATOMIC_SEQ_CST);
        if (state != 0) return state;
        if (cfg->jail_pid > 0 && kill(cfg->jail_pid, 0) != 0 && errno == ESRCH) return -1;
        struct timespec ts = {0, 10 * 1000 * 1000};
        rs6(SYS_futex, (long)&cfg->files_state, FUTEX_WAIT_PRIVATE, 0, (long)&ts, 0, 0);
    }
}

int cjail_reap_helper(struct cjail_config *cfg) {
    int status;
    while (waitpid(cfg->helper_pid, &status, __WALL) < 0 && errno == EINTR) {}
    if (cfg->failed_step == CJAIL_STEP_NONE && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        cfg->failed_step = CJAIL_STEP_CLONE;
        cfg->failed_errno = EIO;
    }
    return cfg->failed_step == CJAIL_STEP_NONE ? 0 : -1;
}

int cjail_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
int cjail_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, 0, 0); }
int cjail_wifexited(int s) { return WIFEXITED(s); }
int cjail_wexitstatus(int s) { return WEXITSTATUS(s); }
int cjail_wifsignaled(int s) { return WIFSIGNALED(s); }
int cjail_wtermsig(int s) { return WTERMSIG(s); }
int cjail_memfd(const char *name) { return (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC); }
int cjail_open_path(const char *path) { return open(path, O_PATH | O_CLOEXEC); }
int cjail_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

static void termination_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGQUIT);
}

uint64_t cjail_block_termination_signals(void) {
    sigset_t set, old;
    termination_set(&set);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    uint64_t bits = 0;
    for (int sig = 1; sig < 64; sig++) if (sigismember(&old, sig) == 1) bits |= 1ull << (sig - 1);
    return bits;
}

void cjail_restore_termination_signals(uint64_t previously_blocked) {
    sigset_t set;
    sigemptyset(&set);
    int signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (int i = 0; i < 4; i++)
        if (!(previously_blocked & (1ull << (signals[i] - 1)))) sigaddset(&set, signals[i]);
    pthread_sigmask(SIG_UNBLOCK, &set, 0);
}

int cjail_signalfd_for_termination(void) {
    sigset_t set;
    termination_set(&set);
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

int cjail_sigset_termination_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    return n == (ssize_t)sizeof info ? (int)info.ssi_signo : 0;
}

int cjail_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int cjail_is_cgroup2(const char *path) {
    struct statfs st;
    return statfs(path, &st) == 0 && st.f_type == 0x63677270;
}

// The code that runs between clone and exec.
//
// The parent (Swift) prepares everything that allocates: paths, argv, envp,
// the ordered list of mount operations, the compiled seccomp BPF, cgroup fds.
// cjail_spawn then runs two short-lived children that share the parent's
// memory (CLONE_VM, so nothing is copied) and make only raw syscalls:
//
//   parent ── clone(VM|VFORK) ──► helper (host root, host namespaces)
//                                   joins the cgroup, clones the jail with
//                                   every namespace, writes its id maps,
//                                   waits for it to exec, exits
//            jail (pid 1 of its pid namespace, child of the parent) ──►
//              ids, mounts + pivot_root, hostname, lo, setsid, rlimits,
//              caps, no_new_privs, fds, seccomp, execveat(sbx-init)
//
// Setup errors come back in the config as (step, op index, errno).
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

enum cjail_op_kind {
    CJAIL_OP_MKDIR = 1,      // target, mode
    CJAIL_OP_SYMLINK = 2,    // data = link text, target = path
    CJAIL_OP_WRITE_FILE = 3, // target, data/data_len, mode
    CJAIL_OP_TMPFS = 4,      // target, data = mount options, flags = MS_*
    CJAIL_OP_BIND = 5,       // source (under /oldroot), target, is_file; attr (recursive) unless 0
    CJAIL_OP_PROC = 6,       // target
    CJAIL_OP_DEVPTS = 7,     // target
    CJAIL_OP_SET_ATTR = 8,   // target, attr = MOUNT_ATTR_* (recursive when flags != 0)
};

struct cjail_op {
    int kind;
    int is_file;          // BIND: create the target as an empty file, not a directory
    unsigned int mode;
    unsigned long flags;  // TMPFS: MS_* flags
    uint64_t attr;        // BIND: MOUNT_ATTR_* applied recursively with mount_setattr
    const char *source;
    const char *target;
    const char *data;
    size_t data_len;
};

struct cjail_rlimit {
    int resource;
    uint64_t soft;
    uint64_t hard;
};

/// Steps a launch can fail at; Swift maps them to names.
enum cjail_step {
    CJAIL_STEP_NONE = 0,
    CJAIL_STEP_CGROUP_JOIN,
    CJAIL_STEP_CLONE,
    CJAIL_STEP_ID_MAP,
    CJAIL_STEP_SET_IDS,
    CJAIL_STEP_MOUNT_PRIVATE,
    CJAIL_STEP_ROOT_TMPFS,
    CJAIL_STEP_PIVOT_ROOT,
    CJAIL_STEP_MOUNT_OP,
    CJAIL_STEP_DETACH_OLDROOT,
    CJAIL_STEP_ROOT_READONLY,
    CJAIL_STEP_HOSTNAME,
    CJAIL_STEP_LOOPBACK,
    CJAIL_STEP_CHDIR,
    CJAIL_STEP_SETSID,
    CJAIL_STEP_RLIMIT,
    CJAIL_STEP_CAPS,
    CJAIL_STEP_NO_NEW_PRIVS,
    CJAIL_STEP_FDS,
    CJAIL_STEP_SECCOMP,
    CJAIL_STEP_EXEC,
    CJAIL_STEP_PDEATHSIG,
};

/// Launch milestones recorded in cjail_config.marks.
enum cjail_mark {
    CJAIL_MARK_HELPER = 0,   // helper running
    CJAIL_MARK_CLONED,       // helper: jail cloned (namespaces created)
    CJAIL_MARK_MAPPED,       // helper: id maps written
    CJAIL_MARK_JAIL,         // jail running, maps seen
    CJAIL_MARK_PIVOTED,      // jail: new root in place
    CJAIL_MARK_MOUNTED,      // jail: mount plan applied, old root detached
    CJAIL_MARK_LOCKED,       // jail: caps dropped, no_new_privs
    CJAIL_MARK_EXEC,         // jail: about to exec sbx-init
    CJAIL_MARK_COUNT
};

struct cjail_filter {
    const void *insns;      // struct sock_filter[]
    unsigned short count;
};

struct cjail_config {
    // namespaces to create (CLONE_NEW* bits)
    int clone_flags;

    // identity: inside ids map onto unprivileged host ids
    uint32_t inside_uid, inside_gid, host_uid, host_gid;

    // cgroup v1: `tasks` files the jail writes "0" into first thing, then unshares its cgroup namespace
    int cgroup_fds[4];
    int cgroup_fd_count;
    int unshare_cgroup_ns;
    // cgroup v2: the cgroup directory the jail is created in (clone3 CLONE_INTO_CGROUP), or -1
    int cgroup_dir_fd;

    // stdin, stdout, stderr of the jail, and the status pipe handed to init as fd 3
    int stdio_fds[3];
    int status_fd;
    // O_PATH fd of sbx-init, executed with execveat
    int init_fd;

    // staging directory for the root tmpfs (an existing directory, e.g. "/tmp")
    const char *staging_dir;
    const char *root_tmpfs_options;
    const struct cjail_op *ops;
    int op_count;

    const char *hostname;
    int bring_up_loopback;
    const char *cwd;

    const struct cjail_rlimit *rlimits;
    int rlimit_count;

    int last_cap;

    const struct cjail_filter *filters;
    int filter_count;

    // the command: argv, environment, PATH to search, and ["/bin/sh", <slot>, args...]
    // for scripts without #! (NULL to not fall back)
    char *const *command_argv;
    char *const *envp;
    const char *path_list;
    char **shell_argv;

    // memory for the three children's stacks (each stack_size bytes), owned by the caller,
    // which must keep it and this config alive until the jail's pid 1 has exited
    void *stack_memory;
    size_t stack_size;

    // results
    pid_t helper_pid;
    pid_t jail_pid;
    int failed_step;
    int failed_op;
    int failed_errno;

    // CLOCK_MONOTONIC nanoseconds at each launch milestone (see CJAIL_MARK_*), for SBX_TRACE
    uint64_t marks[16];

    // private to cjail_spawn
    volatile int maps_state;
    volatile int plan_state;
    volatile int files_state;
    int init_fd_in_jail;
    char *init_argv[3];
    char init_pid_text[24];
    char path_buf[4096];
};

/// Launches the jail in three calls, so that the caller's planning overlaps
/// with the kernel creating namespaces:
///
/// 1. cjail_spawn: with the launch fields set (clone_flags, ids, rlimits,
///    cgroup_dir_fd, stacks), starts the helper and returns at once (-1 with
///    failed_step set if even that failed).
/// 2. cjail_publish: copies the setup fields (everything else) from `plan`
///    and lets the jail proceed; with plan == NULL the jail exits instead.
/// 3. cjail_reap_helper: waits for the helper; -1 (failed_step set) when it
///    could not create the jail. Otherwise cfg->jail_pid is a child of the
///    caller to supervise and reap: the jail sets itself up, starts the command
///    as pid 2 and becomes sbx-init; if its setup fails it exits 125 with
///    failed_step/failed_op/failed_errno set.
///
/// The children share the caller's memory: cfg, everything it points to and
/// the stacks must stay alive until the jail has been reaped.
int cjail_spawn(struct cjail_config *cfg);
void cjail_publish(struct cjail_config *cfg, const struct cjail_config *plan);
int cjail_reap_helper(struct cjail_config *cfg);
/// After cjail_reap_helper succeeded: waits until the jail has its own copy of the fd table
/// (1), or has died without one (-1). Only then may the caller close the fds it handed over.
int cjail_wait_jail_files(struct cjail_config *cfg);

// Helpers Swift cannot reach directly (macros, missing GNU declarations).
int cjail_pidfd_open(pid_t pid);
int cjail_pidfd_send_signal(int pidfd, int sig);
int cjail_wifexited(int status);
int cjail_wexitstatus(int status);
int cjail_wifsignaled(int status);
int cjail_wtermsig(int status);
int cjail_memfd(const char *name);
int cjail_open_path(const char *path);
int cjail_set_pipe_size(int fd, int size);
int cjail_pipe_cloexec(int fds[2]);
/// 1 when path is the root of a cgroup2 filesystem.
int cjail_is_cgroup2(const char *path);
int cjail_signalfd_for_termination(void);
/// Blocks SIGINT/TERM/HUP/QUIT in the calling thread (they go to a signalfd while a jail runs);
/// returns the previous mask's bits (bit n-1 = signal n) for cjail_restore_termination_signals.
uint64_t cjail_block_termination_signals(void);
void cjail_restore_termination_signals(uint64_t previously_blocked);
int cjail_sigset_termination_read(int fd);

extern const uint64_t CJAIL_MOUNT_ATTR_RDONLY;
extern const uint64_t CJAIL_MOUNT_ATTR_NOSUID;
extern const uint64_t CJAIL_MOUNT_ATTR_NODEV;
extern const uint64_t CJAIL_MOUNT_ATTR_NOEXEC;
extern const int CJAIL_CLONE_NEWUSER, CJAIL_CLONE_NEWNS, CJAIL_CLONE_NEWPID, CJAIL_CLONE_NEWNET,
    CJAIL_CLONE_NEWIPC, CJAIL_CLONE_NEWUTS, CJAIL_CLONE_NEWCGROUP, CJAIL_CLONE_NEWTIME;
extern const unsigned long CJAIL_MS_NOSUID, CJAIL_MS_NODEV, CJAIL_MS_NOEXEC;

#ifdef __cplusplus
}
#endif

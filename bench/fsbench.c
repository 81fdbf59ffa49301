/*
 * fsbench: the workload driver of bench/branchfs.sh. Each subcommand does one
 * thing, times it with CLOCK_MONOTONIC, and prints the figures on one line of
 * stdout (milliseconds first). Exit status 0; 1 on any failed syscall (the
 * message names it: a failing view must never look fast).
 *
 *   fsbench gen DIR NFILES SEED       deterministic tree: 10 files per leaf dir, 100 leaf dirs per
 *                                     top dir, sizes 100 B - 8 KiB; prints "ms files bytes"
 *   fsbench walk DIR                  recursive readdir + lstat of every entry; "ms entries"
 *   fsbench read DIR                  walk + open/read/close of every regular file; "ms files bytes"
 *   fsbench create DIR N SIZE         N new files of SIZE bytes (100 per subdir), then lstat each,
 *                                     then unlink each and rmdir; "create_ms stat_ms unlink_ms"
 *   fsbench write FILE MIB            sequential 1 MiB writes, fsync, close; "ms ms_before_fsync"
 *   fsbench readfile FILE             sequential 1 MiB reads; "ms bytes"
 *   fsbench touch DIR N TAG           rewrite N existing small files under DIR (the first N in
 *                                     walk order; open with O_TRUNC) with TAG in the text; "ms files"
 *   fsbench spawn CMD [ARG...]        posix_spawn (PATH search) to waitpid; the child's stdout goes
 *                                     to a pipe read to EOF; prints "ms" on the first line, then
 *                                     the child's stdout; exit status = the child's
 *   fsbench rpc SOCKET LINE           connect to a Unix socket, send LINE + "\n", read one line back;
 *                                     prints "ms<TAB>response"; exit 1 when the response has "error"
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what, const char *path) {
    fprintf(stderr, "fsbench: %s %s: %s\n", what, path ? path : "", strerror(errno));
    exit(1);
}

static char buf[1 << 20];

/* ---- walk / read ---------------------------------------------------------------------- */

static long n_entries, n_files;
static long long n_bytes;

static void walk_at(int dfd, const char *name, int do_read, long limit, void (*on_file)(int, const char *)) {
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) die("open dir", name);
    DIR *d = fdopendir(fd);
    if (!d) die("fdopendir", name);
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st;
        if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) die("lstat", e->d_name);
        n_entries++;
        if (S_ISDIR(st.st_mode)) {
            walk_at(fd, e->d_name, do_read, limit, on_file);
        } else if (S_ISREG(st.st_mode)) {
            n_files++;
            if (on_file) {
                on_file(fd, e->d_name);
            } else if (do_read) {
                int f = openat(fd, e->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                if (f < 0) die("open", e->d_name);
                ssize_t r;
                while ((r = read(f, buf, sizeof buf)) > 0) n_bytes += r;
                if (r < 0) die("read", e->d_name);
                close(f);
            }
        }
        if (limit >= 0 && n_files >= limit) break;
        errno = 0;
    }
    if (errno) die("readdir", name);
    closedir(d);
}

/* ---- gen ------------------------------------------------------------------------------ */

static uint64_t rng;
static uint64_t next_rand(void) { /* splitmix64 */
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void fill_text(char *p, size_t n) {
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789 \n";
    for (size_t i = 0; i < n; i++) p[i] = alphabet[next_rand() % (sizeof alphabet - 1)];
}

static void write_file(int dfd, const char *name, const char *data, size_t n, int flags) {
    int f = openat(dfd, name, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);
    if (f < 0) die("create", name);
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(f, data + off, n - off);
        if (w < 0) die("write", name);
        off += (size_t)w;
    }
    if (close(f) != 0) die("close", name);
}

static int cmd_gen(const char *dir, long nfiles, uint64_t seed) {
    double t0 = now_ms();
    rng = seed;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) die("mkdir", dir);
    int root = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) die("open", dir);
    long long bytes = 0;
    char name[96];
    for (long i = 0; i < nfiles; i++) {
        long leaf = i / 10, top = leaf / 100;
        char path[64];
        snprintf(path, sizeof path, "d%03ld", top);
        if (i % 1000 == 0 && mkdirat(root, path, 0755) != 0 && errno != EEXIST) die("mkdir", path);
        snprintf(path, sizeof path, "d%03ld/s%02ld", top, leaf % 100);
        if (i % 10 == 0 && mkdirat(root, path, 0755) != 0 && errno != EEXIST) die("mkdir", path);
        /* sizes: mostly small, log-uniform-ish between 100 B and 8 KiB */
        size_t size = 100 + (size_t)(next_rand() % 8092);
        if (next_rand() % 2) size = 100 + size % 1948;
        fill_text(buf, size);
        snprintf(name, sizeof name, "%s/f%ld.txt", path, i % 10);
        write_file(root, name, buf, size, O_TRUNC);
        bytes += (long long)size;
    }
    close(root);
    printf("%.3f %ld %lld\n", now_ms() - t0, nfiles, bytes);
    return 0;
}

/* ---- create / stat / unlink ----------------------------------------------------------- */

static int cmd_create(const char *dir, long n, size_t size) {
    if (size > sizeof buf) size = sizeof buf;
    rng = 42;
    fill_text(buf, size);
    char path[4096];
    long ndirs = (n + 99) / 100;
    double t0 = now_ms();
    if (mkdir(dir, 0755) != 0) die("mkdir", dir);
    for (long i = 0; i < n; i++) {
        if (i % 100 == 0) {
            snprintf(path, sizeof path, "%s/c%03ld", dir, i / 100);
            if (mkdir(path, 0755) != 0) die("mkdir", path);
        }
        snprintf(path, sizeof path, "%s/c%03ld/n%05ld.dat", dir, i / 100, i);
        write_file(AT_FDCWD, path, buf, size, O_EXCL);
    }
    double t1 = now_ms();
    struct stat st;
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/c%03ld/n%05ld.dat", dir, i / 100, i);
        if (lstat(path, &st) != 0) die("lstat", path);
        if ((size_t)st.st_size != size) { errno = EIO; die("size mismatch", path); }
    }
    double t2 = now_ms();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/c%03ld/n%05ld.dat", dir, i / 100, i);
        if (unlink(path) != 0) die("unlink", path);
    }
    for (long j = 0; j < ndirs; j++) {
        snprintf(path, sizeof path, "%s/c%03ld", dir, j);
        if (rmdir(path) != 0) die("rmdir", path);
    }
    if (rmdir(dir) != 0) die("rmdir", dir);
    double t3 = now_ms();
    printf("%.3f %.3f %.3f\n", t1 - t0, t2 - t1, t3 - t2);
    return 0;
}

/* ---- big file ------------------------------------------------------------------------- */

static int cmd_write(const char *file, long mib) {
    rng = 7;
    fill_text(buf, sizeof buf);
    double t0 = now_ms();
    int f = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f < 0) die("create", file);
    for (long i = 0; i < mib; i++) {
        buf[i % sizeof buf] ^= 1; /* not all blocks equal */
        size_t off = 0;
        while (off < sizeof buf) {
            ssize_t w = write(f, buf + off, sizeof buf - off);
            if (w < 0) die("write", file);
            off += (size_t)w;
        }
    }
    double t1 = now_ms();
    if (fsync(f) != 0) die("fsync", file);
    if (close(f) != 0) die("close", file);
    printf("%.3f %.3f\n", now_ms() - t0, t1 - t0);
    return 0;
}

static int cmd_readfile(const char *file) {
    double t0 = now_ms();
    int f = open(file, O_RDONLY | O_CLOEXEC);
    if (f < 0) die("open", file);
    long long total = 0;
    ssize_t r;
    while ((r = read(f, buf, sizeof buf)) > 0) total += r;
    if (r < 0) die("read", file);
    close(f);
    printf("%.3f %lld\n", now_ms() - t0, total);
    return 0;
}

/* ---- touch: rewrite N existing files ---------------------------------------------------- */

static const char *touch_seed;
static void touch_one(int dfd, const char *name) {
    char text[256];
    int n = snprintf(text, sizeof text, "changed by branchfs bench, seed %s, file %s\n", touch_seed, name);
    write_file(dfd, name, text, (size_t)n, O_TRUNC);
}

static int cmd_touch(const char *dir, long n, const char *seed) {
    touch_seed = seed;
    double t0 = now_ms();
    walk_at(AT_FDCWD, dir, 0, n, touch_one);
    printf("%.3f %ld\n", now_ms() - t0, n_files);
    return n_files == n ? 0 : 1;
}

/* ---- spawn ---------------------------------------------------------------------------- */

static int cmd_spawn(char **argv) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) die("pipe", NULL);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    static char out[1 << 20];
    size_t len = 0;
    pid_t pid;
    double t0 = now_ms();
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    if (rc != 0) { errno = rc; die("spawn", argv[0]); }
    close(p[1]);
    ssize_t r;
    while ((r = read(p[0], out + len, sizeof out - 1 - len)) > 0) len += (size_t)r;
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) die("waitpid", argv[0]);
    double ms = now_ms() - t0;
    printf("%.3f\n", ms);
    fwrite(out, 1, len, stdout);
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

/* ---- rpc ------------------------------------------------------------------------------ */

static int cmd_rpc(const char *sock, const char *line) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock) >= sizeof sa.sun_path) { errno = ENAMETOOLONG; die("socket path", sock); }
    strcpy(sa.sun_path, sock);
    size_t n = strlen(line);
    char *req = malloc(n + 1);
    memcpy(req, line, n);
    req[n] = '\n';
    static char resp[1 << 20];
    size_t len = 0;
    double t0 = now_ms();
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket", NULL);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect", sock);
    size_t off = 0;
    while (off < n + 1) {
        ssize_t w = send(fd, req + off, n + 1 - off, MSG_NOSIGNAL);
        if (w < 0) die("send", sock);
        off += (size_t)w;
    }
    for (;;) {
        ssize_t r = read(fd, resp + len, sizeof resp - 1 - len);
        if (r < 0) die("read", sock);
        if (r == 0) break;
        len += (size_t)r;
        if (memchr(resp + len - r, '\n', (size_t)r)) break;
    }
    double ms = now_ms() - t0;
    close(fd);
    resp[len] = 0;
    char *nl = strchr(resp, '\n');
    if (nl) *nl = 0;
    printf("%.3f\t%s\n", ms, resp);
    return strstr(resp, "\"error\"") ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "gen")) return cmd_gen(argv[2], atol(argv[3]), strtoull(argv[4], NULL, 10));
    if (argc == 3 && (!strcmp(argv[1], "walk") || !strcmp(argv[1], "read"))) {
        int do_read = !strcmp(argv[1], "read");
        double t0 = now_ms();
        walk_at(AT_FDCWD, argv[2], do_read, -1, NULL);
        double ms = now_ms() - t0;
        if (do_read) printf("%.3f %ld %lld\n", ms, n_files, n_bytes);
        else printf("%.3f %ld\n", ms, n_entries);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "create")) return cmd_create(argv[2], atol(argv[3]), (size_t)atol(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "write")) return cmd_write(argv[2], atol(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "readfile")) return cmd_readfile(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "touch")) return cmd_touch(argv[2], atol(argv[3]), argv[4]);
    if (argc >= 3 && !strcmp(argv[1], "spawn")) return cmd_spawn(argv + 2);
    if (argc == 4 && !strcmp(argv[1], "rpc")) return cmd_rpc(argv[2], argv[3]);
    fprintf(stderr, "usage: fsbench gen|walk|read|create|write|readfile|touch|spawn|rpc ... (see the comment at the top)\n");
    return 2;
}

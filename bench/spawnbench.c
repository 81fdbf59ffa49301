/*
 * spawnbench: interleaved wall-time benchmark of short-lived commands.
 *
 *   spawnbench [-r ROUNDS] [-w WARMUP] [-b BASELINE] [-p PLAIN] [-t TITLE]
 *              [-j JSONFILE] -- NAME CMD [ARG...] ::: NAME CMD [ARG...] ...
 *
 * Every round runs every variant once, in an order that rotates by one each
 * round (round r starts with variant r mod n). The first WARMUP rounds are
 * discarded. One sample is the wall time from just before posix_spawn to the
 * return of wait4 (CLOCK_MONOTONIC); wait4 also yields ru_maxrss (the largest
 * RSS of the child and of the descendants it reaped) and user+system CPU.
 * Children get stdin, stdout and stderr on /dev/null and the caller's env.
 * CMD must be an absolute path (no PATH search inside the measurement).
 *
 * Prints a table (median, p10, p90, ratios of medians to BASELINE and PLAIN,
 * CPU, peak RSS) and, with -j, the same plus raw samples as one JSON object.
 * Exit status: 0; 3 when any run failed (non-zero exit, signal, 30 s timeout).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define RUN_TIMEOUT_S 30

struct variant {
    const char *name;
    char **argv;
    double *wall_ms; /* measured samples, successful runs only */
    double *cpu_ms;
    long *rss_kib;
    int n;
    int failures;
    char last_failure[96];
};

static volatile sig_atomic_t timed_out;
static void on_alarm(int sig) { (void)sig; timed_out = 1; }

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Linear interpolation between closest ranks (numpy's default). */
static double quantile(const double *sorted, int n, double q) {
    if (n == 0) return NAN;
    double pos = q * (n - 1);
    int lo = (int)floor(pos), hi = (int)ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

struct stats { double median, p10, p90, mean, min, max, cpu_median, rss_max_mib, rss_median_mib; };

static struct stats summarize(const struct variant *v) {
    struct stats s = {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};
    if (v->n == 0) return s;
    double *w = malloc(sizeof(double) * v->n), *c = malloc(sizeof(double) * v->n), *r = malloc(sizeof(double) * v->n);
    double sum = 0;
    long rss_max = 0;
    for (int i = 0; i < v->n; i++) {
        w[i] = v->wall_ms[i];
        c[i] = v->cpu_ms[i];
        r[i] = (double)v->rss_kib[i];
        sum += w[i];
        if (v->rss_kib[i] > rss_max) rss_max = v->rss_kib[i];
    }
    qsort(w, v->n, sizeof(double), cmp_double);
    qsort(c, v->n, sizeof(double), cmp_double);
    qsort(r, v->n, sizeof(double), cmp_double);
    s.median = quantile(w, v->n, 0.5);
    s.p10 = quantile(w, v->n, 0.1);
    s.p90 = quantile(w, v->n, 0.9);
    s.mean = sum / v->n;
    s.min = w[0];
    s.max = w[v->n - 1];
    s.cpu_median = quantile(c, v->n, 0.5);
    s.rss_max_mib = rss_max / 1024.0;
    s.rss_median_mib = quantile(r, v->n, 0.5) / 1024.0;
    free(w);
    free(c);
    free(r);
    return s;
}

/* Runs one variant once; records a sample or a failure. */
static void run_once(struct variant *v, int record, const posix_spawn_file_actions_t *fa) {
    pid_t pid;
    double t0 = now_ms();
    int err = posix_spawn(&pid, v->argv[0], fa, NULL, v->argv, environ);
    if (err) {
        fprintf(stderr, "spawnbench: posix_spawn %s: %s\n", v->argv[0], strerror(err));
        exit(2);
    }
    int status;
    struct rusage ru;
    timed_out = 0;
    alarm(RUN_TIMEOUT_S);
    pid_t got;
    while ((got = wait4(pid, &status, 0, &ru)) < 0 && errno == EINTR) {
        if (timed_out) kill(pid, SIGKILL);
    }
    double t1 = now_ms();
    alarm(0);
    if (got < 0) {
        perror("spawnbench: wait4");
        exit(2);
    }
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && !timed_out;
    if (!ok) {
        v->failures++;
        if (timed_out)
            snprintf(v->last_failure, sizeof v->last_failure, "timed out after %d s", RUN_TIMEOUT_S);
        else if (WIFEXITED(status))
            snprintf(v->last_failure, sizeof v->last_failure, "exit status %d", WEXITSTATUS(status));
        else
            snprintf(v->last_failure, sizeof v->last_failure, "killed by signal %d", WTERMSIG(status));
        return;
    }
    if (!record) return;
    v->wall_ms[v->n] = t1 - t0;
    v->cpu_ms[v->n] = ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 + ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
    v->rss_kib[v->n] = ru.ru_maxrss;
    v->n++;
}

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void json_number(FILE *f, double x) {
    if (isnan(x) || isinf(x)) fputs("null", f);
    else fprintf(f, "%.4f", x);
}

static int find(struct variant *vs, int nv, const char *name) {
    for (int i = 0; name && i < nv; i++)
        if (strcmp(vs[i].name, name) == 0) return i;
    return -1;
}

static void usage(void) {
    fprintf(stderr, "usage: spawnbench [-r ROUNDS] [-w WARMUP] [-b BASELINE] [-p PLAIN] [-t TITLE] [-j JSONFILE]"
                    " -- NAME /abs/cmd [ARG...] ::: NAME /abs/cmd [ARG...] ...\n");
    exit(2);
}

int main(int argc, char **argv) {
    int rounds = 300, warmup = 10, opt;
    const char *baseline = NULL, *plain = NULL, *title = "spawnbench", *json_path = NULL;
    while ((opt = getopt(argc, argv, "r:w:b:p:t:j:")) != -1) {
        switch (opt) {
        case 'r': rounds = atoi(optarg); break;
        case 'w': warmup = atoi(optarg); break;
        case 'b': baseline = optarg; break;
        case 'p': plain = optarg; break;
        case 't': title = optarg; break;
        case 'j': json_path = optarg; break;
        default: usage();
        }
    }
    if (rounds < 1 || warmup < 0 || optind >= argc) usage();

    /* Split the rest into variants at ":::". */
    struct variant vs[32];
    int nv = 0;
    for (int i = optind; i < argc;) {
        if (nv == 32) usage();
        int j = i;
        while (j < argc && strcmp(argv[j], ":::") != 0) j++;
        if (j - i < 2) usage();
        struct variant *v = &vs[nv++];
        memset(v, 0, sizeof *v);
        v->name = argv[i];
        v->argv = calloc(j - i, sizeof(char *));
        for (int k = i + 1; k < j; k++) v->argv[k - i - 1] = argv[k];
        if (v->argv[0][0] != '/') {
            fprintf(stderr, "spawnbench: %s: command must be an absolute path, got %s\n", v->name, v->argv[0]);
            return 2;
        }
        v->wall_ms = calloc(rounds, sizeof(double));
        v->cpu_ms = calloc(rounds, sizeof(double));
        v->rss_kib = calloc(rounds, sizeof(long));
        i = j + 1;
    }
    int bi = find(vs, nv, baseline), pi = find(vs, nv, plain);

    struct sigaction sa = {0};
    sa.sa_handler = on_alarm; /* no SA_RESTART: wait4 must return EINTR */
    sigaction(SIGALRM, &sa, NULL);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);

    double started = now_ms();
    for (int r = 0; r < warmup + rounds; r++)
        for (int k = 0; k < nv; k++) run_once(&vs[(r + k) % nv], r >= warmup, &fa);
    double elapsed_s = (now_ms() - started) / 1e3;

    struct stats st[32];
    for (int i = 0; i < nv; i++) st[i] = summarize(&vs[i]);

    /* Table. */
    printf("== %s\n   %d rounds + %d warm-up, interleaved, %.1f s\n", title, rounds, warmup, elapsed_s);
    int w = 8;
    for (int i = 0; i < nv; i++)
        if ((int)strlen(vs[i].name) > w) w = strlen(vs[i].name);
    printf("%-*s %9s %8s %8s %8s %8s %8s %9s %5s\n", w, "variant", "median ms", "p10", "p90",
           bi >= 0 ? "x base" : "", pi >= 0 ? "x plain" : "", "cpu ms", "maxrss MiB", "fail");
    for (int i = 0; i < nv; i++) {
        char rb[16] = "", rp[16] = "";
        if (bi >= 0) snprintf(rb, sizeof rb, "%.2f", st[i].median / st[bi].median);
        if (pi >= 0) snprintf(rp, sizeof rp, "%.2f", st[i].median / st[pi].median);
        printf("%-*s %9.3f %8.3f %8.3f %8s %8s %8.3f %9.1f %5d\n", w, vs[i].name, st[i].median, st[i].p10, st[i].p90,
               rb, rp, st[i].cpu_median, st[i].rss_max_mib, vs[i].failures);
    }
    if (bi >= 0 || pi >= 0)
        printf("   x base = median / median of %s; x plain = median / median of %s\n", bi >= 0 ? baseline : "-",
               pi >= 0 ? plain : "-");
    if (bi >= 0 && bi != 0)
        printf("   peak RSS (max ru_maxrss over %d runs): %s %.1f MiB, %s %.1f MiB\n", rounds, vs[0].name,
               st[0].rss_max_mib, vs[bi].name, st[bi].rss_max_mib);
    int failed = 0;
    for (int i = 0; i < nv; i++)
        if (vs[i].failures) {
            failed = 1;
            printf("   FAILED: %s failed %d times (last: %s)\n", vs[i].name, vs[i].failures, vs[i].last_failure);
        }
    fflush(stdout);

    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f) {
            perror(json_path);
            return 2;
        }
        fprintf(f, "{\"title\":");
        json_string(f, title);
        fprintf(f, ",\"rounds\":%d,\"warmup\":%d,\"elapsed_s\":%.3f,\"baseline\":", rounds, warmup, elapsed_s);
        if (bi >= 0) json_string(f, baseline); else fputs("null", f);
        fputs(",\"plain\":", f);
        if (pi >= 0) json_string(f, plain); else fputs("null", f);
        fputs(",\"variants\":[", f);
        for (int i = 0; i < nv; i++) {
            struct variant *v = &vs[i];
            fprintf(f, "%s\n{\"name\":", i ? "," : "");
            json_string(f, v->name);
            fputs(",\"argv\":[", f);
            for (int k = 0; v->argv[k]; k++) {
                if (k) fputc(',', f);
                json_string(f, v->argv[k]);
            }
            fprintf(f, "],\"n\":%d,\"failures\":%d", v->n, v->failures);
            const char *keys[] = {"median_ms", "p10_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "cpu_median_ms",
                                  "max_rss_mib", "median_rss_mib"};
            double vals[] = {st[i].median, st[i].p10, st[i].p90, st[i].mean, st[i].min, st[i].max,
                             st[i].cpu_median, st[i].rss_max_mib, st[i].rss_median_mib};
            for (size_t k = 0; k < sizeof vals / sizeof vals[0]; k++) {
                fprintf(f, ",\"%s\":", keys[k]);
                json_number(f, vals[k]);
            }
            fputs(",\"ratio_to_baseline\":", f);
            json_number(f, bi >= 0 ? st[i].median / st[bi].median : NAN);
            fputs(",\"ratio_to_plain\":", f);
            json_number(f, pi >= 0 ? st[i].median / st[pi].median : NAN);
            fputs(",\"samples_ms\":[", f);
            for (int k = 0; k < v->n; k++) {
                if (k) fputc(',', f);
                fprintf(f, "%.4f", v->wall_ms[k]);
            }
            fputs("]}", f);
        }
        fputs("]}\n", f);
        fclose(f);
    }
    return failed ? 3 : 0;
}

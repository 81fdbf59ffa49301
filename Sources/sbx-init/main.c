// sbx-init: pid 1 of every jail.
//
//   sbx-init CMD [ARG...]     with fd 3 = status pipe to the supervisor
//
// Forks CMD (PATH lookup in the jail's environment), forwards termination
// signals to it, reaps every orphan, and when CMD ends writes its raw wait
// status (4 bytes) to fd 3 and exits; the kernel then kills whatever else
// is left in the pid namespace. A command that cannot be executed ends with
// 127 (not found) or 126 (not executable) and one line on stderr, as a shell would.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define STATUS_FD 3

static void say(const char *a, const char *b, const char *c) {
    char line[4096];
    int n = snprintf(line, sizeof line, "sbx: %s: %s%s\n", a, b, c);
    if (n > 0) (void)!write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        say("sbx-init", "usage: sbx-init CMD [ARG...]", "");
        return 125;
    }
    fcntl(STATUS_FD, F_SETFD, FD_CLOEXEC);

    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &all, NULL);

    pid_t child = fork();
    if (child < 0) {
        say("fork", strerror(errno), "");
        return 125;
    }
    if (child == 0) {
        sigprocmask(SIG_SETMASK, &none, NULL);
        execvp(argv[1], argv + 1);
        int e = errno;
        if (e == ENOENT) say(argv[1], "command not found", "");
        else say(argv[1], strerror(e), "");
        _exit(e == ENOENT ? 127 : 126);
    }

    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&all, &info);
        if (sig < 0) continue;
        if (sig != SIGCHLD) {
            kill(child, sig);
            continue;
        }
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            if (pid != child) continue;
            (void)!write(STATUS_FD, &status, sizeof status);
            if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
            _exit(128 + WTERMSIG(status));
        }
    }
}

// sbx-init: pid 1 of every jail.
//
//   sbx-init PID      with fd 3 = status pipe to the supervisor
//
// The jail's pid 1 starts the command (pid PID) first and then becomes
// sbx-init, so that exec'ing init costs the command nothing. sbx-init
// forwards termination signals to the command, reaps every orphan, and when
// the command ends writes its raw wait status (4 bytes) to fd 3 and exits;
// the kernel then kills whatever else is left in the pid namespace.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define STATUS_FD 3

int main(int argc, char **argv) {
    if (argc != 2) {
        static const char usage[] = "sbx-init: usage: sbx-init PID (started by sbx, not by hand)\n";
        (void)!write(2, usage, sizeof usage - 1);
        return 125;
    }
    // Same uid as the command: keep it from opening /proc/1/mem to fake our report.
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    pid_t command = (pid_t)atoi(argv[1]);
    fcntl(STATUS_FD, F_SETFD, FD_CLOEXEC);

    // Everything is blocked already (the jail set it up so); make sure, then wait synchronously.
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);

    for (;;) {
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            if (pid != command) continue;
            (void)!write(STATUS_FD, &status, sizeof status);
            if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
            _exit(128 + WTERMSIG(status));
        }
        if (pid < 0 && errno == ECHILD) _exit(125);  // cannot happen: the command is our child
        siginfo_t info;
        int sig = sigwaitinfo(&all, &info);
        if (sig > 0 && sig != SIGCHLD) kill(command, sig);
    }
}

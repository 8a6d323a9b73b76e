/* bench/rusage.c: runs ARGV[1..] as a child and writes its own rusage to fd 3 as
 * "user_us sys_us maxrss_kib wait_status\n"; exits with the child's exit code.
 *
 * bench.py measures every client through this small program: a child forked from it starts
 * from its tiny address space, so ru_maxrss is the client's own peak (a child forked or
 * vforked from Python starts from Python's, and Linux carries that high-water mark across
 * exec), and no work of the harness is charged to the client's CPU time. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("usage: rusage PROGRAM [ARG...] (report on fd 3)\n", stderr);
        return 127;
    }
    if (fcntl(3, F_SETFD, FD_CLOEXEC) < 0) {
        perror("rusage: fd 3");
        return 127;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("rusage: fork");
        return 127;
    }
    if (pid == 0) {
        execvp(argv[1], argv + 1);
        perror("rusage: exec");
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("rusage: wait4");
        return 127;
    }
    dprintf(3, "%ld %ld %ld %d\n",
            (long)ru.ru_utime.tv_sec * 1000000L + (long)ru.ru_utime.tv_usec,
            (long)ru.ru_stime.tv_sec * 1000000L + (long)ru.ru_stime.tv_usec,
            (long)ru.ru_maxrss, status);
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

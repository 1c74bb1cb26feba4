/*
 * measure.c - runs a command and reports what it cost: wall time, CPU
 * time (user + system) and peak resident memory, from wait4()'s rusage.
 * A benchmark helper, not part of nbbatch.
 *
 *   measure OUTFILE COMMAND [ARG...]
 *
 * Writes "wall_s=W cpu_s=C maxrss_mb=M exit=E" to OUTFILE and exits with
 * the command's status.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double
seconds(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int
main(int argc, char **argv)
{
    struct timespec t0, t1;
    struct rusage ru;
    FILE *out;
    pid_t pid;
    int status, code;

    if (argc < 3) {
        fprintf(stderr, "usage: measure OUTFILE COMMAND [ARG...]\n");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    out = fopen(argv[1], "w");
    if (out == NULL) {
        perror(argv[1]);
        return 2;
    }
    fprintf(out, "wall_s=%.3f cpu_s=%.3f maxrss_mb=%.1f exit=%d\n",
            (double)(t1.tv_sec - t0.tv_sec) +
            (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
            seconds(ru.ru_utime) + seconds(ru.ru_stime),
            (double)ru.ru_maxrss / 1024.0, code);
    fclose(out);
    return code;
}

/* Process-tree workloads for the benchmarks, in one small program:
 *
 *   forker tree N ESCAPED   N children that ignore TERM and sleep; ESCAPED of
 *                           them call setsid() and double-fork away. Prints
 *                           "ready" and one pid per line to stdout's file
 *                           given as $FORKER_PIDS, then sleeps ignoring TERM.
 *   forker storm N          N grandchildren orphaned at once (each child forks
 *                           one and exits); prints "done" when all are forked.
 *   forker lines N          N lines of 100 characters on stdout, then exits.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void sleep_forever(void) { for (;;) pause(); }

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: forker tree|storm|lines N [ESCAPED]\n"); return 2; }
    long n = atol(argv[2]);
    if (strcmp(argv[1], "lines") == 0) {
        char line[101];
        memset(line, 'x', 100); line[100] = 0;
        for (long i = 0; i < n; i++) printf("%08ld %s\n", i, line + 9);
        return 0;
    }
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    if (strcmp(argv[1], "storm") == 0) {
        for (long i = 0; i < n; i++) {
            pid_t child = fork();
            if (child == 0) { if (fork() == 0) _exit(0); _exit(0); }
            if (child > 0) waitpid(child, NULL, 0);
        }
        printf("done\n"); fflush(stdout);
        sleep_forever();
    }
    long escaped = argc > 3 ? atol(argv[3]) : 0;
    FILE *pids = getenv("FORKER_PIDS") ? fopen(getenv("FORKER_PIDS"), "w") : NULL;
    int pipefd[2];
    if (pipe(pipefd) != 0) return 1;
    for (long i = 0; i < n; i++) {
        pid_t child = fork();
        if (child == 0) {
            close(pipefd[0]);
            if (i < escaped) {
                setsid();
                if (fork() != 0) _exit(0);
            }
            pid_t me = getpid();
            (void)!write(pipefd[1], &me, sizeof me);
            close(pipefd[1]);
            sleep_forever();
        }
        if (i < escaped && child > 0) waitpid(child, NULL, 0);
    }
    close(pipefd[1]);
    pid_t pid;
    long seen = 0;
    while (seen < n && read(pipefd[0], &pid, sizeof pid) == sizeof pid) {
        if (pids) fprintf(pids, "%d\n", (int)pid);
        seen++;
    }
    if (pids) { fprintf(pids, "%d\n", (int)getpid()); fclose(pids); }
    printf("ready\n"); fflush(stdout);
    sleep_forever();
}

/* A worker for benchmarks: prints "ready PID MONOTONIC_NS" (the moment its
 * main() began), then "SIGNUM MONOTONIC_NS" for
 * every signal it receives, from the handler itself (write(2) and
 * clock_gettime(2) are async-signal-safe). It never exits on its own. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void on_signal(int signum) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long ns = (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
    char buf[48];
    char digits[24];
    int n = 0, d = 0;
    if (signum >= 10) buf[n++] = (char)('0' + signum / 10);
    buf[n++] = (char)('0' + signum % 10);
    buf[n++] = ' ';
    do { digits[d++] = (char)('0' + ns % 10); ns /= 10; } while (ns);
    while (d) buf[n++] = digits[--d];
    buf[n++] = '\n';
    (void)!write(1, buf, (size_t)n);
}

int main(void) {
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    int handled[] = {SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM};
    for (unsigned i = 0; i < sizeof handled / sizeof handled[0]; i++) sigaction(handled[i], &sa, NULL);
    printf("ready %d %llu\n", (int)getpid(),
           (unsigned long long)started.tv_sec * 1000000000ULL + (unsigned long long)started.tv_nsec);
    fflush(stdout);
    for (;;) pause();
}

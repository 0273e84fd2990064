/* clockshift: an LD_PRELOAD shim that fakes a suspend for one process, for tests.

   A real suspend moves the wall clock (CLOCK_REALTIME) and the suspend-counting clock
   (CLOCK_BOOTTIME) forward together while CLOCK_MONOTONIC, the clock asyncio's timers
   run on, stands still. libfaketime cannot do that: it fakes BOOTTIME with MONOTONIC or
   not at all. So: the number of seconds in the file named by $CLOCKSHIFT_FILE (re-read
   when the file changes, checked at most every 10 ms) is added to REALTIME and
   BOOTTIME; MONOTONIC is left alone.

   It also answers clock_nanosleep() on CLOCK_MONOTONIC itself, straight from the
   kernel. libfaketime 0.9.10 fails absolute monotonic sleeps with EINVAL once its
   offset is non-zero (Python's time.sleep, which watchdog's observer thread calls),
   although FAKETIME_DONT_FAKE_MONOTONIC says that clock is real. Load this shim
   before libfaketime (LD_PRELOAD="clockshift.so libfaketime.so.1") and the wall-clock
   steps come from libfaketime, the sleeps from the kernel.

   Build: cc -shared -fPIC -O2 -o clockshift.so clockshift.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static double offset;
static struct timespec checked, file_mtime;

static void raw_monotonic(struct timespec *ts) { syscall(SYS_clock_gettime, CLOCK_MONOTONIC, ts); }

static void refresh_offset(void) {
    const char *path = getenv("CLOCKSHIFT_FILE");
    struct timespec now;
    struct stat st;
    if (!path) return;
    raw_monotonic(&now);
    if ((now.tv_sec - checked.tv_sec) * 1000000000L + (now.tv_nsec - checked.tv_nsec) < 10000000L)
        return;
    checked = now;
    if (stat(path, &st) != 0) return;
    if (st.st_mtim.tv_sec == file_mtime.tv_sec && st.st_mtim.tv_nsec == file_mtime.tv_nsec) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    double value;
    if (fscanf(f, "%lf", &value) == 1) {
        offset = value;
        file_mtime = st.st_mtim;
    }
    fclose(f);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(id, ts);
    if (rc != 0 || !(id == CLOCK_REALTIME || id == CLOCK_BOOTTIME || id == CLOCK_REALTIME_COARSE))
        return rc;
    refresh_offset();
    if (offset != 0) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec
                       + (long long)(offset * 1e9);
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return rc;
}

int clock_nanosleep(clockid_t id, int flags, const struct timespec *req, struct timespec *rem) {
    static int (*real)(clockid_t, int, const struct timespec *, struct timespec *);
    if (id == CLOCK_MONOTONIC) {
        long rc = syscall(SYS_clock_nanosleep, id, flags, req, rem);
        return rc == 0 ? 0 : errno;  /* clock_nanosleep returns the error, not -1 */
    }
    if (!real) real = dlsym(RTLD_NEXT, "clock_nanosleep");
    return real(id, flags, req, rem);
}

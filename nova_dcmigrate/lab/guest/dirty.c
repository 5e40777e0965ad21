/*
 * dirty - guest memory dirtier for the nova-dcmigrate lab.
 *
 * Usage: dirty MIB RATE
 *
 *   MIB   size of the region to allocate and dirty, in MiB (> 0)
 *   RATE  dirtying rate in MiB/s; 0 means as fast as possible
 *
 * The region is allocated and every 4 KiB page is touched once.  Then the
 * program loops over the region forever, writing one 8-byte word into every
 * page.  The word combines the pass counter and the page index, so a page
 * that is dirtied again also gets new content: a migration that drops a
 * re-dirtied page is caught by comparing guest RAM, not just by counting.
 *
 * Pages are written in bursts of 1 MiB (256 pages).  With a non-zero RATE
 * the program sleeps between bursts against an absolute schedule, so the
 * average rate holds even when single sleeps overshoot.  If it falls more
 * than one second behind (e.g. the vCPU is throttled), the schedule is
 * reset instead of catching up in one long burst.
 *
 * Output goes to the console and is kept rare: one line once the region is
 * touched ("DIRTY_RUNNING ...") and one progress line about every 30 s.
 * Built statically (gcc -O2 -static) because the initramfs has no libc.
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE_SIZE 4096UL
#define BURST_PAGES 256UL                 /* 1 MiB */
#define PAGES_PER_MIB (1048576UL / PAGE_SIZE)
#define PROGRESS_INTERVAL_NS (30ULL * 1000000000ULL)
#define MAX_LAG_NS (1000000000ULL)

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_until_ns(uint64_t deadline)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(deadline / 1000000000ULL);
    ts.tv_nsec = (long)(deadline % 1000000000ULL);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static int parse_ulong(const char *text, unsigned long *out)
{
    char *end;

    errno = 0;
    *out = strtoul(text, &end, 10);
    return errno == 0 && end != text && *end == '\0';
}

int main(int argc, char **argv)
{
    unsigned long mib, rate, npages, page;
    uint64_t pass, bursts, start, base, deadline, next_report, ns_per_burst;
    volatile uint64_t *region;

    if (argc != 3 || !parse_ulong(argv[1], &mib) || !parse_ulong(argv[2], &rate)
            || mib == 0) {
        fprintf(stderr, "usage: dirty MIB RATE_MIB_PER_S (MIB > 0, RATE 0 = max)\n");
        return 2;
    }

    npages = mib * PAGES_PER_MIB;
    region = aligned_alloc(PAGE_SIZE, npages * PAGE_SIZE);
    if (region == NULL) {
        printf("DIRTY_FAILED cannot allocate %lu MiB\n", mib);
        fflush(stdout);
        return 1;
    }
    /* Touch every page once so the whole region is backed by guest RAM. */
    for (page = 0; page < npages; page++)
        region[page * (PAGE_SIZE / sizeof(uint64_t))] = page;

    printf("DIRTY_RUNNING mib=%lu rate=%lu\n", mib, rate);
    fflush(stdout);

    /* One burst = 1 MiB, so at RATE MiB/s a burst is due every 1/RATE s. */
    ns_per_burst = rate ? 1000000000ULL / rate : 0;
    start = base = now_ns();
    next_report = start + PROGRESS_INTERVAL_NS;
    bursts = 0;
    for (pass = 1;; pass++) {
        for (page = 0; page < npages; page++) {
            region[page * (PAGE_SIZE / sizeof(uint64_t))] =
                (pass << 32) ^ (uint64_t)page;
            if ((page + 1) % BURST_PAGES != 0 && page + 1 != npages)
                continue;
            bursts++;
            if (ns_per_burst) {
                uint64_t now = now_ns();

                deadline = base + bursts * ns_per_burst;
                if (now > deadline + MAX_LAG_NS) {
                    /* Far behind: restart the schedule from here. */
                    base = now;
                    bursts = 0;
                } else if (deadline > now) {
                    sleep_until_ns(deadline);
                }
            }
        }
        if (now_ns() >= next_report) {
            uint64_t elapsed = now_ns() - start;

            printf("dirty: pass=%llu elapsed=%llus avg=%llu MiB/s\n",
                   (unsigned long long)pass,
                   (unsigned long long)(elapsed / 1000000000ULL),
                   (unsigned long long)(pass * mib * 1000000000ULL / elapsed));
            fflush(stdout);
            next_report += PROGRESS_INTERVAL_NS;
        }
    }
    return 0;
}

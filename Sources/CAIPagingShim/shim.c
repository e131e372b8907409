#define _GNU_SOURCE
#include "aipaging_shim.h"
#include <sched.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/filter.h>
#include <arpa/inet.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <malloc.h>
#include <stdio.h>
#include <stdatomic.h>
#include <pthread.h>

int aip_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }
int aip_unshare_net(void) { return unshare(CLONE_NEWNET); }

int aip_timerfd_create_boottime(int nonblock) {
    return timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC | (nonblock ? TFD_NONBLOCK : 0));
}

int aip_timerfd_arm_abs_ns(int fd, uint64_t deadline_ns) {
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(deadline_ns / 1000000000ull);
    its.it_value.tv_nsec = (long)(deadline_ns % 1000000000ull);
    return timerfd_settime(fd, deadline_ns ? TFD_TIMER_ABSTIME : 0, &its, NULL);
}

static uint64_t now_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
uint64_t aip_boottime_ns(void) { return now_ns(CLOCK_BOOTTIME); }
uint64_t aip_monotonic_ns(void) { return now_ns(CLOCK_MONOTONIC); }
uint64_t aip_realtime_ns(void) { return now_ns(CLOCK_REALTIME); }

int aip_peercred(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

int aip_netlink_socket(int protocol) { return socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol); }

int aip_gettid(void) { return (int)syscall(SYS_gettid); }

static uint32_t crc_table[8][256];
static int crc_ready;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    __atomic_store_n(&crc_ready, 1, __ATOMIC_RELEASE);
}

uint32_t aip_crc32(uint32_t crc, const void *data, size_t len) {
    if (!__atomic_load_n(&crc_ready, __ATOMIC_ACQUIRE)) crc_init();
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (len >= 8) {   /* slice-by-8 */
        uint32_t a = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t b = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = crc_table[7][a & 0xff] ^ crc_table[6][(a >> 8) & 0xff] ^ crc_table[5][(a >> 16) & 0xff] ^ crc_table[4][a >> 24]
          ^ crc_table[3][b & 0xff] ^ crc_table[2][(b >> 8) & 0xff] ^ crc_table[1][(b >> 16) & 0xff] ^ crc_table[0][b >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

int aip_thread_set_nice(int nice) {
    pid_t tid = (pid_t)syscall(SYS_gettid);
    return setpriority(PRIO_PROCESS, (id_t)tid, nice) == 0 ? 0 : -errno;
}

void aip_thread_set_name(const char *name) { (void)pthread_setname_np(pthread_self(), name); }

/* struct sched_attr of sched_setattr(2); glibc 2.36 has no wrapper. */
struct aip_sched_attr {
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
    uint32_t sched_util_min, sched_util_max;
};

/* sched_setattr(2) of the calling thread: `policy`, its current nice value kept, `runtime` (the
 * EEVDF slice for SCHED_OTHER/SCHED_BATCH; 0: the default) and `flags`. Returns the tid, or
 * -errno. */
static int aip_thread_setattr(uint32_t policy, uint64_t runtime, uint64_t flags) {
    pid_t tid = (pid_t)syscall(SYS_gettid);
    struct aip_sched_attr a = {0};
    a.size = sizeof(a);
    a.sched_policy = policy;
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, (id_t)tid);
    if (errno != 0) return -errno;
    a.sched_nice = nice;
    a.sched_runtime = runtime;
    a.sched_flags = flags;
    return syscall(SYS_sched_setattr, tid, &a, 0) == 0 ? (int)tid : -errno;
}

int aip_thread_set_slice(uint64_t slice_ns) {
    /* Threads this one starts get nice 0 and the default slice, not its own. */
    int tid = aip_thread_setattr(SCHED_OTHER, slice_ns, 0x01 /* SCHED_FLAG_RESET_ON_FORK */);
    if (tid < 0) return tid;
    /* Kernels before 6.12 accept and ignore sched_runtime for SCHED_OTHER: read it back. */
    struct aip_sched_attr got = {0};
    if (syscall(SYS_sched_getattr, (pid_t)tid, &got, sizeof(got), 0) != 0) return -errno;
    return got.sched_runtime == 0 ? -EOPNOTSUPP : 0;
}

/* SCHED_BATCH through sched_setattr, which the systemd unit allows (sched_setscheduler it does
 * not). */
int aip_thread_set_batch(void) {
    int tid = aip_thread_setattr(SCHED_BATCH, 0, 0);
    return tid < 0 ? tid : 0;
}

/* The process's memory: resident set, and as malloc sees it: bytes in use (mmapped chunks
 * included) and bytes free inside its arenas (kept from the kernel: fragmentation). */
void aip_malloc_usage(uint64_t *in_use, uint64_t *free_bytes, uint64_t *rss) {
    struct mallinfo2 m = mallinfo2();
    *rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long size = 0, resident = 0;
        if (fscanf(f, "%lu %lu", &size, &resident) == 2) *rss = (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
        fclose(f);
    }
    *in_use = (uint64_t)m.uordblks + (uint64_t)m.hblkhd;
    *free_bytes = (uint64_t)m.fordblks;
}

/* malloc settings for a long-running agent whose bursts (a batch of thousands of leases, a
 * netlink dump, a window's records) allocate large transient arrays: a fixed mmap threshold keeps
 * them out of the heap (glibc otherwise raises the threshold after each freed burst, after which
 * bursts land in the heap and fragment it). The number of arenas is left alone: with fewer arenas
 * than threads, the lease service could wait on an arena lock held by a preempted nice-10
 * evidence thread, and a stall between computing element timeouts and the kernel taking them
 * would make elements outlive their leases. */
void aip_malloc_tune(void) {
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    mallopt(M_TRIM_THRESHOLD, 4 * 1024 * 1024);
}

/* Gives memory freed inside malloc's arenas back to the kernel (glibc keeps freed chunks
 * otherwise, so RSS would stay at the highest burst). It walks the heap with the arenas locked
 * (milliseconds for hundreds of MB): the agent calls it only when idle. */
void aip_malloc_trim(void) { malloc_trim(0); }

int aip_netlink_drop_ports(int fd, const uint32_t *ports, int n) {
    if (n < 0 || n > 32) return -EINVAL;
    struct sock_filter prog[1 + 32 + 2];
    int i = 0;
    /* A = nlmsg_pid: bytes 12..15 of the datagram, which an absolute load reads big-endian. */
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 12);
    for (int k = 0; k < n; k++) {
        /* equal: jump over the remaining n-k-1 tests and the accept, to the drop */
        prog[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ntohl(ports[k]), (uint8_t)(n - k), 0);
    }
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0xffffffffu);   /* accept */
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0);             /* drop */
    struct sock_fprog fp = { .len = (unsigned short)i, .filter = prog };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof fp) == 0 ? 0 : -errno;
}

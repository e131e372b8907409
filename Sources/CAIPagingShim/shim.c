#define _GNU_SOURCE
#include "aipaging_shim.h"
#include <sched.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <sys/syscall.h>

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

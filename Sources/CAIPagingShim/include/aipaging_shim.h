#ifndef AIPAGING_SHIM_H
#define AIPAGING_SHIM_H
// C glue that Swift cannot express directly: _GNU_SOURCE calls and macros.
// Every name is prefixed `aip_`.
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

/// setns(fd, CLONE_NEWNET) for the calling thread only. Returns 0 or -1 with errno set.
int aip_setns_net(int fd);
/// unshare(CLONE_NEWNET) for the calling thread. Returns 0 or -1 with errno set.
int aip_unshare_net(void);

/// timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC [| TFD_NONBLOCK]).
int aip_timerfd_create_boottime(int nonblock);
/// Arms the timer at an absolute CLOCK_BOOTTIME deadline in nanoseconds (0 disarms).
int aip_timerfd_arm_abs_ns(int fd, uint64_t deadline_ns);
/// clock_gettime(CLOCK_BOOTTIME) in nanoseconds.
uint64_t aip_boottime_ns(void);
/// clock_gettime(CLOCK_MONOTONIC) in nanoseconds.
uint64_t aip_monotonic_ns(void);
/// clock_gettime(CLOCK_REALTIME) in nanoseconds since the epoch.
uint64_t aip_realtime_ns(void);

/// Layout-compatible with `struct ucred` (which glibc hides without _GNU_SOURCE).
struct aip_ucred { int32_t pid; uint32_t uid; uint32_t gid; };

/// SO_PEERCRED of a connected Unix socket. Returns 0 or -1 with errno set.
int aip_peercred(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// Thread id of the caller (gettid).
int aip_gettid(void);

/// TC_H_MAKE / TC_H_MAJ / TC_H_MIN.
static inline uint32_t aip_tc_h_make(uint32_t major, uint32_t minor) { return (major << 16) | (minor & 0xffff); }

#endif

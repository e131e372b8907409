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

/// socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol): Swift's view of the SOCK_* constants
/// depends on which module imported <sys/socket.h> first, so the netlink socket is made here.
int aip_netlink_socket(int protocol);

/// CRC-32 (IEEE, as zlib's crc32) of `len` bytes, continuing from `crc` (0 to start).
uint32_t aip_crc32(uint32_t crc, const void *data, size_t len);

/// Thread id of the caller (gettid).
int aip_gettid(void);

/// TC_H_MAKE / TC_H_MAJ / TC_H_MIN.
static inline uint32_t aip_tc_h_make(uint32_t major, uint32_t minor) { return (major << 16) | (minor & 0xffff); }

// --- nftables ---
// Netlink helpers for AIPagingKernel/NFTables: what Swift cannot express directly — the
// NLMSG_*/NLA_* macros over the variable-length `struct nlmsgerr` and its extended-ACK TLVs.
// Pointers passed in and out stay inside the Swift wrappers.

/// What one NLMSG_ERROR message (an ACK when error == 0) says.
typedef struct aip_nft_error_info {
    /// 0 for an ACK, a negative errno otherwise.
    int32_t error;
    /// Sequence number and type of the request the kernel answers.
    uint32_t request_seq;
    uint16_t request_type;
    /// NLMSGERR_ATTR_MSG if the kernel sent one (points into the reply buffer), else NULL.
    const char *extack_msg;
    /// NLMSGERR_ATTR_OFFS (byte offset of the offending attribute in the request), or UINT32_MAX.
    uint32_t extack_offset;
} aip_nft_error_info;

/// Decodes an NLMSG_ERROR message of `len` bytes at `nlh`. Returns 0, or -1 if it is not a
/// well-formed NLMSG_ERROR (too short, wrong type).
int aip_nft_parse_error(const void *nlh, size_t len, aip_nft_error_info *out);
// --- end nftables ---

// --- tc / conntrack / route ---
// Implemented in tc_shim.c. Names are prefixed aip_tc_ / aip_ct_ / aip_rt_.

/// Name the priority-to-group eBPF program is loaded under (shows in `tc filter show`).
#define AIP_TC_BPF_PROG_NAME "aip_prio2grp"

/// Loads (bpf(BPF_PROG_LOAD)) a BPF_PROG_TYPE_SCHED_CLS program for a cls_bpf filter in
/// non-direct-action mode that maps skb->priority G:N to the class qdisc_major:G:
///   r0 = skb->priority >> 16; return r0 >= first_group ? (qdisc_major << 16 | r0) : 0;
/// Returns the program fd (O_CLOEXEC) or -1 with errno set; the verifier log goes to `log`.
int aip_tc_bpf_load_priority_to_class(uint16_t qdisc_major, uint16_t first_group,
                                      char *log, uint32_t log_size);
// --- end tc / conntrack / route ---

#endif

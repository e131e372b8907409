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

/// Attaches a classic BPF socket filter to the netlink socket `fd` that drops every datagram
/// whose first message header carries one of the `n` (at most 32) port ids `ports` in
/// `nlmsg_pid`: the kernel then neither queues those notifications nor wakes the reader. (One
/// notification datagram comes from one origin: rtnetlink sends one message per datagram, and
/// nf_tables batches a transaction's notifications, all from the port that sent it.) Returns 0
/// or -errno.
int aip_netlink_drop_ports(int fd, const uint32_t *ports, int n);


// --- UDP batches (udp_shim.c): the STAMP prober and reflector ---

/// One datagram to send: payload, destination (family 4 or 6, address in network order, port in
/// host order) and, if `has_priority`, the SO_PRIORITY the datagram carries (cmsg).
typedef struct aip_udp_out {
    const void *data;
    uint32_t len;
    uint8_t addr[16];
    uint16_t port;
    uint8_t family;
    uint8_t has_priority;
    uint32_t priority;
} aip_udp_out;

/// One received datagram: `data`/`cap` are the caller's buffer; the rest is filled in. `rx_ns` is
/// the kernel's receive time (SO_TIMESTAMPNS, CLOCK_REALTIME ns; 0 if absent), `ttl` the IPv4 TTL
/// or IPv6 hop limit (-1 if absent).
typedef struct aip_udp_in {
    void *data;
    uint32_t cap;
    uint32_t len;
    uint8_t addr[16];
    uint16_t port;
    uint8_t family;
    uint8_t truncated;
    int64_t rx_ns;
    int16_t ttl;
} aip_udp_in;

/// A non-blocking UDP socket (IPv6 sockets are v6-only) with receive timestamps and TTL/hop
/// limit reporting, bound to addr:port if either is given (addr NULL: any). Buffer sizes <= 0
/// keep the defaults. Returns the fd or -1 with errno set.
int aip_udp_open(uint8_t family, const uint8_t *addr, uint16_t port, int rcvbuf, int sndbuf);
/// setsockopt(SO_PRIORITY).
int aip_udp_set_priority(int fd, uint32_t priority);
/// The bound local port, or -1.
int aip_udp_local_port(int fd);
/// sendmmsg of up to 128 datagrams; returns how many were sent, or -1 with errno (EINVAL from
/// the first message when the kernel does not take SO_PRIORITY as a control message).
int aip_udp_send_batch(int fd, const aip_udp_out *msgs, unsigned n);
/// recvmmsg (MSG_DONTWAIT) of up to 128 datagrams; returns how many, 0 if none, -1 with errno.
int aip_udp_recv_batch(int fd, aip_udp_in *msgs, unsigned n);

/// Kernel send timestamps: SO_TIMESTAMPING with TX_SCHED (taken as a datagram enters the
/// packet scheduler, before any queueing in tc), OPT_ID (each datagram's key: its number among the
/// socket's datagrams since this call, from 0) and OPT_TSONLY. Returns 0 or -1 with errno.
int aip_udp_enable_tx_timestamps(int fd);
/// Reads up to n send timestamps (CLOCK_REALTIME ns) from the error queue with their keys.
/// Returns how many, 0 if none, -1 with errno.
int aip_udp_read_tx_timestamps(int fd, uint32_t *keys, int64_t *ns, unsigned n);

/// The kernel's estimate of the system clock's error (adjtimex `esterror`) in ns, -1 if unknown;
/// `*synchronized` is 1 when the clock is synchronized (no STA_UNSYNC, state not TIME_ERROR).
int64_t aip_clock_error_ns(int *synchronized);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), its signal and its drain.
int aip_eventfd(void);
int aip_eventfd_signal(int fd);
void aip_eventfd_drain(int fd);

/// Sets the calling thread's nice value (Linux: per thread): 10 for background work (evidence),
/// `lease_thread_nice` for the threads controllers wait on (below 0 needs CAP_SYS_NICE or
/// RLIMIT_NICE). 0 or -errno.
int aip_thread_set_nice(int nice);
/// Puts the calling thread in SCHED_BATCH, its nice value kept: the kernel treats it as
/// CPU-bound and its wakeups never preempt the running thread (background work). 0 or -errno.
int aip_thread_set_batch(void);
/// Gives the calling thread (SCHED_OTHER, its nice kept) a custom EEVDF slice of `slice_ns`
/// (Linux >= 6.12; clamped by the kernel to 0.1-100 ms): a thread with a shorter slice than the
/// running one preempts it on wakeup instead of waiting out the other's slice. With
/// SCHED_RESET_ON_FORK: threads it starts get nice 0 and the default slice. 0, -EOPNOTSUPP
/// when the kernel ignores it (before 6.12), or -errno.
int aip_thread_set_slice(uint64_t slice_ns);
/// Names the calling thread (at most 15 characters), as `ps -L` and perf show it.
void aip_thread_set_name(const char *name);

void aip_malloc_tune(void);
void aip_malloc_trim(void);
void aip_malloc_usage(uint64_t *in_use, uint64_t *free_bytes, uint64_t *rss);

#endif

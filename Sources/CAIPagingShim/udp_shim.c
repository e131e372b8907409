#define _GNU_SOURCE
#include "aipaging_shim.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <arpa/inet.h>

// UDP datagrams in batches for the STAMP prober and reflector: sendmmsg with a per-message
// SO_PRIORITY control message (Linux >= 6.14 accepts SO_PRIORITY as a cmsg), recvmmsg with the
// kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME) and the TTL / hop limit.

#define AIP_UDP_BATCH_MAX 128

static socklen_t fill_addr(struct sockaddr_storage *ss, uint8_t family, const uint8_t *addr, uint16_t port) {
    memset(ss, 0, sizeof(*ss));
    if (family == 6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        memcpy(&a->sin6_addr, addr, 16);
        return sizeof(*a);
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    memcpy(&a->sin_addr, addr, 4);
    return sizeof(*a);
}

int aip_udp_open(uint8_t family, const uint8_t *addr, uint16_t port, int rcvbuf, int sndbuf) {
    int fd = socket(family == 6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) != 0) goto fail;
    if (family == 6) {
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) goto fail;
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, &one, sizeof(one)) != 0) goto fail;
    } else {
        if (setsockopt(fd, IPPROTO_IP, IP_RECVTTL, &one, sizeof(one)) != 0) goto fail;
    }
    if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    if (sndbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    if (addr != NULL || port != 0) {
        static const uint8_t any[16] = {0};
        struct sockaddr_storage ss;
        socklen_t len = fill_addr(&ss, family, addr ? addr : any, port);
        if (port != 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&ss, len) != 0) goto fail;
    }
    return fd;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

int aip_udp_set_priority(int fd, uint32_t priority) {
    return setsockopt(fd, SOL_SOCKET, SO_PRIORITY, &priority, sizeof(priority));
}

int aip_udp_local_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int aip_udp_send_batch(int fd, const aip_udp_out *msgs, unsigned n) {
    if (n > AIP_UDP_BATCH_MAX) n = AIP_UDP_BATCH_MAX;
    struct mmsghdr hdrs[AIP_UDP_BATCH_MAX];
    struct iovec iovs[AIP_UDP_BATCH_MAX];
    struct sockaddr_storage addrs[AIP_UDP_BATCH_MAX];
    union { char buf[CMSG_SPACE(sizeof(uint32_t))]; struct cmsghdr align; } ctl[AIP_UDP_BATCH_MAX];
    memset(hdrs, 0, sizeof(struct mmsghdr) * n);
    for (unsigned i = 0; i < n; i++) {
        iovs[i].iov_base = (void *)msgs[i].data;
        iovs[i].iov_len = msgs[i].len;
        hdrs[i].msg_hdr.msg_iov = &iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_name = &addrs[i];
        hdrs[i].msg_hdr.msg_namelen = fill_addr(&addrs[i], msgs[i].family, msgs[i].addr, msgs[i].port);
        if (msgs[i].has_priority) {
            memset(ctl[i].buf, 0, sizeof(ctl[i].buf));
            hdrs[i].msg_hdr.msg_control = ctl[i].buf;
            hdrs[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
            struct cmsghdr *c = CMSG_FIRSTHDR(&hdrs[i].msg_hdr);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SO_PRIORITY;
            c->cmsg_len = CMSG_LEN(sizeof(uint32_t));
            memcpy(CMSG_DATA(c), &msgs[i].priority, sizeof(uint32_t));
        }
    }
    int r;
    do { r = sendmmsg(fd, hdrs, n, 0); } while (r < 0 && errno == EINTR);
    return r;
}

int aip_udp_recv_batch(int fd, aip_udp_in *msgs, unsigned n) {
    if (n > AIP_UDP_BATCH_MAX) n = AIP_UDP_BATCH_MAX;
    struct mmsghdr hdrs[AIP_UDP_BATCH_MAX];
    struct iovec iovs[AIP_UDP_BATCH_MAX];
    struct sockaddr_storage addrs[AIP_UDP_BATCH_MAX];
    union { char buf[CMSG_SPACE(sizeof(struct timespec)) + CMSG_SPACE(sizeof(int)) + 64]; struct cmsghdr align; } ctl[AIP_UDP_BATCH_MAX];
    memset(hdrs, 0, sizeof(struct mmsghdr) * n);
    for (unsigned i = 0; i < n; i++) {
        iovs[i].iov_base = msgs[i].data;
        iovs[i].iov_len = msgs[i].cap;
        hdrs[i].msg_hdr.msg_iov = &iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_name = &addrs[i];
        hdrs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
        hdrs[i].msg_hdr.msg_control = ctl[i].buf;
        hdrs[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
    }
    int r;
    do { r = recvmmsg(fd, hdrs, n, MSG_DONTWAIT, NULL); } while (r < 0 && errno == EINTR);
    if (r < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    for (int i = 0; i < r; i++) {
        aip_udp_in *m = &msgs[i];
        m->len = hdrs[i].msg_len;
        m->truncated = (hdrs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        m->rx_ns = 0;
        m->ttl = -1;
        if (addrs[i].ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addrs[i];
            m->family = 6; m->port = ntohs(a->sin6_port); memcpy(m->addr, &a->sin6_addr, 16);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&addrs[i];
            m->family = 4; m->port = ntohs(a->sin_port); memset(m->addr, 0, 16); memcpy(m->addr, &a->sin_addr, 4);
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&hdrs[i].msg_hdr); c != NULL; c = CMSG_NXTHDR(&hdrs[i].msg_hdr, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                m->rx_ns = (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
            } else if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) ||
                       (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_HOPLIMIT)) {
                int v;
                memcpy(&v, CMSG_DATA(c), sizeof(v));
                m->ttl = (int16_t)v;
            }
        }
    }
    return r;
}

int aip_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int aip_eventfd_signal(int fd) {
    uint64_t one = 1;
    return write(fd, &one, sizeof(one)) == sizeof(one) ? 0 : -1;
}

void aip_eventfd_drain(int fd) {
    uint64_t v;
    while (read(fd, &v, sizeof(v)) == sizeof(v)) {}
}

#include <sys/timex.h>

int64_t aip_clock_error_ns(int *synchronized) {
    struct timex tx;
    memset(&tx, 0, sizeof(tx));
    int state = adjtimex(&tx);
    *synchronized = (state >= 0 && state != TIME_ERROR && !(tx.status & STA_UNSYNC)) ? 1 : 0;
    if (state < 0) return -1;
    return (int64_t)tx.esterror * 1000;
}

#include <linux/net_tstamp.h>
#include <linux/errqueue.h>

int aip_udp_enable_tx_timestamps(int fd) {
    int flags = SOF_TIMESTAMPING_TX_SCHED | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID | SOF_TIMESTAMPING_OPT_TSONLY;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags));
}

int aip_udp_read_tx_timestamps(int fd, uint32_t *keys, int64_t *ns, unsigned n) {
    if (n > AIP_UDP_BATCH_MAX) n = AIP_UDP_BATCH_MAX;
    struct mmsghdr hdrs[AIP_UDP_BATCH_MAX];
    union { char buf[CMSG_SPACE(sizeof(struct scm_timestamping)) + CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in6)) + 64]; struct cmsghdr align; } ctl[AIP_UDP_BATCH_MAX];
    char dummy[AIP_UDP_BATCH_MAX][8];
    struct iovec iovs[AIP_UDP_BATCH_MAX];
    memset(hdrs, 0, sizeof(struct mmsghdr) * n);
    for (unsigned i = 0; i < n; i++) {
        iovs[i].iov_base = dummy[i];
        iovs[i].iov_len = sizeof(dummy[i]);
        hdrs[i].msg_hdr.msg_iov = &iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_control = ctl[i].buf;
        hdrs[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
    }
    int r;
    do { r = recvmmsg(fd, hdrs, n, MSG_ERRQUEUE | MSG_DONTWAIT, NULL); } while (r < 0 && errno == EINTR);
    if (r < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    int out = 0;
    for (int i = 0; i < r; i++) {
        int64_t t = 0;
        int have_key = 0;
        uint32_t key = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&hdrs[i].msg_hdr); c != NULL; c = CMSG_NXTHDR(&hdrs[i].msg_hdr, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPING) {
                struct scm_timestamping ts;
                memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                t = (int64_t)ts.ts[0].tv_sec * 1000000000ll + ts.ts[0].tv_nsec;
            } else if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) ||
                       (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
                struct sock_extended_err e;
                memcpy(&e, CMSG_DATA(c), sizeof(e));
                if (e.ee_errno == ENOMSG && e.ee_origin == SO_EE_ORIGIN_TIMESTAMPING && e.ee_info == SCM_TSTAMP_SCHED) {
                    key = e.ee_data;
                    have_key = 1;
                }
            }
        }
        if (have_key && t != 0) {
            keys[out] = key;
            ns[out] = t;
            out++;
        }
    }
    return out;
}

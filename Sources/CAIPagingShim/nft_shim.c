// nftables netlink glue for AIPagingKernel/NFTables (see `// --- nftables ---` in aipaging_shim.h).
#include "aipaging_shim.h"
#include <string.h>
#include <stdint.h>
#include <linux/netlink.h>

int aip_nft_parse_error(const void *buf, size_t len, aip_nft_error_info *out) {
    const struct nlmsghdr *nlh = buf;
    memset(out, 0, sizeof(*out));
    out->extack_offset = UINT32_MAX;
    if (len < NLMSG_HDRLEN || nlh->nlmsg_len < NLMSG_HDRLEN || nlh->nlmsg_len > len)
        return -1;
    if (nlh->nlmsg_type != NLMSG_ERROR)
        return -1;
    if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr)))
        return -1;
    const struct nlmsgerr *err = NLMSG_DATA(nlh);
    out->error = err->error;
    out->request_seq = err->msg.nlmsg_seq;
    out->request_type = err->msg.nlmsg_type;
    if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS))
        return 0;
    // The TLVs follow the echoed request: only its header when NLM_F_CAPPED (NETLINK_CAP_ACK) or
    // for an ACK, the whole request otherwise.
    size_t echoed = (nlh->nlmsg_flags & NLM_F_CAPPED) || err->error == 0
        ? sizeof(struct nlmsghdr) : err->msg.nlmsg_len;
    size_t start = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(int) + echoed);
    if (start > nlh->nlmsg_len)
        return 0;
    const unsigned char *p = (const unsigned char *)buf + start;
    size_t remaining = nlh->nlmsg_len - start;
    while (remaining >= sizeof(struct nlattr)) {
        const struct nlattr *a = (const struct nlattr *)p;
        if (a->nla_len < sizeof(struct nlattr) || a->nla_len > remaining)
            break;
        size_t payload = a->nla_len - NLA_HDRLEN;
        const unsigned char *data = p + NLA_HDRLEN;
        switch (a->nla_type & NLA_TYPE_MASK) {
        case NLMSGERR_ATTR_MSG:
            if (payload > 0 && memchr(data, 0, payload) != NULL)
                out->extack_msg = (const char *)data;
            break;
        case NLMSGERR_ATTR_OFFS:
            if (payload >= sizeof(uint32_t))
                memcpy(&out->extack_offset, data, sizeof(uint32_t));
            break;
        }
        size_t step = NLA_ALIGN(a->nla_len);
        if (step > remaining) break;
        p += step;
        remaining -= step;
    }
    return 0;
}

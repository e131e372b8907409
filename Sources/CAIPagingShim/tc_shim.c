// tc / conntrack / route glue: the parts of the kernel ABI Swift cannot express directly
// (union bpf_attr with anonymous members, struct bpf_insn bitfields).
#define _GNU_SOURCE
#include "aipaging_shim.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <linux/bpf.h>

int aip_tc_bpf_load_priority_to_class(uint16_t qdisc_major, uint16_t first_group,
                                      char *log, uint32_t log_size) {
    // r0 = skb->priority; r0 >>= 16; if r0 >= first_group goto +2; r0 = 0; exit;
    // r0 |= qdisc_major << 16; exit   (cls_bpf non-direct-action: r0 = classid, 0 = no match)
    struct bpf_insn insns[] = {
        { .code = BPF_LDX | BPF_MEM | BPF_W, .dst_reg = BPF_REG_0, .src_reg = BPF_REG_1,
          .off = (int16_t)offsetof(struct __sk_buff, priority) },
        { .code = BPF_ALU64 | BPF_RSH | BPF_K, .dst_reg = BPF_REG_0, .imm = 16 },
        { .code = BPF_JMP | BPF_JGE | BPF_K, .dst_reg = BPF_REG_0, .off = 2, .imm = first_group },
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
        { .code = BPF_JMP | BPF_EXIT },
        { .code = BPF_ALU64 | BPF_OR | BPF_K, .dst_reg = BPF_REG_0, .imm = (int32_t)((uint32_t)qdisc_major << 16) },
        { .code = BPF_JMP | BPF_EXIT },
    };
    static const char license[] = "GPL";
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_SCHED_CLS;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = sizeof(insns) / sizeof(insns[0]);
    attr.license = (uint64_t)(uintptr_t)license;
    if (log && log_size > 0) {
        log[0] = 0;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = 1;
    }
    strncpy(attr.prog_name, AIP_TC_BPF_PROG_NAME, sizeof(attr.prog_name) - 1);
    int fd;
    do {
        fd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
    } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
    return fd;
}

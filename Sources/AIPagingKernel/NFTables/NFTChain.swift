#if canImport(Glibc)
import Glibc
#endif
import CNFTables

/// Owner of one `struct nftnl_chain`.
final class NftnlChain {
    let raw: OpaquePointer
    init() {
        guard let c = nftnl_chain_alloc() else { fatalError("nftnl_chain_alloc: out of memory") }
        raw = c
    }
    deinit { nftnl_chain_free(raw) }
}

/// A base chain (`type T hook H priority P; policy accept;`).
struct NFTChainSpec: Equatable {
    var family: UInt8
    var table: String
    var name: String
    /// `filter`, `nat`, `route`.
    var type: String
    /// `NF_INET_PRE_ROUTING`, `NF_INET_FORWARD`, ...
    var hook: UInt32
    var priority: Int32
    /// `NF_ACCEPT` or `NF_DROP`.
    var policy: UInt32 = UInt32(NF_ACCEPT)

    func makeNftnl() -> NftnlChain {
        precondition(table.utf8.count < Int(NFT_NAME_MAXLEN) && name.utf8.count < Int(NFT_NAME_MAXLEN)
                     && type.utf8.count < 32, "chain names too long")
        let c = NftnlChain()
        nftnl_chain_set_str(c.raw, UInt16(NFTNL_CHAIN_TABLE.rawValue), table)
        nftnl_chain_set_str(c.raw, UInt16(NFTNL_CHAIN_NAME.rawValue), name)
        nftnl_chain_set_u32(c.raw, UInt16(NFTNL_CHAIN_FAMILY.rawValue), UInt32(family))
        nftnl_chain_set_str(c.raw, UInt16(NFTNL_CHAIN_TYPE.rawValue), type)
        nftnl_chain_set_u32(c.raw, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue), hook)
        nftnl_chain_set_s32(c.raw, UInt16(NFTNL_CHAIN_PRIO.rawValue), priority)
        nftnl_chain_set_u32(c.raw, UInt16(NFTNL_CHAIN_POLICY.rawValue), policy)
        return c
    }

    static let messageReserve = 128 + 2 * Int(NFT_NAME_MAXLEN) + 64
}

extension NFTTransaction {
    /// `NFT_MSG_NEWCHAIN` with `NLM_F_CREATE | NLM_F_EXCL` (`nft create chain`).
    func addChain(_ spec: NFTChainSpec) {
        let c = spec.makeNftnl()
        append(type: UInt16(NFT_MSG_NEWCHAIN.rawValue), family: spec.family,
               flags: UInt16(NLM_F_CREATE | NLM_F_EXCL),
               subject: .chain(spec.name), reserve: NFTChainSpec.messageReserve) { nlh in
            nftnl_chain_nlmsg_build_payload(nlh, c.raw)
        }
    }
}

/// A chain as the kernel reports it (`NFT_MSG_GETCHAIN`).
public struct NFTChainInfo: Sendable, Equatable {
    public var family: UInt8
    public var table: String
    public var name: String
    /// nil for a regular (non-base) chain.
    public var type: String?
    public var hook: UInt32?
    public var priority: Int32?
    public var policy: UInt32?
    public var handle: UInt64

    init?(message nlh: UnsafePointer<nlmsghdr>) {
        let c = NftnlChain()
        guard nftnl_chain_nlmsg_parse(nlh, c.raw) >= 0,
              let table = nftnl_chain_get_str(c.raw, UInt16(NFTNL_CHAIN_TABLE.rawValue)),
              let name = nftnl_chain_get_str(c.raw, UInt16(NFTNL_CHAIN_NAME.rawValue)) else { return nil }
        self.table = String(cString: table)
        self.name = String(cString: name)
        family = UInt8(truncatingIfNeeded: nftnl_chain_get_u32(c.raw, UInt16(NFTNL_CHAIN_FAMILY.rawValue)))
        handle = nftnl_chain_get_u64(c.raw, UInt16(NFTNL_CHAIN_HANDLE.rawValue))
        func isSet(_ a: nftnl_chain_attr) -> Bool { nftnl_chain_is_set(c.raw, UInt16(a.rawValue)) }
        type = isSet(NFTNL_CHAIN_TYPE) ? nftnl_chain_get_str(c.raw, UInt16(NFTNL_CHAIN_TYPE.rawValue)).map { String(cString: $0) } : nil
        hook = isSet(NFTNL_CHAIN_HOOKNUM) ? nftnl_chain_get_u32(c.raw, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue)) : nil
        priority = isSet(NFTNL_CHAIN_PRIO) ? nftnl_chain_get_s32(c.raw, UInt16(NFTNL_CHAIN_PRIO.rawValue)) : nil
        policy = isSet(NFTNL_CHAIN_POLICY) ? nftnl_chain_get_u32(c.raw, UInt16(NFTNL_CHAIN_POLICY.rawValue)) : nil
    }

    func matches(_ spec: NFTChainSpec) -> Bool {
        family == spec.family && table == spec.table && name == spec.name && type == spec.type
            && hook == spec.hook && priority == spec.priority && policy == spec.policy
    }
}

extension NFTablesSocket {
    /// Lists the chains of `table` (`nft list chains`). Read-only. The kernel does not filter
    /// chain dumps by table, so this filters after one dump of the family.
    public func listChains(table: String, family: UInt8 = UInt8(NFPROTO_INET)) throws(KernelError) -> [NFTChainInfo] {
        var out: [NFTChainInfo] = []
        try dump(type: UInt16(NFT_MSG_GETCHAIN.rawValue), family: family, what: "chains", onStart: { out.removeAll() }, payload: { _ in
        }, onMessage: { nlh in
            if let c = NFTChainInfo(message: nlh), c.table == table { out.append(c) }
        })
        return out
    }
}

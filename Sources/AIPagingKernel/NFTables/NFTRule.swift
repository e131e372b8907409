#if canImport(Glibc)
import Glibc
#endif
import CNFTables

/// Owner of one `struct nftnl_rule` (and the expressions added to it).
final class NftnlRule {
    let raw: OpaquePointer
    init() {
        guard let r = nftnl_rule_alloc() else { fatalError("nftnl_rule_alloc: out of memory") }
        raw = r
    }
    deinit { nftnl_rule_free(raw) }

    /// The rule's expressions in nftnl's debug form (`[ ct load mark => reg 1 ]` without the
    /// brackets), normalised for comparison: counter values are dropped and a zero lookup flags
    /// word (the kernel always dumps it, nft never sends it) is removed.
    var expressionSignature: [String] {
        guard let iter = nftnl_expr_iter_create(raw) else { fatalError("nftnl_expr_iter_create: out of memory") }
        defer { nftnl_expr_iter_destroy(iter) }
        var out: [String] = []
        var buf = [CChar](repeating: 0, count: 512)
        while let e = nftnl_expr_iter_next(iter) {
            let name = nftnl_expr_get_str(e, UInt16(NFTNL_EXPR_NAME)).map { String(cString: $0) } ?? "?"
            if name == "counter" { out.append("counter"); continue }
            if name == "nat" { out.append(NftnlRule.natSignature(e)); continue }
            _ = nftnl_expr_snprintf(&buf, buf.count, e, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0)
            var text = name + " " + String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).trimmingSpaces
            if name == "lookup", text.hasSuffix(" 0x0") { text.removeLast(4) }
            out.append(text)
        }
        return out
    }
}

extension NftnlRule {
    /// The kernel completes a nat expression when it loads it: `addr_max = addr_min`,
    /// `proto_max = proto_min`, and flags `NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED`
    /// (0x3) derived from the registers. Print only what the rule author chose, so a spec and
    /// its kernel dump compare equal.
    static func natSignature(_ e: OpaquePointer) -> String {
        func attr(_ a: Int) -> UInt32? {
            nftnl_expr_is_set(e, UInt16(a)) ? nftnl_expr_get_u32(e, UInt16(a)) : nil
        }
        let type = attr(Int(NFTNL_EXPR_NAT_TYPE)) == UInt32(NFT_NAT_DNAT.rawValue) ? "dnat" : "snat"
        let family = attr(Int(NFTNL_EXPR_NAT_FAMILY)) == UInt32(NFPROTO_IPV6) ? "ip6" : "ip"
        var text = "nat \(type) \(family)"
        let addrMin = attr(Int(NFTNL_EXPR_NAT_REG_ADDR_MIN)), protoMin = attr(Int(NFTNL_EXPR_NAT_REG_PROTO_MIN))
        if let addrMin { text += " addr_min reg \(addrMin)" }
        if let m = attr(Int(NFTNL_EXPR_NAT_REG_ADDR_MAX)), m != addrMin { text += " addr_max reg \(m)" }
        if let protoMin { text += " proto_min reg \(protoMin)" }
        if let m = attr(Int(NFTNL_EXPR_NAT_REG_PROTO_MAX)), m != protoMin { text += " proto_max reg \(m)" }
        let derived: UInt32 = 0x3
        if let f = attr(Int(NFTNL_EXPR_NAT_FLAGS)), f & ~derived != 0 { text += " flags \(hex32(f & ~derived))" }
        return text
    }
}

private extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

/// nf_tables registers as nft allocates them: 16-byte `NFT_REG_1..4` and 4-byte `NFT_REG32_xx`.
enum NFTRegister {
    static let verdict: UInt32 = 0
    static let r1: UInt32 = 1
    static let r2: UInt32 = 2
    static let r3: UInt32 = 3
    /// `NFT_REG32_00 + n`.
    static func r32(_ n: UInt32) -> UInt32 { 8 + n }
}

/// One nf_tables expression, named after the kernel/libnftnl expression it encodes.
enum NFTExpr: Equatable {
    case ctLoad(key: UInt32, dreg: UInt32)
    case ctSet(key: UInt32, sreg: UInt32)
    case metaLoad(key: UInt32, dreg: UInt32)
    case metaSet(key: UInt32, sreg: UInt32)
    case payload(base: UInt32, offset: UInt32, length: UInt32, dreg: UInt32)
    case bitwise(sreg: UInt32, dreg: UInt32, mask: [UInt8], xor: [UInt8])
    case cmp(sreg: UInt32, op: UInt32, data: [UInt8])
    case lookup(set: String, setID: UInt32, sreg: UInt32, dreg: UInt32?)
    case nat(type: UInt32, family: UInt32, regAddrMin: UInt32, regProtoMin: UInt32)
    case verdict(Int32)
    case counter

    /// Allocates the libnftnl expression; the caller hands it to a rule.
    func makeNftnl() -> NftnlExpr {
        func u32(_ e: NftnlExpr, _ attr: Int, _ v: UInt32) { nftnl_expr_set_u32(e.raw!, UInt16(attr), v) }
        func bytes(_ e: NftnlExpr, _ attr: Int, _ b: [UInt8]) {
            precondition(b.count <= Int(NFT_DATA_VALUE_MAXLEN))
            _ = b.withUnsafeBytes { nftnl_expr_set(e.raw!, UInt16(attr), $0.baseAddress, UInt32(b.count)) }
        }
        switch self {
        case let .ctLoad(key, dreg):
            let e = NftnlExpr("ct")
            u32(e, Int(NFTNL_EXPR_CT_KEY), key); u32(e, Int(NFTNL_EXPR_CT_DREG), dreg)
            return e
        case let .ctSet(key, sreg):
            let e = NftnlExpr("ct")
            u32(e, Int(NFTNL_EXPR_CT_KEY), key); u32(e, Int(NFTNL_EXPR_CT_SREG), sreg)
            return e
        case let .metaLoad(key, dreg):
            let e = NftnlExpr("meta")
            u32(e, Int(NFTNL_EXPR_META_KEY), key); u32(e, Int(NFTNL_EXPR_META_DREG), dreg)
            return e
        case let .metaSet(key, sreg):
            let e = NftnlExpr("meta")
            u32(e, Int(NFTNL_EXPR_META_KEY), key); u32(e, Int(NFTNL_EXPR_META_SREG), sreg)
            return e
        case let .payload(base, offset, length, dreg):
            let e = NftnlExpr("payload")
            u32(e, Int(NFTNL_EXPR_PAYLOAD_DREG), dreg)
            u32(e, Int(NFTNL_EXPR_PAYLOAD_BASE), base)
            u32(e, Int(NFTNL_EXPR_PAYLOAD_OFFSET), offset)
            u32(e, Int(NFTNL_EXPR_PAYLOAD_LEN), length)
            return e
        case let .bitwise(sreg, dreg, mask, xor):
            precondition(mask.count == xor.count)
            let e = NftnlExpr("bitwise")
            u32(e, Int(NFTNL_EXPR_BITWISE_SREG), sreg)
            u32(e, Int(NFTNL_EXPR_BITWISE_DREG), dreg)
            u32(e, Int(NFTNL_EXPR_BITWISE_LEN), UInt32(mask.count))
            bytes(e, Int(NFTNL_EXPR_BITWISE_MASK), mask)
            bytes(e, Int(NFTNL_EXPR_BITWISE_XOR), xor)
            return e
        case let .cmp(sreg, op, data):
            let e = NftnlExpr("cmp")
            u32(e, Int(NFTNL_EXPR_CMP_SREG), sreg)
            u32(e, Int(NFTNL_EXPR_CMP_OP), op)
            bytes(e, Int(NFTNL_EXPR_CMP_DATA), data)
            return e
        case let .lookup(set, setID, sreg, dreg):
            precondition(set.utf8.count < Int(NFT_NAME_MAXLEN))
            let e = NftnlExpr("lookup")
            u32(e, Int(NFTNL_EXPR_LOOKUP_SREG), sreg)
            if let dreg { u32(e, Int(NFTNL_EXPR_LOOKUP_DREG), dreg) }
            _ = nftnl_expr_set_str(e.raw!, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
            u32(e, Int(NFTNL_EXPR_LOOKUP_SET_ID), setID)
            return e
        case let .nat(type, family, regAddrMin, regProtoMin):
            let e = NftnlExpr("nat")
            u32(e, Int(NFTNL_EXPR_NAT_TYPE), type)
            u32(e, Int(NFTNL_EXPR_NAT_FAMILY), family)
            u32(e, Int(NFTNL_EXPR_NAT_REG_ADDR_MIN), regAddrMin)
            u32(e, Int(NFTNL_EXPR_NAT_REG_PROTO_MIN), regProtoMin)
            return e
        case let .verdict(v):
            let e = NftnlExpr("immediate")
            u32(e, Int(NFTNL_EXPR_IMM_DREG), NFTRegister.verdict)
            u32(e, Int(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: v))
            return e
        case .counter:
            return NftnlExpr("counter")
        }
    }

    /// Upper bound of the encoded attributes (names, nests, up to two 64-byte data values).
    var encodedBound: Int {
        switch self {
        case .lookup: return 96 + Int(NFT_NAME_MAXLEN)
        default: return 96 + 2 * (Int(NFT_DATA_VALUE_MAXLEN) + 8)
        }
    }
}

/// A rule appended to a chain: an ordered list of expressions.
struct NFTRuleSpec: Equatable {
    var family: UInt8
    var table: String
    var chain: String
    var expressions: [NFTExpr]
    /// What the rule does, for error messages (`ct mark != 0xa1000000/8 accept`).
    var summary: String

    func makeNftnl() -> NftnlRule {
        precondition(table.utf8.count < Int(NFT_NAME_MAXLEN) && chain.utf8.count < Int(NFT_NAME_MAXLEN))
        let r = NftnlRule()
        nftnl_rule_set_str(r.raw, UInt16(NFTNL_RULE_TABLE.rawValue), table)
        nftnl_rule_set_str(r.raw, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
        nftnl_rule_set_u32(r.raw, UInt16(NFTNL_RULE_FAMILY.rawValue), UInt32(family))
        for e in expressions { nftnl_rule_add_expr(r.raw, e.makeNftnl().release()) }
        return r
    }

    var messageReserve: Int { 128 + 2 * Int(NFT_NAME_MAXLEN) + expressions.reduce(0) { $0 + $1.encodedBound } }

    /// `expressionSignature` of the rule this spec builds.
    var signature: [String] { makeNftnl().expressionSignature }
}

extension NFTTransaction {
    /// `NFT_MSG_NEWRULE` with `NLM_F_CREATE | NLM_F_APPEND` (`nft add rule`).
    func addRule(_ spec: NFTRuleSpec) {
        let r = spec.makeNftnl()
        append(type: UInt16(NFT_MSG_NEWRULE.rawValue), family: spec.family,
               flags: UInt16(NLM_F_CREATE | NLM_F_APPEND),
               subject: .rule(chain: spec.chain, summary: spec.summary), reserve: spec.messageReserve) { nlh in
            nftnl_rule_nlmsg_build_payload(nlh, r.raw)
        }
    }
}

/// A rule as the kernel reports it (`NFT_MSG_GETRULE`).
public struct NFTRuleInfo: Sendable, Equatable {
    public var family: UInt8
    public var table: String
    public var chain: String
    public var handle: UInt64
    /// The rule's expressions in libnftnl's debug notation (`ct load mark => reg 1`), counters
    /// without their values; the same text `nft --debug=netlink` prints.
    public var expressions: [String]

    init?(message nlh: UnsafePointer<nlmsghdr>) {
        let r = NftnlRule()
        guard nftnl_rule_nlmsg_parse(nlh, r.raw) >= 0,
              let table = nftnl_rule_get_str(r.raw, UInt16(NFTNL_RULE_TABLE.rawValue)),
              let chain = nftnl_rule_get_str(r.raw, UInt16(NFTNL_RULE_CHAIN.rawValue)) else { return nil }
        self.table = String(cString: table)
        self.chain = String(cString: chain)
        family = UInt8(truncatingIfNeeded: nftnl_rule_get_u32(r.raw, UInt16(NFTNL_RULE_FAMILY.rawValue)))
        handle = nftnl_rule_get_u64(r.raw, UInt16(NFTNL_RULE_HANDLE.rawValue))
        expressions = r.expressionSignature
    }
}

extension NFTablesSocket {
    /// Lists the rules of `table` in chain order (`nft list table`, rules only). Read-only.
    public func listRules(table: String, family: UInt8 = UInt8(NFPROTO_INET)) throws(KernelError) -> [NFTRuleInfo] {
        var out: [NFTRuleInfo] = []
        let r = NftnlRule()
        nftnl_rule_set_str(r.raw, UInt16(NFTNL_RULE_TABLE.rawValue), table)
        try dump(type: UInt16(NFT_MSG_GETRULE.rawValue), family: family, what: "rules of \(table)", onStart: { out.removeAll() }, payload: { nlh in
            nftnl_rule_nlmsg_build_payload(nlh, r.raw)
        }, onMessage: { nlh in
            if let i = NFTRuleInfo(message: nlh), i.table == table { out.append(i) }
        })
        return out
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CNFTables
import AIPagingCore

/// The nftables schema the agent owns in each enforcement namespace, equivalent to:
///
/// ```
/// table inet aipaging {
///     comment "aipaging schema 2"
///     map lease4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service : mark; flags timeout; }
///     map lease6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service : mark; flags timeout; }
///     map anchor4 { type mark : ipv4_addr . inet_service; flags timeout; }
///     map anchor6 { type mark : ipv6_addr . inet_service; flags timeout; }
///     map qos { type mark . ct_dir : classid; flags timeout; counter; }
///     chain steer {
///         type filter hook prerouting priority mangle; policy accept;
///         ct status ! confirmed ct mark set ip saddr . ip daddr . meta l4proto . th dport map @lease4
///         ct status ! confirmed ct mark set ip6 saddr . ip6 daddr . meta l4proto . th dport map @lease6
///     }
///     chain nat {
///         type nat hook prerouting priority dstnat; policy accept;
///         meta l4proto tcp ct mark 0xa1000000/8 dnat ip to ct mark map @anchor4
///         meta l4proto udp ct mark 0xa1000000/8 dnat ip to ct mark map @anchor4
///         meta l4proto tcp ct mark 0xa1000000/8 dnat ip6 to ct mark map @anchor6
///         meta l4proto udp ct mark 0xa1000000/8 dnat ip6 to ct mark map @anchor6
///     }
///     chain gate {
///         type filter hook forward priority filter - 10; policy accept;
///         ct mark != 0xa1000000/8 accept
///         meta priority set ct mark . ct direction map @qos accept
///         counter drop
///     }
/// }
/// ```
///
/// The table is not owner-flagged: it outlives the agent's socket (fail-static), and every
/// element carries a kernel timeout so leases lapse even if the agent is dead. The DNAT chain is
/// called `nat`, not `dnat`: nft 1.0.6 cannot parse `chain dnat` (a keyword) back, so a table
/// listed with `nft list ruleset` would not reload.
public enum AIPagingNFT {
    /// `inet aipaging`.
    public static let tableName = "aipaging"
    public static let family = UInt8(NFPROTO_INET)
    /// Bumped whenever the maps, chains or rules change; a table with another marker is
    /// reported as `.mismatched` and must be recreated.
    public static let schemaVersion = 2
    /// The table's userdata comment, read back to recognise the schema.
    public static var schemaMarker: String { "aipaging schema \(schemaVersion)" }

    /// Lease marks are `0xa1000000 | slot`; the gate and DNAT rules match `ct mark 0xa1000000/8`.
    public static let markBase: UInt32 = 0xa100_0000
    /// The `/8` of `ct mark 0xa1000000/8`.
    public static let markMask: UInt32 = 0xff00_0000
    /// Largest lease slot (24 bits).
    public static let maxSlot: UInt32 = 0x00ff_ffff

    /// `0xa1000000 | slot`; `slot` must be below 2^24.
    public static func leaseMark(slot: UInt32) -> UInt32 {
        precondition(slot <= maxSlot, "lease slot \(slot) does not fit in 24 bits")
        return markBase | slot
    }

    /// True for `0xa1xxxxxx`, the marks the gate and DNAT rules act on.
    public static func isLeaseMark(_ mark: UInt32) -> Bool { mark & markMask == markBase }

    // MARK: schema objects

    static let lease4 = "lease4", lease6 = "lease6", anchor4 = "anchor4", anchor6 = "anchor6", qos = "qos"
    static let steerChain = "steer", natChain = "nat", gateChain = "gate"

    static var table: NFTTableSpec {
        NFTTableSpec(family: family, name: tableName, flags: 0, comment: schemaMarker)
    }

    static var sets: [NFTSetSpec] {
        let timeout = UInt32(NFT_SET_TIMEOUT.rawValue)
        return [
            NFTSetSpec(family: family, table: tableName, name: lease4,
                       key: NFTTypeSpec(.ipv4Addr, .ipv4Addr, .inetProto, .inetService),
                       data: NFTTypeSpec(.mark), flags: timeout, id: 1),
            NFTSetSpec(family: family, table: tableName, name: lease6,
                       key: NFTTypeSpec(.ipv6Addr, .ipv6Addr, .inetProto, .inetService),
                       data: NFTTypeSpec(.mark), flags: timeout, id: 2),
            NFTSetSpec(family: family, table: tableName, name: anchor4,
                       key: NFTTypeSpec(.mark), data: NFTTypeSpec(.ipv4Addr, .inetService), flags: timeout, id: 3),
            NFTSetSpec(family: family, table: tableName, name: anchor6,
                       key: NFTTypeSpec(.mark), data: NFTTypeSpec(.ipv6Addr, .inetService), flags: timeout, id: 4),
            NFTSetSpec(family: family, table: tableName, name: qos,
                       key: NFTTypeSpec(.mark, .ctDir), data: NFTTypeSpec(.classid), flags: timeout, id: 5,
                       counter: true),
        ]
    }

    static func setID(_ name: String) -> UInt32 { sets.first { $0.name == name }!.id }

    static var chains: [NFTChainSpec] {
        [
            NFTChainSpec(family: family, table: tableName, name: steerChain, type: "filter",
                         hook: UInt32(NF_INET_PRE_ROUTING.rawValue), priority: Int32(NF_IP_PRI_MANGLE.rawValue)),
            NFTChainSpec(family: family, table: tableName, name: natChain, type: "nat",
                         hook: UInt32(NF_INET_PRE_ROUTING.rawValue), priority: Int32(NF_IP_PRI_NAT_DST.rawValue)),
            NFTChainSpec(family: family, table: tableName, name: gateChain, type: "filter",
                         hook: UInt32(NF_INET_FORWARD.rawValue), priority: Int32(NF_IP_PRI_FILTER.rawValue) - 10),
        ]
    }

    /// The fixed rules, expression by expression as nft 1.0.6 generates them
    /// (`nft --debug=netlink`), so `nft list ruleset` prints the text above.
    static var rules: [NFTRuleSpec] {
        typealias R = NFTRegister
        let ctStatus = UInt32(NFT_CT_STATUS.rawValue), ctMark = UInt32(NFT_CT_MARK.rawValue)
        let ctDirection = UInt32(NFT_CT_DIRECTION.rawValue)
        let nfproto = UInt32(NFT_META_NFPROTO.rawValue), l4proto = UInt32(NFT_META_L4PROTO.rawValue)
        let network = UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue), transport = UInt32(NFT_PAYLOAD_TRANSPORT_HEADER.rawValue)
        let eq = UInt32(NFT_CMP_EQ.rawValue), neq = UInt32(NFT_CMP_NEQ.rawValue)
        let zero32 = NFTBytes.host32(0)
        // ct status ! confirmed: (status & IPS_CONFIRMED) == 0, i.e. the first packet of a
        // connection, the one NAT binds on. Not `ct state new`: every packet of a UDP flow that
        // never saw a reply is "new", and re-marking those would move a flow's lease (and QoS
        // class) while its NAT binding stays with the old anchor. Host-order bitmask.
        let ctUnconfirmed: [NFTExpr] = [
            .ctLoad(key: ctStatus, dreg: R.r1),
            .bitwise(sreg: R.r1, dreg: R.r1, mask: NFTBytes.host32(1 << 3 /* IPS_CONFIRMED */), xor: zero32),
            .cmp(sreg: R.r1, op: eq, data: zero32),
        ]
        // ct mark 0xa1000000/8 (or != for the gate).
        func ctMarkIsLease(_ op: UInt32) -> [NFTExpr] {
            [.ctLoad(key: ctMark, dreg: R.r1),
             .bitwise(sreg: R.r1, dreg: R.r1, mask: NFTBytes.host32(markMask), xor: zero32),
             .cmp(sreg: R.r1, op: op, data: NFTBytes.host32(markBase))]
        }
        let steer4: [NFTExpr] = ctUnconfirmed + [
            .metaLoad(key: nfproto, dreg: R.r1),
            .cmp(sreg: R.r1, op: eq, data: [UInt8(NFPROTO_IPV4)]),
            .payload(base: network, offset: 12, length: 4, dreg: R.r1),
            .payload(base: network, offset: 16, length: 4, dreg: R.r32(1)),
            .metaLoad(key: l4proto, dreg: R.r32(2)),
            .payload(base: transport, offset: 2, length: 2, dreg: R.r32(3)),
            .lookup(set: lease4, setID: setID(lease4), sreg: R.r1, dreg: R.r1),
            .ctSet(key: ctMark, sreg: R.r1),
        ]
        let steer6: [NFTExpr] = ctUnconfirmed + [
            .metaLoad(key: nfproto, dreg: R.r1),
            .cmp(sreg: R.r1, op: eq, data: [UInt8(NFPROTO_IPV6)]),
            .payload(base: network, offset: 8, length: 16, dreg: R.r1),
            .payload(base: network, offset: 24, length: 16, dreg: R.r2),
            .metaLoad(key: l4proto, dreg: R.r3),
            .payload(base: transport, offset: 2, length: 2, dreg: R.r32(9)),
            .lookup(set: lease6, setID: setID(lease6), sreg: R.r1, dreg: R.r1),
            .ctSet(key: ctMark, sreg: R.r1),
        ]
        func dnat(_ proto: NFTL4Protocol, v6: Bool) -> NFTRuleSpec {
            let set = v6 ? anchor6 : anchor4
            let exprs: [NFTExpr] = [
                .metaLoad(key: l4proto, dreg: R.r1),
                .cmp(sreg: R.r1, op: eq, data: [proto.rawValue]),
            ] + ctMarkIsLease(eq) + [
                .ctLoad(key: ctMark, dreg: R.r1),
                .lookup(set: set, setID: setID(set), sreg: R.r1, dreg: R.r1),
                // The map's data is address . port: the address fills reg 1 (4 or 16 bytes),
                // the port the next free register (REG32_01 after an IPv4 address, REG_2
                // after an IPv6 one).
                .nat(type: UInt32(NFT_NAT_DNAT.rawValue), family: UInt32(v6 ? NFPROTO_IPV6 : NFPROTO_IPV4),
                     regAddrMin: R.r1, regProtoMin: v6 ? R.r2 : R.r32(1)),
            ]
            return NFTRuleSpec(family: family, table: tableName, chain: natChain, expressions: exprs,
                               summary: "meta l4proto \(proto) ct mark 0xa1000000/8 dnat \(v6 ? "ip6" : "ip") to ct mark map @\(set)")
        }
        let gatePass: [NFTExpr] = ctMarkIsLease(neq) + [.verdict(NF_ACCEPT)]
        let gateQoS: [NFTExpr] = [
            .ctLoad(key: ctMark, dreg: R.r1),
            .ctLoad(key: ctDirection, dreg: R.r32(1)),
            .lookup(set: qos, setID: setID(qos), sreg: R.r1, dreg: R.r1),
            .metaSet(key: UInt32(NFT_META_PRIORITY.rawValue), sreg: R.r1),
            .verdict(NF_ACCEPT),
        ]
        let gateDrop: [NFTExpr] = [.counter, .verdict(NF_DROP)]
        return [
            NFTRuleSpec(family: family, table: tableName, chain: steerChain, expressions: steer4,
                        summary: "ct status ! confirmed ct mark set ip saddr . ip daddr . meta l4proto . th dport map @lease4"),
            NFTRuleSpec(family: family, table: tableName, chain: steerChain, expressions: steer6,
                        summary: "ct status ! confirmed ct mark set ip6 saddr . ip6 daddr . meta l4proto . th dport map @lease6"),
            dnat(.tcp, v6: false), dnat(.udp, v6: false), dnat(.tcp, v6: true), dnat(.udp, v6: true),
            NFTRuleSpec(family: family, table: tableName, chain: gateChain, expressions: gatePass,
                        summary: "ct mark != 0xa1000000/8 accept"),
            NFTRuleSpec(family: family, table: tableName, chain: gateChain, expressions: gateQoS,
                        summary: "meta priority set ct mark . ct direction map @qos accept"),
            NFTRuleSpec(family: family, table: tableName, chain: gateChain, expressions: gateDrop,
                        summary: "counter drop"),
        ]
    }
}

// MARK: - typed elements

/// Key of a steering element: `client . service . l4proto . dport` in `lease4` / `lease6`.
public struct NFTSteeringKey: Hashable, Sendable, CustomStringConvertible {
    public var client: IPAddress
    public var service: IPAddress
    public var proto: NFTL4Protocol
    public var port: UInt16

    /// nil if `client` and `service` are of different families.
    public init?(client: IPAddress, service: IPAddress, proto: NFTL4Protocol, port: UInt16) {
        guard client.family == service.family else { return nil }
        self.client = client
        self.service = service
        self.proto = proto
        self.port = port
    }

    /// Family of both addresses (`lease4` or `lease6`).
    public var family: IPAddress.Family { client.family }

    /// `198.18.1.2 . 198.18.100.10 . udp . 7000`, as nft prints it.
    public var description: String { "\(client) . \(service) . \(proto) . \(port)" }

    var setName: String { family == .ipv4 ? AIPagingNFT.lease4 : AIPagingNFT.lease6 }

    /// Concatenation layout: each field padded to 4 bytes; addresses and port big endian.
    var bytes: [UInt8] {
        client.bytes + service.bytes + NFTBytes.padded([proto.rawValue]) + NFTBytes.padded(NFTBytes.port(port))
    }

    init?(bytes b: [UInt8]) {
        let a: Int
        switch b.count {
        case 16: a = 4
        case 40: a = 16
        default: return nil
        }
        guard let c = IPAddress(bytes: b[0..<a]), let s = IPAddress(bytes: b[a..<(2 * a)]),
              let p = NFTL4Protocol(rawValue: b[2 * a]) else { return nil }
        self.init(client: c, service: s, proto: p, port: NFTBytes.readPort(b[(2 * a + 4)..<(2 * a + 6)]))
    }
}

/// An element of `lease4` / `lease6`: steering key → lease mark.
public struct NFTSteeringElement: Sendable, Equatable {
    public var key: NFTSteeringKey
    public var mark: UInt32
    /// The element's timeout and remaining life in milliseconds, as the kernel reports them.
    public var timeoutMs: UInt64?
    public var expiresMs: UInt64?
}

/// An element of `anchor4` / `anchor6`: lease mark → DNAT target `address . port`.
public struct NFTAnchorElement: Sendable, Equatable {
    public var mark: UInt32
    public var address: IPAddress
    public var port: UInt16
    public var timeoutMs: UInt64?
    public var expiresMs: UInt64?
}

/// An element of `qos`: `mark . direction` → tc class id, with its counter.
public struct NFTQoSElement: Sendable, Equatable {
    public var mark: UInt32
    public var direction: NFTConntrackDirection
    /// `TC_H_MAKE(major, minor)`; 0 is `none` (the reply direction).
    public var classid: UInt32
    public var timeoutMs: UInt64?
    public var expiresMs: UInt64?
    public var packets: UInt64
    public var bytes: UInt64
}

/// Packets and bytes of a lease mark's two `qos` elements (`mark . original`, `mark . reply`).
public struct NFTQoSCounters: Sendable, Equatable {
    public var originalPackets: UInt64 = 0
    public var originalBytes: UInt64 = 0
    public var replyPackets: UInt64 = 0
    public var replyBytes: UInt64 = 0
    /// The directions the dump had an element for (bit 0 original, bit 1 reply).
    public var directions: UInt8 = 0
    public init() {}
}

/// Result of `NFTablesSocket.verifyAIPagingSchema()`.
public enum NFTSchemaStatus: Sendable, Equatable {
    /// No `inet aipaging` table.
    case absent
    /// Table, marker, maps, chains and rules are exactly what this build creates.
    case intact
    /// The table exists but differs; the reasons say how. Recreate it
    /// (`NFTTransaction.recreateAIPagingTable()` + elements, in one commit).
    case mismatched([String])
}

// MARK: - transaction operations

extension NFTTransaction {
    /// Creates the whole schema: table (with its marker), 5 maps, 3 chains, 9 rules.
    /// Equivalent to `nft -f` of the text in `AIPagingNFT`, but `create table`: fails with
    /// EEXIST if `inet aipaging` exists.
    public func createAIPagingTable() {
        addTable(AIPagingNFT.table, exclusive: true)
        for s in AIPagingNFT.sets { addSet(s) }
        for c in AIPagingNFT.chains { addChain(c) }
        for r in AIPagingNFT.rules { addRule(r) }
    }

    /// Deletes `inet aipaging` with everything in it. Equivalent to
    /// `nft delete table inet aipaging` (ENOENT if absent).
    public func deleteAIPagingTable() {
        deleteTable(family: AIPagingNFT.family, name: AIPagingNFT.tableName)
    }

    /// Deletes `inet aipaging` if it exists: `nft add table inet aipaging` (touching nothing of
    /// an existing table) followed by `nft delete table inet aipaging`, which works on every
    /// kernel (NFT_MSG_DESTROYTABLE needs 6.3).
    public func deleteAIPagingTableIfExists() {
        addTable(AIPagingNFT.table, exclusive: false, minimal: true)
        deleteTable(family: AIPagingNFT.family, name: AIPagingNFT.tableName)
    }

    /// Replaces whatever `inet aipaging` holds by a fresh schema. Add the elements to the same
    /// transaction and commit it with `allowSplit: false`, so the kernel switches from the old
    /// table to the new, fully populated one atomically.
    public func recreateAIPagingTable() {
        deleteAIPagingTableIfExists()
        createAIPagingTable()
    }

    private static func checkTimeout(_ ms: UInt64) {
        // A zero timeout would mean "the set's default", i.e. never: every element must lapse.
        precondition(ms > 0, "element timeout must be > 0 ms")
    }

    private static func checkMark(_ mark: UInt32) {
        precondition(AIPagingNFT.isLeaseMark(mark), "mark \(hex32(mark)) is not a lease mark (0xa1000000 | slot)")
    }

    private func steeringSpec(_ key: NFTSteeringKey, mark: UInt32?, timeoutMs: UInt64?) -> NFTElementSpec {
        NFTElementSpec(family: AIPagingNFT.family, table: AIPagingNFT.tableName, set: key.setName,
                       key: key.bytes, data: mark.map(NFTBytes.host32), timeoutMs: timeoutMs)
    }

    /// Adds a steering element: new connections `key` get ct mark `mark`. Equivalent to
    /// `nft create element inet aipaging lease4 { 198.18.1.2 . 198.18.100.10 . udp . 7000 timeout 30s : 0xa1000001 }`
    /// (lease6 for IPv6). Fails the transaction with EEXIST if the key exists.
    public func addSteering(_ key: NFTSteeringKey, mark: UInt32, timeoutMs: UInt64) {
        Self.checkMark(mark); Self.checkTimeout(timeoutMs)
        addElement(steeringSpec(key, mark: mark, timeoutMs: timeoutMs), subject: .steering(key))
    }

    /// Removes a steering element. Equivalent to
    /// `nft delete element inet aipaging lease4 { 198.18.1.2 . 198.18.100.10 . udp . 7000 }`
    /// (ENOENT if absent).
    public func deleteSteering(_ key: NFTSteeringKey) {
        deleteElement(steeringSpec(key, mark: nil, timeoutMs: nil), subject: .steering(key))
    }

    /// Restarts a steering element's timeout: delete + add in this transaction (works on every
    /// kernel, unlike timeout updates of an existing element). With `createIfMissing`, a
    /// non-exclusive add first makes the delete succeed even if the element already expired.
    public func renewSteering(_ key: NFTSteeringKey, mark: UInt32, timeoutMs: UInt64, createIfMissing: Bool = false) {
        if createIfMissing {
            Self.checkMark(mark); Self.checkTimeout(timeoutMs)
            ensureElement(steeringSpec(key, mark: mark, timeoutMs: timeoutMs), subject: .steering(key))
        }
        deleteSteering(key)
        addSteering(key, mark: mark, timeoutMs: timeoutMs)
    }

    /// Removes a steering element whether or not the kernel has already expired it: a
    /// non-exclusive add of the same element, then its delete, in this transaction. Equivalent to
    /// `nft add element ... ; nft delete element ...` in one `nft -f` file.
    public func removeSteering(_ key: NFTSteeringKey, mark: UInt32) {
        Self.checkMark(mark)
        ensureElement(steeringSpec(key, mark: mark, timeoutMs: 1), subject: .steering(key))
        deleteSteering(key)
    }

    private func anchorSpec(mark: UInt32, family: IPAddress.Family, address: IPAddress?, port: UInt16, timeoutMs: UInt64?) -> NFTElementSpec {
        NFTElementSpec(family: AIPagingNFT.family, table: AIPagingNFT.tableName,
                       set: family == .ipv4 ? AIPagingNFT.anchor4 : AIPagingNFT.anchor6,
                       key: NFTBytes.host32(mark),
                       data: address.map { $0.bytes + NFTBytes.padded(NFTBytes.port(port)) },
                       timeoutMs: timeoutMs)
    }

    /// Adds an anchor element: connections marked `mark` are DNATed to `address`:`port`.
    /// Equivalent to `nft create element inet aipaging anchor4 { 0xa1000001 timeout 30s : 198.18.2.2 . 7000 }`.
    public func addAnchor(mark: UInt32, address: IPAddress, port: UInt16, timeoutMs: UInt64) {
        Self.checkMark(mark); Self.checkTimeout(timeoutMs)
        addElement(anchorSpec(mark: mark, family: address.family, address: address, port: port, timeoutMs: timeoutMs),
                   subject: .anchor(mark: mark))
    }

    /// Removes the anchor of `mark` from anchor4 or anchor6. Equivalent to
    /// `nft delete element inet aipaging anchor4 { 0xa1000001 }`.
    public func deleteAnchor(mark: UInt32, family: IPAddress.Family) {
        deleteElement(anchorSpec(mark: mark, family: family, address: nil, port: 0, timeoutMs: nil), subject: .anchor(mark: mark))
    }

    /// Removes an anchor element whether or not it already expired (see `removeSteering`).
    public func removeAnchor(mark: UInt32, address: IPAddress, port: UInt16) {
        Self.checkMark(mark)
        ensureElement(anchorSpec(mark: mark, family: address.family, address: address, port: port, timeoutMs: 1),
                      subject: .anchor(mark: mark))
        deleteAnchor(mark: mark, family: address.family)
    }

    /// delete + add of an anchor element (see `renewSteering`).
    public func renewAnchor(mark: UInt32, address: IPAddress, port: UInt16, timeoutMs: UInt64, createIfMissing: Bool = false) {
        if createIfMissing {
            Self.checkMark(mark); Self.checkTimeout(timeoutMs)
            ensureElement(anchorSpec(mark: mark, family: address.family, address: address, port: port, timeoutMs: timeoutMs),
                          subject: .anchor(mark: mark))
        }
        deleteAnchor(mark: mark, family: address.family)
        addAnchor(mark: mark, address: address, port: port, timeoutMs: timeoutMs)
    }

    private func qosSpec(mark: UInt32, direction: NFTConntrackDirection, classid: UInt32?, timeoutMs: UInt64?) -> NFTElementSpec {
        NFTElementSpec(family: AIPagingNFT.family, table: AIPagingNFT.tableName, set: AIPagingNFT.qos,
                       key: NFTBytes.host32(mark) + NFTBytes.padded([direction.rawValue]),
                       data: classid.map(NFTBytes.host32), timeoutMs: timeoutMs)
    }

    /// Adds the two qos elements of a lease: `mark . original → classid` and
    /// `mark . reply → none`. Equivalent to
    /// `nft create element inet aipaging qos { 0xa1000001 . original timeout 30s : 100:5, 0xa1000001 . reply timeout 30s : none }`.
    /// While they exist the gate passes the lease's packets (both directions) and sets
    /// skb->priority; when they lapse, the gate drops them.
    public func addQoS(mark: UInt32, classid: UInt32, timeoutMs: UInt64) {
        Self.checkMark(mark); Self.checkTimeout(timeoutMs)
        addElement(qosSpec(mark: mark, direction: .original, classid: classid, timeoutMs: timeoutMs),
                   subject: .qos(mark: mark, direction: .original))
        addElement(qosSpec(mark: mark, direction: .reply, classid: 0, timeoutMs: timeoutMs),
                   subject: .qos(mark: mark, direction: .reply))
    }

    /// Removes both qos elements of `mark`. Equivalent to
    /// `nft delete element inet aipaging qos { 0xa1000001 . original, 0xa1000001 . reply }`.
    public func deleteQoS(mark: UInt32) {
        for d in [NFTConntrackDirection.original, .reply] {
            deleteElement(qosSpec(mark: mark, direction: d, classid: nil, timeoutMs: nil), subject: .qos(mark: mark, direction: d))
        }
    }

    /// Removes both qos elements of `mark` whether or not they already expired (see `removeSteering`).
    public func removeQoS(mark: UInt32, classid: UInt32) {
        Self.checkMark(mark)
        ensureElement(qosSpec(mark: mark, direction: .original, classid: classid, timeoutMs: 1),
                      subject: .qos(mark: mark, direction: .original))
        ensureElement(qosSpec(mark: mark, direction: .reply, classid: 0, timeoutMs: 1),
                      subject: .qos(mark: mark, direction: .reply))
        deleteQoS(mark: mark)
    }

    /// delete + add of both qos elements (see `renewSteering`). Resets their counters.
    public func renewQoS(mark: UInt32, classid: UInt32, timeoutMs: UInt64, createIfMissing: Bool = false) {
        if createIfMissing {
            Self.checkMark(mark); Self.checkTimeout(timeoutMs)
            ensureElement(qosSpec(mark: mark, direction: .original, classid: classid, timeoutMs: timeoutMs),
                          subject: .qos(mark: mark, direction: .original))
            ensureElement(qosSpec(mark: mark, direction: .reply, classid: 0, timeoutMs: timeoutMs),
                          subject: .qos(mark: mark, direction: .reply))
        }
        deleteQoS(mark: mark)
        addQoS(mark: mark, classid: classid, timeoutMs: timeoutMs)
    }
}

// MARK: - read-back

extension NFTablesSocket {
    @inline(__always)
    private func modifyCounters(_ v: inout NFTQoSCounters, _ body: (inout NFTQoSCounters) -> Void) { body(&v) }

    /// Folds one parsed `qos` element's counter into `out` under its mark, in place. Returns the
    /// key's length when the key is not the schema's (nothing folded), and whether the mark had
    /// this direction already (a dump that repeated a key).
    private func foldQoSCounter(_ e: OpaquePointer, into out: inout CompactDictionary<UInt32, NFTQoSCounters>) -> (badKeyLength: Int?, repeated: Bool) {
        var len: UInt32 = 0
        guard let p = nftnl_set_elem_get(e, UInt16(NFTNL_SET_ELEM_KEY), &len), len == 8,
              let dir = NFTConntrackDirection(rawValue: UnsafeRawPointer(p).load(fromByteOffset: 4, as: UInt8.self))
        else { return (Int(len), false) }
        let mark = UnsafeRawPointer(p).loadUnaligned(as: UInt32.self)
        let c = elementCounter(e) ?? (0, 0)
        let bit: UInt8 = dir == .original ? 1 : 2
        var repeated = false
        // In place (the default subscript yields the stored value).
        modifyCounters(&out[mark, default: NFTQoSCounters()]) { v in
            repeated = v.directions & bit != 0
            v.directions |= bit
            if dir == .original {
                v.originalPackets = c.packets
                v.originalBytes = c.bytes
            } else {
                v.replyPackets = c.packets
                v.replyBytes = c.bytes
            }
        }
        return (nil, repeated)
    }

    private func malformed(_ set: String, _ count: Int) -> KernelError {
        KernelError("NFT_MSG_GETSETELEM", errno: EBADMSG,
                    detail: "an element of \(set) (\(count) key bytes) does not match schema \(AIPagingNFT.schemaVersion); check verifyAIPagingSchema()")
    }

    /// The `inet aipaging` table, or nil. Read-only (one table dump).
    public func aipagingTable() throws(KernelError) -> NFTTableInfo? {
        try table(named: AIPagingNFT.tableName, family: AIPagingNFT.family)
    }

    /// Every element of lease4 (`.ipv4`) or lease6 (`.ipv6`), in one dump.
    /// Equivalent to `nft list map inet aipaging lease4`.
    public func listSteering(family: IPAddress.Family) throws(KernelError) -> [NFTSteeringElement] {
        let set = family == .ipv4 ? AIPagingNFT.lease4 : AIPagingNFT.lease6
        var out: [NFTSteeringElement] = []
        for e in try listRawElements(table: AIPagingNFT.tableName, set: set, family: AIPagingNFT.family) {
            guard let key = NFTSteeringKey(bytes: e.key), key.family == family,
                  let d = e.data, d.count == 4 else { throw malformed(set, e.key.count) }
            out.append(NFTSteeringElement(key: key, mark: NFTBytes.readHost32(d[...]), timeoutMs: e.timeoutMs, expiresMs: e.expiresMs))
        }
        return out
    }

    /// Every element of anchor4 or anchor6, in one dump. Equivalent to `nft list map inet aipaging anchor4`.
    public func listAnchors(family: IPAddress.Family) throws(KernelError) -> [NFTAnchorElement] {
        let set = family == .ipv4 ? AIPagingNFT.anchor4 : AIPagingNFT.anchor6
        let a = family == .ipv4 ? 4 : 16
        var out: [NFTAnchorElement] = []
        for e in try listRawElements(table: AIPagingNFT.tableName, set: set, family: AIPagingNFT.family) {
            guard e.key.count == 4, let d = e.data, d.count == a + 4, let addr = IPAddress(bytes: d[0..<a]) else {
                throw malformed(set, e.key.count)
            }
            out.append(NFTAnchorElement(mark: NFTBytes.readHost32(e.key[...]), address: addr,
                                        port: NFTBytes.readPort(d[a..<(a + 2)]), timeoutMs: e.timeoutMs, expiresMs: e.expiresMs))
        }
        return out
    }

    /// Every element of qos with its counter, in one dump. Equivalent to `nft list map inet aipaging qos`.
    public func listQoS() throws(KernelError) -> [NFTQoSElement] {
        var out: [NFTQoSElement] = []
        for e in try listRawElements(table: AIPagingNFT.tableName, set: AIPagingNFT.qos, family: AIPagingNFT.family) {
            guard e.key.count == 8, let dir = NFTConntrackDirection(rawValue: e.key[4]),
                  let d = e.data, d.count == 4 else { throw malformed(AIPagingNFT.qos, e.key.count) }
            out.append(NFTQoSElement(mark: NFTBytes.readHost32(e.key[0..<4]), direction: dir,
                                     classid: NFTBytes.readHost32(d[...]), timeoutMs: e.timeoutMs, expiresMs: e.expiresMs,
                                     packets: e.counter?.packets ?? 0, bytes: e.counter?.bytes ?? 0))
        }
        return out
    }

    /// Every `qos` element's counter, by lease mark, into `out` (emptied first; its storage is
    /// reused from one read to the next). The dump is streamed: reading the 200 000 elements of
    /// 100 000 leases allocates nothing per element (`listQoS()` builds a record per element,
    /// ~30 MB at that size, every counter interval). A dump that repeats a key (hash resize
    /// between rounds, see `listRawElements`) is retried.
    public func readQoSCounters(into out: inout CompactDictionary<UInt32, NFTQoSCounters>) throws(KernelError) {
        for attempt in 0..<10 {
            if attempt > 0 { usleep(10_000) }
            var repeated = false
            var badKeyLength: Int? = nil
            try forEachElement(table: AIPagingNFT.tableName, set: AIPagingNFT.qos, family: AIPagingNFT.family, onStart: {
                out.removeAll(keepingCapacity: true)
                repeated = false
                badKeyLength = nil
            }) { e in
                let r = foldQoSCounter(e, into: &out)
                if let bad = r.badKeyLength { badKeyLength = bad }
                if r.repeated { repeated = true }
            }
            if let badKeyLength { throw malformed(AIPagingNFT.qos, badKeyLength) }
            if !repeated { return }
            reorderedDumpRetries += 1
        }
        throw KernelError(NFTablesSocket.getName(UInt16(NFT_MSG_GETSETELEM.rawValue)), errno: EAGAIN,
                          detail: "elements of \(AIPagingNFT.tableName) \(AIPagingNFT.qos) kept being reordered (hash resize) during the dump; retry later")
    }

    /// The counters of the leases with these marks, by mark, into `out` (emptied first), read
    /// by key (`getElements`: two single-element GETs per lease, batched) instead of a dump of
    /// the whole map: linear in `marks`, where the dump is quadratic in the map (~4 s for the
    /// 200 000 elements of 100 000 leases on this VM). Also the way to read a few leases (those
    /// whose deadline is near) without reading them all. A lease whose elements are gone is left
    /// out; returns how many elements were missing.
    @discardableResult
    public func readQoSCounters(marks: some Collection<UInt32>, into out: inout CompactDictionary<UInt32, NFTQoSCounters>) throws(KernelError) -> Int {
        out.removeAll(keepingCapacity: true)
        var keys: [UInt8] = []
        keys.reserveCapacity(marks.count * 16)
        for m in marks {
            for dir in [NFTConntrackDirection.original, .reply] {
                withUnsafeBytes(of: m) { keys.append(contentsOf: $0) }
                keys.append(contentsOf: [dir.rawValue, 0, 0, 0])
            }
        }
        var badKeyLength: Int? = nil
        let missing = try getElements(table: AIPagingNFT.tableName, set: AIPagingNFT.qos, family: AIPagingNFT.family, keys: keys, keyLength: 8) { e in
            if let bad = foldQoSCounter(e, into: &out).badKeyLength { badKeyLength = bad }
        }
        if let badKeyLength { throw malformed(AIPagingNFT.qos, badKeyLength) }
        return missing
    }

    /// Compares `inet aipaging` with the schema this build creates: table flags and marker,
    /// the 5 maps (types, lengths, flags, userdata, counter), the 3 base chains and every rule
    /// expression by expression. Read-only: four dumps (tables, sets, chains, rules).
    public func verifyAIPagingSchema() throws(KernelError) -> NFTSchemaStatus {
        guard let table = try aipagingTable() else { return .absent }
        var reasons: [String] = []
        if table.comment != AIPagingNFT.schemaMarker {
            reasons.append("table marker is \(table.comment.map { "\"\($0)\"" } ?? "missing"), expected \"\(AIPagingNFT.schemaMarker)\"")
        }
        if table.flags != 0 { reasons.append("table flags \(hex32(table.flags)), expected 0 (not dormant, not owned)") }

        let sets = try listSets(table: AIPagingNFT.tableName, family: AIPagingNFT.family)
        for spec in AIPagingNFT.sets {
            guard let s = sets.first(where: { $0.name == spec.name }) else { reasons.append("set \(spec.name) missing"); continue }
            reasons += s.differences(from: spec)
        }
        for s in sets where !AIPagingNFT.sets.contains(where: { $0.name == s.name }) {
            reasons.append("unexpected set \(s.name)")
        }

        let chains = try listChains(table: AIPagingNFT.tableName, family: AIPagingNFT.family)
        for spec in AIPagingNFT.chains {
            guard let c = chains.first(where: { $0.name == spec.name }) else { reasons.append("chain \(spec.name) missing"); continue }
            if !c.matches(spec) {
                reasons.append("chain \(spec.name): type \(c.type ?? "-") hook \(c.hook.map(String.init) ?? "-") priority \(c.priority.map(String.init) ?? "-") policy \(c.policy.map(String.init) ?? "-"), expected \(spec.type) hook \(spec.hook) priority \(spec.priority) policy \(spec.policy)")
            }
        }
        for c in chains where !AIPagingNFT.chains.contains(where: { $0.name == c.name }) {
            reasons.append("unexpected chain \(c.name)")
        }

        let rules = try listRules(table: AIPagingNFT.tableName, family: AIPagingNFT.family)
        for chain in AIPagingNFT.chains.map(\.name) {
            let expected = AIPagingNFT.rules.filter { $0.chain == chain }
            let actual = rules.filter { $0.chain == chain }
            if actual.count != expected.count {
                reasons.append("chain \(chain): \(actual.count) rules, expected \(expected.count)")
                continue
            }
            for (i, (a, e)) in zip(actual, expected).enumerated() where a.expressions != e.signature {
                reasons.append("chain \(chain) rule \(i + 1) (handle \(a.handle)) differs from `\(e.summary)`: [\(a.expressions.joined(separator: "] ["))]")
            }
        }
        return reasons.isEmpty ? .intact : .mismatched(reasons)
    }
}

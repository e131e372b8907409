#if canImport(Glibc)
import Glibc
#endif
import CNFTables
import AIPagingCore
import Synchronization

/// A ctnetlink socket (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_CTNETLINK) bound for its whole
/// life to one network namespace; the conntrack table it reads and changes is that namespace's.
///
/// The socket is a libmnl `mnl_socket` owned by this object and closed in its deinit; requests
/// are serialized by an internal lock.
public final class ConntrackSocket: Sendable {
    /// The namespace whose conntrack table this socket sees.
    public let namespace: NetworkNamespace
    let core: Mutex<MNLSocket>

    /// Opens the socket inside `namespace` (`withNetworkNamespace`).
    public init(namespace: NetworkNamespace = .current) throws(KernelError) {
        self.namespace = namespace
        let fd = try openNetlinkSocket(netlinkProtocol: NETLINK_NETFILTER, in: namespace, name: "NETLINK_NETFILTER")
        core = Mutex(try MNLSocket(adopting: fd))
    }

    // MARK: - Delete by mark

    /// Deletes every entry, IPv4 and IPv6, whose `ct mark & mask == mark & mask`: one
    /// IPCTNL_MSG_CT_DELETE without a tuple (a filtered flush; nfgenmsg family AF_UNSPEC,
    /// version 0, so the kernel filters on the mark only). This is how flows of an expired lease
    /// are cut. The kernel walks the whole conntrack hash table once and does not report a count.
    ///
    /// Equivalent to `conntrack -D --mark MARK/MASK` run for `-f ipv4` and `-f ipv6`.
    /// - Throws: `KernelError` EINVAL when `mark & mask` is 0: that would delete every unmarked
    ///   (unsteered) flow of the namespace.
    public func deleteEntries(markedWith mark: UInt32, mask: UInt32 = 0xffff_ffff) throws(KernelError) {
        guard mark & mask != 0 else {
            throw KernelError("IPCTNL_MSG_CT_DELETE", errno: EINVAL,
                detail: "refusing a flush for mark 0x\(String(mark, radix: 16))/0x\(String(mask, radix: 16)): it matches every unmarked flow; lease marks are never 0")
        }
        let m = CTMessage(IPCTNL_MSG_CT_DELETE, flags: UInt16(NLM_F_ACK), family: UInt8(AF_UNSPEC))
        m.putBE32(CTA_MARK, mark & mask)
        m.putBE32(CTA_MARK_MASK, mask)
        let ns = namespace
        try core.withLock { (s: inout MNLSocket) throws(KernelError) in
            try s.request(m, operation: "IPCTNL_MSG_CT_DELETE", doing: "flushing conntrack entries with mark 0x\(String(mark, radix: 16)) in \(ns)",
                          hint: Self.hint) { _ throws(KernelError) in }
        }
    }

    // MARK: - Delete unsteered flows of a classifier

    /// Whether this kernel took a kernel-side filtered flush on this socket (nil: not tried yet).
    public var filteredFlushSupported: Bool? { core.withLock { $0.filteredFlushSupported } }

    /// Deletes the entries of `classifier` (orig src = client, orig dst = service, protocol, orig
    /// dst port) whose mark is 0: flows that started before their lease existed and were never
    /// steered. Entries of the classifier with any other mark, and every other entry, are kept.
    ///
    /// IPv4, `.automatic`: one kernel-side filtered flush (IPCTNL_MSG_CT_DELETE with CTA_FILTER +
    /// CTA_TUPLE_ORIG + CTA_MARK 0; upstream since 2024, present in this 6.18); whether the kernel takes it is remembered
    /// per socket, and older kernels get the dump path.
    /// IPv6, always: a dump filtered in the kernel on protocol + port + mark 0 only, the addresses
    /// compared here, then one delete (orig tuple + CTA_ID) per entry, all deletes in one batch.
    /// The kernel's CTA_FILTER address match for IPv6 is inverted (`!ipv6_addr_cmp()` in
    /// ctnetlink_filter_match_tuple, still in 6.18): with address flags a dump returns the
    /// entries whose addresses *differ*, and a filtered flush would delete other clients' flows.
    ///
    /// Equivalent to `conntrack -D -s CLIENT -d SERVICE -p PROTO --dport PORT --mark 0`.
    @discardableResult
    public func deleteUnsteeredEntries(
        of classifier: ConntrackClassifier, method: ConntrackDeleteMethod? = nil
    ) throws(KernelError) -> ConntrackDeleteResult {
        guard classifier.client.family == classifier.service.family else {
            throw KernelError("IPCTNL_MSG_CT_DELETE", errno: EINVAL, detail: "classifier \(classifier) mixes IPv4 and IPv6")
        }
        let ns = namespace
        let v4 = classifier.client.family == .ipv4
        if method == .kernelFilteredFlush && !v4 {
            throw KernelError("IPCTNL_MSG_CT_DELETE", errno: EOPNOTSUPP,
                detail: "a kernel-filtered flush is unsafe for IPv6: the kernel's IPv6 address filter is inverted; use .dumpAndDelete")
        }
        let useFlush = method.map { $0 == .kernelFilteredFlush } ?? (v4 && core.withLock { $0.filteredFlushSupported } != false)
        if useFlush {
            let m = CTMessage(IPCTNL_MSG_CT_DELETE, flags: UInt16(NLM_F_ACK), family: Self.family(classifier.client))
            Self.putClassifierFilter(m, classifier, markZero: true)
            do {
                try core.withLock { (s: inout MNLSocket) throws(KernelError) in
                    try s.request(m, operation: "IPCTNL_MSG_CT_DELETE", doing: "flushing unmarked entries of \(classifier) in \(ns)",
                                  hint: Self.hint) { _ throws(KernelError) in }
                    s.filteredFlushSupported = true
                }
                return ConntrackDeleteResult(method: .kernelFilteredFlush, deleted: nil)
            } catch where method == nil && (error.errno == EOPNOTSUPP || error.errno == EINVAL) {
                // Older kernels reject CTA_FILTER in a delete (EOPNOTSUPP) or take the
                // tuple as an exact one and miss its source port (EINVAL): nothing was deleted.
                core.withLock { $0.filteredFlushSupported = false }
            }
        }
        let candidates = try entries(of: classifier, unmarkedOnly: true)
        let victims = candidates.filter { classifier.matches($0) && $0.mark == 0 }
        if victims.isEmpty { return ConntrackDeleteResult(method: .dumpAndDelete, deleted: 0) }
        let messages = victims.map { e -> CTMessage in
            let m = CTMessage(IPCTNL_MSG_CT_DELETE, flags: UInt16(NLM_F_ACK), family: Self.family(e.original.source))
            Self.putTuple(m, CTA_TUPLE_ORIG, e.original)
            m.putBE32(CTA_ID, e.id)
            return m
        }
        let acks = try core.withLock { (s: inout MNLSocket) throws(KernelError) in
            try s.transact(messages, operation: "IPCTNL_MSG_CT_DELETE")
        }
        var deleted = 0
        for (i, ack) in acks.enumerated() {
            switch ack.errno {
            case 0: deleted += 1
            case ENOENT: continue  // expired or deleted meanwhile, or the id now names a newer entry
            default:
                throw KernelError("IPCTNL_MSG_CT_DELETE", errno: ack.errno, doing: "deleting \(victims[i]) in \(ns)",
                                  kernelMessage: ack.message, hint: Self.hint(ack.errno))
            }
        }
        return ConntrackDeleteResult(method: .dumpAndDelete, deleted: deleted)
    }

    /// `deleteUnsteeredEntries(of:)` for many classifiers at once: ONE dump of the unmarked
    /// entries (kernel-filtered on mark 0), matched here against `classifiers`, then one delete
    /// (orig tuple + CTA_ID) per match, all in one batch. A dump walks the whole conntrack hash
    /// table (~10 ms), so coalescing many classifiers into one walk is what keeps it affordable.
    /// Returns how many entries were deleted.
    ///
    /// Equivalent to `conntrack -L --mark 0` and `conntrack -D ...` for each match.
    @discardableResult
    public func deleteUnsteeredEntries(ofAny classifiers: Set<ConntrackClassifier>) throws(KernelError) -> Int {
        guard !classifiers.isEmpty else { return 0 }
        let ns = namespace
        let victims = try entries(mark: 0).filter { e in
            e.mark == 0 && e.original.destinationPort.map { port in
                classifiers.contains(ConntrackClassifier(client: e.original.source, service: e.original.destination,
                                                         protocolNumber: e.original.protocolNumber, servicePort: port))
            } == true
        }
        if victims.isEmpty { return 0 }
        let messages = victims.map { e -> CTMessage in
            let m = CTMessage(IPCTNL_MSG_CT_DELETE, flags: UInt16(NLM_F_ACK), family: Self.family(e.original.source))
            Self.putTuple(m, CTA_TUPLE_ORIG, e.original)
            m.putBE32(CTA_ID, e.id)
            return m
        }
        let acks = try core.withLock { (s: inout MNLSocket) throws(KernelError) in
            try s.transact(messages, operation: "IPCTNL_MSG_CT_DELETE")
        }
        var deleted = 0
        for (i, ack) in acks.enumerated() {
            switch ack.errno {
            case 0: deleted += 1
            case ENOENT: continue
            default:
                throw KernelError("IPCTNL_MSG_CT_DELETE", errno: ack.errno, doing: "deleting \(victims[i]) in \(ns)",
                                  kernelMessage: ack.message, hint: Self.hint(ack.errno))
            }
        }
        return deleted
    }

    // MARK: - Listing

    /// Every entry (of `family`, or both), optionally only those with `mark & mask == mark`,
    /// from one IPCTNL_MSG_CT_GET dump (the mark filter is applied by the kernel).
    ///
    /// Equivalent to `conntrack -L [-f ipv6] [--mark MARK/MASK]`.
    public func entries(family: IPAddress.Family? = nil, mark: UInt32? = nil, mask: UInt32 = 0xffff_ffff) throws(KernelError) -> [ConntrackEntry] {
        let nfFamily: UInt8 = family.map { $0 == .ipv4 ? UInt8(AF_INET) : UInt8(AF_INET6) } ?? UInt8(AF_UNSPEC)
        let m = CTMessage(IPCTNL_MSG_CT_GET, flags: UInt16(NLM_F_DUMP), family: nfFamily)
        if let mark {
            m.putBE32(CTA_MARK, mark & mask)
            m.putBE32(CTA_MARK_MASK, mask)
        }
        return try dump(m, doing: "listing conntrack entries")
    }

    /// The entries of `classifier` (and with `unmarkedOnly`, only those with mark 0), from one
    /// dump filtered in the kernel with CTA_FILTER (IPv4: addresses, protocol, port, mark; IPv6:
    /// protocol, port and mark only, see `deleteUnsteeredEntries`), re-checked here. Kernels
    /// without CTA_FILTER (< 5.8) get a plain dump of the family, filtered here.
    ///
    /// Equivalent to `conntrack -L -s CLIENT -d SERVICE -p PROTO --dport PORT [--mark 0]`.
    public func entries(of classifier: ConntrackClassifier, unmarkedOnly: Bool = false) throws(KernelError) -> [ConntrackEntry] {
        do {
            return try classifierDump(classifier, unmarkedOnly: unmarkedOnly,
                                      matchAddresses: classifier.client.family == .ipv4).filter {
                classifier.matches($0) && (!unmarkedOnly || $0.mark == 0)
            }
        } catch where error.errno == EOPNOTSUPP || error.errno == EINVAL {
            let all = try entries(family: classifier.client.family, mark: unmarkedOnly ? 0 : nil)
            return all.filter { classifier.matches($0) }
        }
    }

    /// The raw CTA_FILTER dump for `classifier`, without the check done here.
    func classifierDump(_ classifier: ConntrackClassifier, unmarkedOnly: Bool, matchAddresses: Bool) throws(KernelError) -> [ConntrackEntry] {
        let m = CTMessage(IPCTNL_MSG_CT_GET, flags: UInt16(NLM_F_DUMP), family: Self.family(classifier.client))
        Self.putClassifierFilter(m, classifier, markZero: unmarkedOnly, matchAddresses: matchAddresses)
        return try dump(m, doing: "listing conntrack entries of \(classifier)")
    }

    // MARK: - Internals

    private func dump(_ m: CTMessage, doing: String) throws(KernelError) -> [ConntrackEntry] {
        let ns = namespace
        var out: [ConntrackEntry] = []
        try core.withLock { (s: inout MNLSocket) throws(KernelError) in
            try s.request(m, operation: "IPCTNL_MSG_CT_GET", doing: "\(doing) in \(ns)", hint: Self.hint) { (msg) throws(KernelError) in
                guard msg.type == UInt16(NFNL_SUBSYS_CTNETLINK) << 8 | UInt16(IPCTNL_MSG_CT_NEW.rawValue) else { return }
                if let e = Self.parseEntry(msg.payload) { out.append(e) }
            }
        }
        return out
    }

    static func hint(_ errno: Int32) -> String? {
        switch errno {
        case EPERM: return "ctnetlink changes need CAP_NET_ADMIN in the namespace"
        case EOPNOTSUPP: return "this kernel's ctnetlink lacks the feature (CTA_FILTER needs ≥ 5.8 for dumps and a 2024+ kernel for deletes)"
        case ENOENT: return "no such conntrack entry"
        default: return nil
        }
    }

    static func family(_ a: IPAddress) -> UInt8 { a.family == .ipv4 ? UInt8(AF_INET) : UInt8(AF_INET6) }

    // Tuple filter flags (kernel-internal, net/netfilter/nf_internals.h; ABI since 5.8).
    static let filterIPSource: UInt32 = 1 << 0
    static let filterIPDestination: UInt32 = 1 << 1
    static let filterProtoNumber: UInt32 = 1 << 3
    static let filterProtoDestinationPort: UInt32 = 1 << 5

    /// CTA_TUPLE_ORIG (src, dst, proto, dport) + CTA_FILTER naming those fields (the addresses
    /// only with `matchAddresses`) + the mark-0 filter.
    static func putClassifierFilter(_ m: CTMessage, _ c: ConntrackClassifier, markZero: Bool, matchAddresses: Bool = true) {
        putTuple(m, CTA_TUPLE_ORIG, ConntrackTuple(source: c.client, destination: c.service, protocolNumber: c.protocolNumber,
                                                   sourcePort: nil, destinationPort: c.servicePort))
        m.nest(CTA_FILTER) {
            m.putU32(UInt16(CTA_FILTER_ORIG_FLAGS.rawValue),
                     (matchAddresses ? filterIPSource | filterIPDestination : 0) | filterProtoNumber | filterProtoDestinationPort)
            m.putU32(UInt16(CTA_FILTER_REPLY_FLAGS.rawValue), 0)
        }
        if markZero {
            m.putBE32(CTA_MARK, 0)
            m.putBE32(CTA_MARK_MASK, 0xffff_ffff)
        }
    }

    static func putTuple(_ m: CTMessage, _ type: ctattr_type, _ t: ConntrackTuple) {
        m.nest(type) {
            m.nest(UInt16(CTA_TUPLE_IP.rawValue)) {
                let v4 = t.source.family == .ipv4
                m.put(UInt16(v4 ? CTA_IP_V4_SRC.rawValue : CTA_IP_V6_SRC.rawValue), bytes: t.source.bytes)
                m.put(UInt16(v4 ? CTA_IP_V4_DST.rawValue : CTA_IP_V6_DST.rawValue), bytes: t.destination.bytes)
            }
            m.nest(UInt16(CTA_TUPLE_PROTO.rawValue)) {
                m.putU8(UInt16(CTA_PROTO_NUM.rawValue), t.protocolNumber)
                if let p = t.sourcePort { m.putBE16(UInt16(CTA_PROTO_SRC_PORT.rawValue), p) }
                if let p = t.destinationPort { m.putBE16(UInt16(CTA_PROTO_DST_PORT.rawValue), p) }
            }
        }
    }

    static func parseEntry(_ payload: UnsafeRawBufferPointer) -> ConntrackEntry? {
        guard payload.count >= 4 else { return nil }
        var original: ConntrackTuple?, reply: ConntrackTuple?
        var e = (id: UInt32(0), mark: UInt32(0), status: UInt32(0), timeout: UInt32?.none, zone: UInt16?.none)
        NetlinkWire.forEachAttribute(in: UnsafeRawBufferPointer(rebasing: payload[4...])) { type, v in
            switch UInt32(type) {
            case CTA_TUPLE_ORIG.rawValue: original = parseTuple(v)
            case CTA_TUPLE_REPLY.rawValue: reply = parseTuple(v)
            case CTA_ID.rawValue: e.id = NetlinkWire.be32(v) ?? 0
            case CTA_MARK.rawValue: e.mark = NetlinkWire.be32(v) ?? 0
            case CTA_STATUS.rawValue: e.status = NetlinkWire.be32(v) ?? 0
            case CTA_TIMEOUT.rawValue: e.timeout = NetlinkWire.be32(v)
            case CTA_ZONE.rawValue: e.zone = NetlinkWire.be16(v)
            default: break
            }
        }
        guard let original, let reply else { return nil }
        return ConntrackEntry(id: e.id, original: original, reply: reply, mark: e.mark, status: e.status,
                              timeoutSeconds: e.timeout, zone: e.zone)
    }

    static func parseTuple(_ b: UnsafeRawBufferPointer) -> ConntrackTuple? {
        var src: IPAddress?, dst: IPAddress?, proto: UInt8 = 0, sport: UInt16?, dport: UInt16?
        NetlinkWire.forEachAttribute(in: b) { type, v in
            switch UInt32(type) {
            case CTA_TUPLE_IP.rawValue:
                NetlinkWire.forEachAttribute(in: v) { t, a in
                    switch UInt32(t) {
                    case CTA_IP_V4_SRC.rawValue, CTA_IP_V6_SRC.rawValue: src = NetlinkWire.address(a)
                    case CTA_IP_V4_DST.rawValue, CTA_IP_V6_DST.rawValue: dst = NetlinkWire.address(a)
                    default: break
                    }
                }
            case CTA_TUPLE_PROTO.rawValue:
                NetlinkWire.forEachAttribute(in: v) { t, a in
                    switch UInt32(t) {
                    case CTA_PROTO_NUM.rawValue: proto = NetlinkWire.u8(a) ?? 0
                    case CTA_PROTO_SRC_PORT.rawValue: sport = NetlinkWire.be16(a)
                    case CTA_PROTO_DST_PORT.rawValue: dport = NetlinkWire.be16(a)
                    default: break
                    }
                }
            default: break
            }
        }
        guard let src, let dst else { return nil }
        return ConntrackTuple(source: src, destination: dst, protocolNumber: proto, sourcePort: sport, destinationPort: dport)
    }
}

/// One ctnetlink request built with libmnl in an owned, zeroed buffer (freed in deinit).
final class CTMessage {
    static let capacity = 1024
    private let buffer: UnsafeMutableRawPointer
    let header: UnsafeMutablePointer<nlmsghdr>

    /// nlmsghdr (NFNL_SUBSYS_CTNETLINK << 8 | type, NLM_F_REQUEST | flags) + nfgenmsg
    /// (family, version NFNETLINK_V0, res_id 0).
    init(_ type: cntl_msg_types, flags: UInt16, family: UInt8) {
        buffer = .allocate(byteCount: Self.capacity, alignment: 8)
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: Self.capacity)
        header = mnl_nlmsg_put_header(buffer)
        header.pointee.nlmsg_type = UInt16(NFNL_SUBSYS_CTNETLINK) << 8 | UInt16(type.rawValue)
        header.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST) | flags
        let nfg = mnl_nlmsg_put_extra_header(header, MemoryLayout<nfgenmsg>.size)!.assumingMemoryBound(to: nfgenmsg.self)
        nfg.pointee.nfgen_family = family
        nfg.pointee.version = UInt8(NFNETLINK_V0)
        nfg.pointee.res_id = 0
    }
    deinit { buffer.deallocate() }

    func putBE32(_ type: ctattr_type, _ v: UInt32) { mnl_attr_put_u32(header, UInt16(type.rawValue), v.bigEndian) }
    func putBE16(_ type: UInt16, _ v: UInt16) { mnl_attr_put_u16(header, type, v.bigEndian) }
    func putU32(_ type: UInt16, _ v: UInt32) { mnl_attr_put_u32(header, type, v) }
    func putU8(_ type: UInt16, _ v: UInt8) { mnl_attr_put_u8(header, type, v) }
    func put(_ type: UInt16, bytes: [UInt8]) {
        bytes.withUnsafeBytes { mnl_attr_put(header, type, $0.count, $0.baseAddress) }
    }
    func nest(_ type: ctattr_type, _ body: () -> Void) { nest(UInt16(type.rawValue), body) }
    func nest(_ type: UInt16, _ body: () -> Void) {
        let start = mnl_attr_nest_start(header, type)
        body()
        mnl_attr_nest_end(header, start)
        precondition(Int(header.pointee.nlmsg_len) <= Self.capacity, "ctnetlink message overflow")
    }
}

/// Owner of one libmnl `mnl_socket` (closed in deinit) and its receive buffer; lives inside
/// `ConntrackSocket`'s mutex.
final class MNLSocket {
    private let raw: OpaquePointer
    let fd: Int32
    private let buffer: UnsafeMutableRawBufferPointer
    private var sequence: UInt32
    /// nil until the first classifier delete found out whether the kernel takes CTA_FILTER in
    /// IPCTNL_MSG_CT_DELETE.
    var filteredFlushSupported: Bool?
    static let maxBatchMessages = 256

    init(adopting fd: Int32) throws(KernelError) {
        guard let raw = mnl_socket_fdopen(fd) else {
            let err = errno
            close(fd)
            throw KernelError("mnl_socket_fdopen", errno: err)
        }
        self.raw = raw
        self.fd = fd
        buffer = .allocate(byteCount: 1 << 16, alignment: 8)
        sequence = UInt32(truncatingIfNeeded: time(nil))
    }

    deinit {
        mnl_socket_close(raw)  // closes fd
        buffer.deallocate()
    }

    private func stamp(_ m: CTMessage) -> UInt32 {
        sequence &+= 1
        m.header.pointee.nlmsg_seq = sequence
        m.header.pointee.nlmsg_pid = 0
        return sequence
    }

    private func bytes(of m: CTMessage) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: m.header, count: Int(m.header.pointee.nlmsg_len))
    }

    /// One request; replies go to `onReply` until the ACK (NLM_F_ACK) or NLMSG_DONE (dump).
    func request(
        _ m: CTMessage, operation: String, doing: String, hint: (Int32) -> String?,
        onReply: (NetlinkWire.Message) throws(KernelError) -> Void
    ) throws(KernelError) {
        let seq = stamp(m)
        let isDump = m.header.pointee.nlmsg_flags & UInt16(NLM_F_DUMP) == UInt16(NLM_F_DUMP)
        try NetlinkIO.send(fd: fd, Array(bytes(of: m)), operation: operation)
        var done = false
        while !done {
            try NetlinkIO.receive(fd: fd, into: buffer, operation: operation) { (msg) throws(KernelError) in
                guard msg.sequence == seq, !done else { return }
                switch Int32(msg.type) {
                case NLMSG_ERROR:
                    let (err, text) = NetlinkWire.decodeError(msg)
                    if err != 0 { throw KernelError(operation, errno: err, doing: doing, kernelMessage: text, hint: hint(err)) }
                    done = true
                case NLMSG_DONE:
                    if msg.payload.count >= 4 {
                        let status = msg.payload.loadUnaligned(as: Int32.self)
                        if status < 0 { throw KernelError(operation, errno: -status, doing: doing, kernelMessage: nil, hint: hint(-status)) }
                    }
                    done = true
                case NLMSG_NOOP, NLMSG_OVERRUN:
                    return
                default:
                    try onReply(msg)
                    if !isDump && m.header.pointee.nlmsg_flags & UInt16(NLM_F_ACK) == 0 { done = true }
                }
            }
        }
    }

    /// Sends `messages` (each with NLM_F_ACK) back to back, up to 256 per sendmsg(), and returns
    /// one ACK per message.
    func transact(_ messages: [CTMessage], operation: String) throws(KernelError) -> [(errno: Int32, message: String?)] {
        var results = [(errno: Int32, message: String?)?](repeating: nil, count: messages.count)
        var start = 0
        while start < messages.count {
            let end = min(messages.count, start + Self.maxBatchMessages)
            var out: [UInt8] = []
            var seqToIndex: [UInt32: Int] = [:]
            for i in start..<end {
                seqToIndex[stamp(messages[i])] = i
                let b = bytes(of: messages[i])
                out.append(contentsOf: b)
                out.append(contentsOf: repeatElement(0, count: NetlinkWire.align(b.count) - b.count))
            }
            try NetlinkIO.send(fd: fd, out, operation: operation)
            try NetlinkIO.collectAcks(fd: fd, buffer: buffer, operation: operation, seqToIndex: seqToIndex, into: &results)
            start = end
        }
        return results.map { $0! }
    }
}

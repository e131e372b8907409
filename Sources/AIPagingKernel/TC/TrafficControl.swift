#if canImport(Glibc)
import Glibc
#endif
import CNetlinkRoute
import CAIPagingShim
import Synchronization

/// tc state of the aipaging HTB layout on the interfaces of one network namespace, through
/// rtnetlink (libnl-route-3 objects; cls_bpf messages built with libnl's nlmsg API).
///
/// Layout per interface (handles in hex):
/// ```
/// qdisc htb a1: root default 2                          + filter bpf (skb->priority G:N → a1:G)
/// ├─ class a1:1  rate = ceil = capacity
/// │  ├─ class a1:2   best effort, small rate, ceil = capacity, prio 7
/// │  └─ class a1:G   group (G in 0x100…0xfff0), rate = Σ leaves, ceil = capacity, prio p
/// │        └─ qdisc htb G: direct_qlen 0  (finds G:N by skb->priority; unknown N is dropped)
/// │              └─ class G:1  rate = ceil = capacity
/// │                    └─ class G:N  lease leaf: rate, ceil, prio p
/// ```
/// Every class gets an explicit quantum (rate/10 clamped to 1600…200000 bytes) so the kernel
/// never computes one from r2q and never warns "quantum of class … is big/small", and a burst of
/// max(1600 B, 1 ms at the class rate) (tc's default is ≈ one MTU whatever the rate, which makes
/// HTB under-shoot multi-Gbit rates because every hrtimer wake-up can release only one packet).
public final class TrafficControl: Sendable {
    /// The rtnetlink socket (and so the namespace) every request goes through.
    public let socket: RouteSocket

    /// rate-to-quantum ratio written into every aipaging HTB qdisc (tc's default; only used by
    /// the kernel for classes created without a quantum, which this code never does).
    public static let rateToQuantum: UInt32 = 10
    static let minimumQuantum: UInt64 = 1600
    static let maximumQuantum: UInt64 = 200_000
    static let minimumBurst: UInt64 = 1600
    /// Largest accepted rate: 10^12 kbit/s (1 Pbit/s), far above any device, keeps bytes/s in range.
    public static let maximumRateKbit: UInt64 = 1_000_000_000_000

    public init(socket: RouteSocket) {
        self.socket = socket
    }

    /// The eBPF priority-to-group program, loaded once and kept (an unattached program affects
    /// no traffic): an interface's root comes and goes with its first and last lease, and each
    /// load runs the verifier (~10 % of the lease thread's time for an install and revoke when
    /// that lease is the only one).
    private let loadedProgram = Mutex<PriorityFilterProgram?>(nil)

    func priorityProgram() throws(KernelError) -> PriorityFilterProgram {
        try loadedProgram.withLock { (p) throws(KernelError) -> PriorityFilterProgram in
            if let p { return p }
            let loaded = try PriorityFilterProgram()
            p = loaded
            return loaded
        }
    }

    /// Opens a `RouteSocket` in `namespace`.
    public convenience init(namespace: NetworkNamespace = .current) throws(KernelError) {
        self.init(socket: try RouteSocket(namespace: namespace))
    }

    // MARK: - Skeleton

    /// Makes sure interface `ifindex` carries the aipaging root: qdisc `a1:`, classes `a1:1` and
    /// `a1:2` and the eBPF priority filter. Creates all four in one round trip when the interface
    /// has only a default root (noqueue, pfifo_fast, mq, …); when the root is already ours,
    /// updates `a1:1`/`a1:2` to `capacityKbit` and re-adds the filter if it is missing.
    ///
    /// Equivalent to
    /// ```
    /// tc qdisc add dev IF root handle a1: htb default 2 r2q 10
    /// tc class add dev IF parent a1: classid a1:1 htb rate CAPkbit ceil CAPkbit
    /// tc class add dev IF parent a1:1 classid a1:2 htb rate BEkbit ceil CAPkbit prio 7
    /// tc filter add dev IF parent a1: pref 1 handle 1 protocol all bpf fd PROG name aip_prio2grp
    /// ```
    /// - Parameter bestEffortKbit: rate of `a1:2`; default capacity/100 (at least 8 kbit).
    /// - Throws: `KernelError` EEXIST when the interface has another non-default root qdisc.
    @discardableResult
    public func ensureSkeleton(
        ifindex: Int32, capacityKbit: UInt64, bestEffortKbit: UInt64? = nil
    ) throws(KernelError) -> TCSkeletonResult {
        let be = bestEffortKbit ?? max(8, capacityKbit / 100)
        try Self.validate(rate: capacityKbit, ceil: capacityKbit, prio: 0, what: "capacity")
        try Self.validate(rate: be, ceil: capacityKbit, prio: AIPagingHTB.bestEffortPrio, what: "best-effort class a1:2")
        let root = try qdiscs(ifindex: ifindex).first { $0.parent == .root }
        let classes = [
            try Self.htbClassMessage(ifindex: ifindex, handle: AIPagingHTB.aggregateClass, parent: AIPagingHTB.rootQdisc,
                                     rateKbit: capacityKbit, ceilKbit: capacityKbit, prio: 0, flags: NLM_F_CREATE),
            try Self.htbClassMessage(ifindex: ifindex, handle: AIPagingHTB.bestEffortClass, parent: AIPagingHTB.aggregateClass,
                                     rateKbit: be, ceilKbit: capacityKbit, prio: AIPagingHTB.bestEffortPrio, flags: NLM_F_CREATE),
        ]
        if let root, root.handle.rawValue != 0 {
            guard root.isAIPagingRoot else {
                throw KernelError("ensureSkeleton", errno: EEXIST,
                    detail: "interface \(ifindex) in \(socket.namespace) has a non-aipaging root qdisc \(root.kind) \(root.handle); remove it (`tc qdisc del dev IF root`) or choose another interface")
            }
            try perform(classes, ifindex: ifindex, doing: "updating classes a1:1/a1:2 of the aipaging root")
            let hasFilter = try filters(ifindex: ifindex, parent: AIPagingHTB.rootQdisc).contains { $0.isAIPagingFilter }
            if !hasFilter {
                let program = try priorityProgram()
                try perform([try Self.filterMessage(ifindex: ifindex, programFD: program.fd)], ifindex: ifindex,
                            doing: "re-adding the aipaging eBPF filter on a1:")
            }
            return .updated
        }
        let program = try priorityProgram()
        let qdisc = try Self.htbQdiscMessage(ifindex: ifindex, handle: AIPagingHTB.rootQdisc, parent: .root,
                                             defaultClass: AIPagingHTB.bestEffortClass.minor)
        let filter = try Self.filterMessage(ifindex: ifindex, programFD: program.fd)
        let acks = try socket.withSocket { (s) throws(KernelError) in
            try s.transact([qdisc] + classes + [filter], operation: "RTM_NEWQDISC/RTM_NEWTCLASS/RTM_NEWTFILTER")
        }
        if let index = acks.firstIndex(where: { $0.errno != 0 }) {
            if index > 0 { _ = try? removeSkeleton(ifindex: ifindex) }  // roll back a half-built root
            let names = ["RTM_NEWQDISC a1:", "RTM_NEWTCLASS a1:1", "RTM_NEWTCLASS a1:2", "RTM_NEWTFILTER bpf"]
            let ack = acks[index]
            throw KernelError(names[index], errno: ack.errno, doing: "creating the aipaging root on interface \(ifindex)",
                              kernelMessage: ack.message, hint: Self.hint(ack.errno, ifindex: ifindex, adding: true))
        }
        return .created
    }

    /// Removes the aipaging root of `ifindex` (and with it every group, leaf and the filter);
    /// the interface falls back to its default qdisc. Returns false when there was none.
    /// The kernel itself re-checks kind `htb` and handle `a1:` in the same request, so a root
    /// that is not ours is never deleted.
    ///
    /// Groups still present are deleted first, one request each (newest group number first):
    /// destroying a class costs the kernel a walk of a system-wide list of tc blocks
    /// (`flow_indir_dev_list`, on devices without `ndo_setup_tc` such as veth), so one root delete
    /// of 60 000 leaves holds the RTNL lock for ~15 s, while per-group requests release it
    /// between groups.
    ///
    /// Equivalent to `tc class del dev IF classid a1:G` for each group, then
    /// `tc qdisc del dev IF root handle a1: htb`.
    /// - Throws: `KernelError` EEXIST when the root qdisc belongs to someone else.
    @discardableResult
    public func removeSkeleton(ifindex: Int32) throws(KernelError) -> Bool {
        guard let root = try qdiscs(ifindex: ifindex).first(where: { $0.parent == .root }), root.handle.rawValue != 0 else {
            return false
        }
        guard root.isAIPagingRoot else {
            throw KernelError("removeSkeleton", errno: EEXIST,
                detail: "interface \(ifindex) in \(socket.namespace) has a non-aipaging root qdisc \(root.kind) \(root.handle); it is left untouched")
        }
        let groups = try classes(ifindex: ifindex, qdisc: AIPagingHTB.rootQdisc)
            .map(\.handle)
            .filter { $0.major == AIPagingHTB.rootMajor && AIPagingHTB.groupRange.contains($0.minor) }
            .sorted(by: >)
        if !groups.isEmpty {
            // Failures (a group deleted meanwhile) do not matter: the root delete below takes the rest.
            _ = try perform(ifindex: ifindex, groups.map { .deleteGroup(group: $0.minor) })
        }
        let q = try LibnlQdisc()
        rtnl_tc_set_ifindex(q.tc, ifindex)
        rtnl_tc_set_parent(q.tc, TCHandle.root.rawValue)
        rtnl_tc_set_handle(q.tc, AIPagingHTB.rootQdisc.rawValue)
        _ = rtnl_tc_set_kind(q.tc, "htb")
        var raw: OpaquePointer?
        let rc = rtnl_qdisc_build_delete_request(q.raw, &raw)
        guard rc >= 0, let raw else { throw KernelError("rtnl_qdisc_build_delete_request", errno: ENOMEM) }
        let message = NLMessage(adopting: raw)
        do {
            try perform([message], ifindex: ifindex, doing: "deleting the aipaging root a1:")
        } catch where error.errno == ENOENT || error.errno == EINVAL {
            // Gone in between (ENOENT) or replaced by a foreign root (EINVAL "Invalid handle").
            if try qdiscs(ifindex: ifindex).contains(where: { $0.isAIPagingRoot }) { throw error }
            return false
        }
        return true
    }

    // MARK: - Groups and leaves

    /// Adds group G: class `a1:G`, its qdisc `G:` and class `G:1`, in one round trip.
    ///
    /// Equivalent to
    /// ```
    /// tc class add dev IF parent a1:1 classid a1:G htb rate RATEkbit ceil CAPkbit prio P
    /// tc qdisc add dev IF parent a1:G handle G: htb r2q 10 direct_qlen 0
    /// tc class add dev IF parent G: classid G:1 htb rate CAPkbit ceil CAPkbit
    /// ```
    public func addGroup(ifindex: Int32, group: UInt16, prio: UInt8, rateKbit: UInt64, capacityKbit: UInt64) throws(KernelError) {
        try performAll(ifindex: ifindex, [.addGroup(group: group, prio: prio, rateKbit: rateKbit, capacityKbit: capacityKbit)])
    }

    /// Changes class `a1:G` in place (rate = sum of its leaves, ceil = capacity, prio).
    ///
    /// Equivalent to `tc class change dev IF parent a1:1 classid a1:G htb rate RATEkbit ceil CAPkbit prio P`.
    public func changeGroup(ifindex: Int32, group: UInt16, prio: UInt8, rateKbit: UInt64, capacityKbit: UInt64) throws(KernelError) {
        try performAll(ifindex: ifindex, [.changeGroup(group: group, prio: prio, rateKbit: rateKbit, capacityKbit: capacityKbit)])
    }

    /// Deletes group G: class `a1:G`, which takes qdisc `G:` and every leaf `G:N` with it.
    ///
    /// Equivalent to `tc class del dev IF classid a1:G`.
    public func deleteGroup(ifindex: Int32, group: UInt16) throws(KernelError) {
        try performAll(ifindex: ifindex, [.deleteGroup(group: group)])
    }

    /// Adds leaf class `G:N` (one lease) under `G:1`.
    ///
    /// Equivalent to `tc class add dev IF parent G:1 classid G:N htb rate Rkbit ceil Ckbit prio P`.
    public func addLeaf(ifindex: Int32, _ leaf: TCHandle, _ parameters: HTBClassParameters) throws(KernelError) {
        try performAll(ifindex: ifindex, [.addLeaf(leaf, parameters)])
    }

    /// Changes leaf `G:N` in place: a plain RTM_NEWTCLASS without NLM_F_CREATE, so the class,
    /// its pfifo and the packets queued in it stay.
    ///
    /// Equivalent to `tc class change dev IF parent G:1 classid G:N htb rate Rkbit ceil Ckbit prio P`.
    public func changeLeaf(ifindex: Int32, _ leaf: TCHandle, _ parameters: HTBClassParameters) throws(KernelError) {
        try performAll(ifindex: ifindex, [.changeLeaf(leaf, parameters)])
    }

    /// Deletes leaf `G:N`.
    ///
    /// Equivalent to `tc class del dev IF classid G:N`.
    public func deleteLeaf(ifindex: Int32, _ leaf: TCHandle) throws(KernelError) {
        try performAll(ifindex: ifindex, [.deleteLeaf(leaf)])
    }

    /// Sends all `operations` for `ifindex` back to back (one sendmsg per up to 256 requests)
    /// and collects every ACK: one error slot per operation (nil = applied) and the kernel's
    /// extended-ACK warnings on successful requests.
    ///
    /// rtnetlink has no transactions: each request is applied on its own, in order, and a failed
    /// one does not stop the next (so a failed `addGroup` makes its `addLeaf` fail with ENOENT).
    /// Throws only when nothing could be sent (invalid parameters, socket errors).
    public func perform(ifindex: Int32, _ operations: [TCOperation]) throws(KernelError) -> TCBatchResult {
        var messages: [NLMessage] = []
        var owner: [Int] = []
        for (i, op) in operations.enumerated() {
            for m in try Self.messages(for: op, ifindex: ifindex) {
                messages.append(m)
                owner.append(i)
            }
        }
        let acks = try socket.withSocket { (s) throws(KernelError) in
            try s.transact(messages, operation: "tc")
        }
        var result = TCBatchResult(errors: [KernelError?](repeating: nil, count: operations.count), warnings: [])
        for (k, ack) in acks.enumerated() {
            let op = operations[owner[k]]
            if ack.errno == 0 {
                if let text = ack.message, !text.isEmpty { result.warnings.append("\(op): \(text)") }
            } else if result.errors[owner[k]] == nil {
                result.errors[owner[k]] = KernelError(Self.requestName(op), errno: ack.errno, doing: "\(op) on interface \(ifindex)",
                                                      kernelMessage: ack.message, hint: Self.hint(ack.errno, for: op, ifindex: ifindex))
            }
        }
        return result
    }

    /// `perform(ifindex:_:)`, throwing the first failure (the other operations were still
    /// applied); returns the kernel's warnings.
    @discardableResult
    public func performAll(ifindex: Int32, _ operations: [TCOperation]) throws(KernelError) -> [String] {
        let result = try perform(ifindex: ifindex, operations)
        if let error = result.errors.lazy.compactMap({ $0 }).first { throw error }
        return result.warnings
    }

    // MARK: - Listing

    /// Every qdisc of `ifindex` with its statistics, from one RTM_GETQDISC dump.
    /// - Throws: `KernelError` ENODEV when there is no interface `ifindex`.
    ///
    /// Equivalent to `tc -s qdisc show dev IF`.
    public func qdiscs(ifindex: Int32) throws(KernelError) -> [TCQdiscInfo] {
        let request = try NLMessage(type: Int32(RTM_GETQDISC), flags: NLM_F_DUMP)
        try request.appendHeader(Self.tcHeader(ifindex: ifindex))
        var out: [TCQdiscInfo] = []
        try socket.withSocket { (s) throws(KernelError) in
            try s.request(request, operation: "RTM_GETQDISC", doing: "listing qdiscs of interface \(ifindex)",
                          hint: { Self.hint($0, ifindex: ifindex, adding: false) }) { (m) throws(KernelError) in
                guard m.type == UInt16(RTM_NEWQDISC), m.payload.count >= MemoryLayout<tcmsg>.size else { return }
                let index = m.payload.loadUnaligned(fromByteOffset: 4, as: Int32.self)
                guard index == ifindex else { return }
                try withLibnlObject(parsing: m) { q in
                    let kind = rtnl_tc_get_kind(q).map { String(cString: $0) } ?? ""
                    var info = TCQdiscInfo(ifindex: index, handle: TCHandle(rawValue: rtnl_tc_get_handle(q)),
                                           parent: TCHandle(rawValue: rtnl_tc_get_parent(q)), kind: kind,
                                           htbDefaultClass: nil, htbRateToQuantum: nil, statistics: Self.statistics(q))
                    if kind == "htb" {
                        let defcls = UInt16(truncatingIfNeeded: rtnl_htb_get_defcls(q))
                        info.htbDefaultClass = defcls == 0 ? nil : TCHandle(major: info.handle.major, minor: defcls)
                        info.htbRateToQuantum = rtnl_htb_get_rate2quantum(q)
                    }
                    out.append(info)
                }
            }
        }
        // Every device has a root qdisc (at least noqueue): an empty dump means no such device.
        if out.isEmpty { _ = try socket.interfaceName(index: ifindex) }
        return out
    }

    /// Every class of `ifindex` (of all its qdiscs, or only of qdisc `qdisc`) with parameters
    /// and statistics, from one RTM_GETTCLASS dump. An unknown `ifindex` gives an empty list.
    ///
    /// Equivalent to `tc -s -d class show dev IF` (`… parent G:` for one qdisc).
    public func classes(ifindex: Int32, qdisc: TCHandle? = nil) throws(KernelError) -> [TCClassInfo] {
        let request = try NLMessage(type: Int32(RTM_GETTCLASS), flags: NLM_F_DUMP)
        try request.appendHeader(Self.tcHeader(ifindex: ifindex, parent: qdisc.map { TCHandle(major: $0.major, minor: 0) } ?? .unspecified))
        var out: [TCClassInfo] = []
        try socket.withSocket { (s) throws(KernelError) in
            try s.request(request, operation: "RTM_GETTCLASS", doing: "listing classes of interface \(ifindex)",
                          hint: { Self.hint($0, ifindex: ifindex, adding: false) }) { (m) throws(KernelError) in
                guard m.type == UInt16(RTM_NEWTCLASS), m.payload.count >= MemoryLayout<tcmsg>.size else { return }
                let index = m.payload.loadUnaligned(fromByteOffset: 4, as: Int32.self)
                let leafQdisc = TCHandle(rawValue: m.payload.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
                guard index == ifindex else { return }
                try withLibnlObject(parsing: m) { c in
                    let kind = rtnl_tc_get_kind(c).map { String(cString: $0) } ?? ""
                    var info = TCClassInfo(ifindex: index, handle: TCHandle(rawValue: rtnl_tc_get_handle(c)),
                                           parent: TCHandle(rawValue: rtnl_tc_get_parent(c)), kind: kind, htb: nil,
                                           leafQdisc: leafQdisc, statistics: Self.statistics(c))
                    if kind == "htb" {
                        var rate: UInt64 = 0, ceil: UInt64 = 0
                        if rtnl_htb_get_rate64(c, &rate) < 0 { rate = UInt64(rtnl_htb_get_rate(c)) }
                        if rtnl_htb_get_ceil64(c, &ceil) < 0 { ceil = UInt64(rtnl_htb_get_ceil(c)) }
                        info.htb = .init(rateKbit: rate * 8 / 1000, ceilKbit: ceil * 8 / 1000,
                                         prio: UInt8(truncatingIfNeeded: rtnl_htb_get_prio(c)),
                                         quantum: rtnl_htb_get_quantum(c),
                                         level: UInt32(max(0, rtnl_htb_get_level(c))),
                                         burstBytes: rtnl_htb_get_rbuffer(c), cburstBytes: rtnl_htb_get_cbuffer(c))
                    }
                    out.append(info)
                }
            }
        }
        return out
    }

    /// The filters attached to `parent` (a qdisc handle) on `ifindex`, from one RTM_GETTFILTER
    /// dump. libnl 3.7 has no cls_bpf module, so attributes are read directly.
    ///
    /// Equivalent to `tc filter show dev IF parent a1:`.
    public func filters(ifindex: Int32, parent: TCHandle) throws(KernelError) -> [TCFilterInfo] {
        let request = try NLMessage(type: Int32(RTM_GETTFILTER), flags: NLM_F_DUMP)
        try request.appendHeader(Self.tcHeader(ifindex: ifindex, parent: parent))
        var out: [TCFilterInfo] = []
        try socket.withSocket { (s) throws(KernelError) in
            try s.request(request, operation: "RTM_GETTFILTER", doing: "listing filters of \(parent) on interface \(ifindex)",
                          hint: { Self.hint($0, ifindex: ifindex, adding: false) }) { (m) throws(KernelError) in
                let size = MemoryLayout<tcmsg>.size
                guard m.type == UInt16(RTM_NEWTFILTER), m.payload.count >= size else { return }
                let p = m.payload
                let info = p.loadUnaligned(fromByteOffset: 16, as: UInt32.self)
                var filter = TCFilterInfo(
                    parent: TCHandle(rawValue: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)),
                    preference: UInt16(truncatingIfNeeded: info >> 16),
                    protocol: UInt16(bigEndian: UInt16(truncatingIfNeeded: info)),
                    handle: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self), kind: "", bpfName: nil, bpfDirectAction: nil)
                NetlinkWire.forEachAttribute(in: UnsafeRawBufferPointer(rebasing: p[size...])) { type, value in
                    switch Int32(type) {
                    case Int32(TCA_KIND): filter.kind = NetlinkWire.string(value)
                    case Int32(TCA_OPTIONS):
                        NetlinkWire.forEachAttribute(in: value) { t, v in
                            if Int32(t) == Int32(TCA_BPF_NAME) { filter.bpfName = NetlinkWire.string(v) }
                            if Int32(t) == TCA_BPF_FLAGS, let f = NetlinkWire.u32(v) { filter.bpfDirectAction = f & UInt32(TCA_BPF_FLAG_ACT_DIRECT) != 0 }
                        }
                    default: break
                    }
                }
                if filter.kind == "bpf", filter.bpfDirectAction == nil { filter.bpfDirectAction = false }
                // A dump lists a chain/prio head without a handle too; report only real filters.
                if filter.handle != 0 { out.append(filter) }
            }
        }
        return out
    }

    // MARK: - Message building

    static func tcHeader(ifindex: Int32, handle: TCHandle = .unspecified, parent: TCHandle = .unspecified, info: UInt32 = 0) -> tcmsg {
        var t = tcmsg()
        t.tcm_family = UInt8(AF_UNSPEC)
        t.tcm_ifindex = ifindex
        t.tcm_handle = handle.rawValue
        t.tcm_parent = parent.rawValue
        t.tcm_info = info
        return t
    }

    static func statistics(_ tc: OpaquePointer) -> TCStatistics {
        TCStatistics(bytes: rtnl_tc_get_stat(tc, RTNL_TC_BYTES), packets: rtnl_tc_get_stat(tc, RTNL_TC_PACKETS),
                     drops: rtnl_tc_get_stat(tc, RTNL_TC_DROPS), overlimits: rtnl_tc_get_stat(tc, RTNL_TC_OVERLIMITS),
                     queueLength: rtnl_tc_get_stat(tc, RTNL_TC_QLEN), backlogBytes: rtnl_tc_get_stat(tc, RTNL_TC_BACKLOG))
    }

    static func validate(rate: UInt64, ceil: UInt64, prio: UInt8, what: String) throws(KernelError) {
        guard rate >= 1, ceil >= rate, ceil <= maximumRateKbit, prio <= 7 else {
            throw KernelError("validate", errno: EINVAL,
                detail: "\(what): rate \(rate)kbit ceil \(ceil)kbit prio \(prio) is invalid; need 1 ≤ rate ≤ ceil ≤ \(maximumRateKbit) kbit and prio 0…7")
        }
    }

    /// quantum = rate/r2q clamped to 1600…200000 bytes (explicit, so the kernel never warns).
    static func quantum(rateBytes: UInt64) -> UInt32 {
        UInt32(min(max(rateBytes / UInt64(rateToQuantum), minimumQuantum), maximumQuantum))
    }

    /// burst = max(1600 B, 1 ms worth of `rateBytes`).
    static func burst(rateBytes: UInt64) -> UInt32 {
        UInt32(min(max(rateBytes / 1000, minimumBurst), UInt64(UInt32.max)))
    }

    /// An HTB class RTM_NEWTCLASS built by libnl (`rtnl_class_build_add_request`).
    /// flags: NLM_F_CREATE|NLM_F_EXCL = add, 0 = change (ENOENT if missing), NLM_F_CREATE = add or change.
    static func htbClassMessage(
        ifindex: Int32, handle: TCHandle, parent: TCHandle, rateKbit: UInt64, ceilKbit: UInt64, prio: UInt8, flags: Int32
    ) throws(KernelError) -> NLMessage {
        try validate(rate: rateKbit, ceil: ceilKbit, prio: prio, what: "class \(handle)")
        let c = try LibnlClass()
        rtnl_tc_set_ifindex(c.tc, ifindex)
        rtnl_tc_set_handle(c.tc, handle.rawValue)
        rtnl_tc_set_parent(c.tc, parent.rawValue)
        var rc = rtnl_tc_set_kind(c.tc, "htb")
        let rateBytes = rateKbit * 125, ceilBytes = ceilKbit * 125
        if rc >= 0 { rc = rtnl_htb_set_rate64(c.raw, rateBytes) }
        if rc >= 0 { rc = rtnl_htb_set_ceil64(c.raw, ceilBytes) }
        if rc >= 0 { rc = rtnl_htb_set_prio(c.raw, UInt32(prio)) }
        if rc >= 0 { rc = rtnl_htb_set_quantum(c.raw, quantum(rateBytes: rateBytes)) }
        if rc >= 0 { rc = rtnl_htb_set_rbuffer(c.raw, burst(rateBytes: rateBytes)) }
        if rc >= 0 { rc = rtnl_htb_set_cbuffer(c.raw, burst(rateBytes: ceilBytes)) }
        var raw: OpaquePointer?
        if rc >= 0 { rc = rtnl_class_build_add_request(c.raw, flags, &raw) }
        guard rc >= 0, let raw else {
            throw KernelError("rtnl_class_build_add_request", errno: EINVAL,
                              detail: "libnl refused class \(handle): \(String(cString: nl_geterror(rc)))")
        }
        return NLMessage(adopting: raw)
    }

    static func classDeleteMessage(ifindex: Int32, handle: TCHandle) throws(KernelError) -> NLMessage {
        let c = try LibnlClass()
        rtnl_tc_set_ifindex(c.tc, ifindex)
        rtnl_tc_set_handle(c.tc, handle.rawValue)
        var raw: OpaquePointer?
        let rc = rtnl_class_build_delete_request(c.raw, &raw)
        guard rc >= 0, let raw else { throw KernelError("rtnl_class_build_delete_request", errno: ENOMEM) }
        return NLMessage(adopting: raw)
    }

    /// An HTB qdisc RTM_NEWQDISC (NLM_F_CREATE|NLM_F_EXCL) built by libnl.
    static func htbQdiscMessage(ifindex: Int32, handle: TCHandle, parent: TCHandle, defaultClass: UInt16) throws(KernelError) -> NLMessage {
        let q = try LibnlQdisc()
        rtnl_tc_set_ifindex(q.tc, ifindex)
        rtnl_tc_set_handle(q.tc, handle.rawValue)
        rtnl_tc_set_parent(q.tc, parent.rawValue)
        var rc = rtnl_tc_set_kind(q.tc, "htb")
        if rc >= 0 { rc = rtnl_htb_set_defcls(q.raw, UInt32(defaultClass)) }
        if rc >= 0 { rc = rtnl_htb_set_rate2quantum(q.raw, rateToQuantum) }
        var raw: OpaquePointer?
        if rc >= 0 { rc = rtnl_qdisc_build_add_request(q.raw, NLM_F_CREATE | NLM_F_EXCL, &raw) }
        guard rc >= 0, let raw else {
            throw KernelError("rtnl_qdisc_build_add_request", errno: EINVAL, detail: String(cString: nl_geterror(rc)))
        }
        return NLMessage(adopting: raw)
    }

    /// A group's inner HTB qdisc `G:` (RTM_NEWQDISC, NLM_F_CREATE|NLM_F_EXCL), `default 0` and
    /// `direct_qlen 0`: a packet whose priority names a leaf `G:N` that does not exist (lease
    /// deleted while nftables still steers it) matches no class of `G:`; HTB would put it on
    /// the qdisc's direct queue, which is served before every leaf and shaped only by `a1:G`
    /// (ceil = capacity), so stale traffic would bypass its lease and starve the group's other
    /// leases. With a direct queue of 0 packets it is dropped instead (counted in the qdisc's
    /// drops). libnl 3.7's HTB qdisc has no TCA_HTB_DIRECT_QLEN, so this message is built with
    /// libnl's nlmsg/nla calls.
    ///
    /// Equivalent to `tc qdisc add dev IF parent a1:G handle G: htb r2q 10 direct_qlen 0`.
    static func groupQdiscMessage(ifindex: Int32, group: UInt16) throws(KernelError) -> NLMessage {
        let m = try NLMessage(type: Int32(RTM_NEWQDISC), flags: NLM_F_CREATE | NLM_F_EXCL)
        try m.appendHeader(tcHeader(ifindex: ifindex, handle: AIPagingHTB.groupQdisc(group), parent: AIPagingHTB.groupClass(group)))
        try m.put(Int32(TCA_KIND), string: "htb")
        var glob = tc_htb_glob()
        glob.version = UInt32(TC_HTB_PROTOVER)
        glob.rate2quantum = rateToQuantum
        glob.defcls = 0
        let bytes = withUnsafeBytes(of: glob) { Array($0) }
        try m.nest(Int32(TCA_OPTIONS)) { () throws(KernelError) in
            try m.put(Int32(TCA_HTB_INIT), bytes: bytes)
            try m.put(Int32(TCA_HTB_DIRECT_QLEN), u32: 0)
        }
        return m
    }

    /// The cls_bpf filter on `a1:` (libnl 3.7 has no cls_bpf module: built with nlmsg/nla calls).
    /// Non-direct-action: the program's return value is the class id, 0 = no match.
    static func filterMessage(ifindex: Int32, programFD: Int32) throws(KernelError) -> NLMessage {
        let m = try NLMessage(type: Int32(RTM_NEWTFILTER), flags: NLM_F_CREATE | NLM_F_EXCL)
        let ethPAllNetworkOrder = UInt32(UInt16(0x0003).bigEndian)
        try m.appendHeader(tcHeader(ifindex: ifindex, handle: TCHandle(rawValue: AIPagingHTB.filterHandle),
                                    parent: AIPagingHTB.rootQdisc,
                                    info: UInt32(AIPagingHTB.filterPreference) << 16 | ethPAllNetworkOrder))
        try m.put(Int32(TCA_KIND), string: "bpf")
        try m.nest(Int32(TCA_OPTIONS)) { () throws(KernelError) in
            try m.put(Int32(TCA_BPF_FD), u32: UInt32(bitPattern: programFD))
            try m.put(Int32(TCA_BPF_NAME), string: AIPagingHTB.filterProgramName)
            try m.put(Int32(TCA_BPF_FLAGS), u32: 0)
        }
        return m
    }

    static func messages(for op: TCOperation, ifindex: Int32) throws(KernelError) -> [NLMessage] {
        let add = NLM_F_CREATE | NLM_F_EXCL
        switch op {
        case let .addGroup(g, prio, rate, capacity):
            try validateGroup(g)
            return [
                try htbClassMessage(ifindex: ifindex, handle: AIPagingHTB.groupClass(g), parent: AIPagingHTB.aggregateClass,
                                    rateKbit: rate, ceilKbit: capacity, prio: prio, flags: add),
                try groupQdiscMessage(ifindex: ifindex, group: g),
                try htbClassMessage(ifindex: ifindex, handle: AIPagingHTB.groupRootClass(g), parent: AIPagingHTB.groupQdisc(g),
                                    rateKbit: capacity, ceilKbit: capacity, prio: 0, flags: add),
            ]
        case let .changeGroup(g, prio, rate, capacity):
            try validateGroup(g)
            return [try htbClassMessage(ifindex: ifindex, handle: AIPagingHTB.groupClass(g), parent: AIPagingHTB.aggregateClass,
                                        rateKbit: rate, ceilKbit: capacity, prio: prio, flags: 0)]
        case let .changeGroupCapacity(g, capacity):
            try validateGroup(g)
            return [try htbClassMessage(ifindex: ifindex, handle: AIPagingHTB.groupRootClass(g), parent: AIPagingHTB.groupQdisc(g),
                                        rateKbit: capacity, ceilKbit: capacity, prio: 0, flags: 0)]
        case let .deleteGroup(g):
            try validateGroup(g)
            return [try classDeleteMessage(ifindex: ifindex, handle: AIPagingHTB.groupClass(g))]
        case let .addLeaf(leaf, p):
            try validateLeaf(leaf)
            return [try htbClassMessage(ifindex: ifindex, handle: leaf, parent: TCHandle(major: leaf.major, minor: 1),
                                        rateKbit: p.rateKbit, ceilKbit: p.ceilKbit, prio: p.prio, flags: add)]
        case let .changeLeaf(leaf, p):
            try validateLeaf(leaf)
            return [try htbClassMessage(ifindex: ifindex, handle: leaf, parent: TCHandle(major: leaf.major, minor: 1),
                                        rateKbit: p.rateKbit, ceilKbit: p.ceilKbit, prio: p.prio, flags: 0)]
        case let .deleteLeaf(leaf):
            try validateLeaf(leaf)
            return [try classDeleteMessage(ifindex: ifindex, handle: leaf)]
        }
    }

    static func validateGroup(_ g: UInt16) throws(KernelError) {
        guard AIPagingHTB.groupRange.contains(g) else {
            throw KernelError("validate", errno: EINVAL,
                detail: "group \(String(g, radix: 16)) is outside 100…fff0 (the eBPF filter maps only those majors)")
        }
    }

    /// A leaf is `G:N` with N ≥ 2 under `G:1`; `a1:N` (N ≥ 3, under `a1:1`) is accepted too, for
    /// the flat single-qdisc layout the benchmarks compare against (the kernel answers EEXIST if
    /// such a minor collides with a group class `a1:G`).
    static func validateLeaf(_ h: TCHandle) throws(KernelError) {
        let ok = (AIPagingHTB.groupRange.contains(h.major) && h.minor >= 2)
            || (h.major == AIPagingHTB.rootMajor && h.minor >= 3)
        guard ok else {
            throw KernelError("validate", errno: EINVAL, detail: "leaf \(h) is not G:N with G in 100…fff0 and N ≥ 2")
        }
    }

    static func requestName(_ op: TCOperation) -> String {
        switch op {
        case .addGroup: return "RTM_NEWTCLASS/RTM_NEWQDISC"
        case .changeGroup, .changeGroupCapacity, .addLeaf, .changeLeaf: return "RTM_NEWTCLASS"
        case .deleteGroup, .deleteLeaf: return "RTM_DELTCLASS"
        }
    }

    static func hint(_ errno: Int32, ifindex: Int32, adding: Bool) -> String? {
        switch errno {
        case ENODEV: return "interface index \(ifindex) does not exist in this namespace; look it up again (interfaceIndex(named:))"
        case EEXIST: return adding ? "the interface already has a root qdisc that is not aipaging's; remove it or choose another interface" : nil
        case EPERM: return "tc changes need CAP_NET_ADMIN in the namespace"
        default: return nil
        }
    }

    static func hint(_ errno: Int32, for op: TCOperation, ifindex: Int32) -> String? {
        switch (errno, op) {
        case (ENODEV, _), (EPERM, _): return hint(errno, ifindex: ifindex, adding: false)
        case (EEXIST, .addGroup(let g, _, _, _)):
            return "group \(String(g, radix: 16)) (class a1:\(String(g, radix: 16)) or qdisc \(String(g, radix: 16)):) already exists; change it or pick a free group number"
        case (EEXIST, .addLeaf(let h, _)): return "leaf \(h) already exists; use changeLeaf or a free minor"
        case (ENOENT, .addGroup), (EINVAL, .addGroup): return "the aipaging root (a1:, a1:1) is missing; call ensureSkeleton first"
        case (ENOENT, .addLeaf(let h, _)), (EINVAL, .addLeaf(let h, _)):
            return "group \(String(h.major, radix: 16)) (qdisc \(String(h.major, radix: 16)):, class \(String(h.major, radix: 16)):1) is missing; add the group first"
        case (ENOENT, _): return "the class does not exist (already deleted, or never created on this interface)"
        case (EBUSY, _): return "the class still has children or bound filters"
        default: return nil
        }
    }

    private func perform(_ messages: [NLMessage], ifindex: Int32, doing: String) throws(KernelError) {
        let acks = try socket.withSocket { (s) throws(KernelError) in try s.transact(messages, operation: "tc") }
        if let ack = acks.first(where: { $0.errno != 0 }) {
            throw KernelError("tc", errno: ack.errno, doing: doing + " on interface \(ifindex)", kernelMessage: ack.message,
                              hint: Self.hint(ack.errno, ifindex: ifindex, adding: false))
        }
    }
}

/// A filter as dumped by RTM_GETTFILTER.
public struct TCFilterInfo: Hashable, Sendable {
    public var parent: TCHandle
    public var preference: UInt16
    /// Ethertype in host order (3 = ETH_P_ALL).
    public var `protocol`: UInt16
    public var handle: UInt32
    public var kind: String
    /// cls_bpf only: TCA_BPF_NAME.
    public var bpfName: String?
    /// cls_bpf only: direct-action mode.
    public var bpfDirectAction: Bool?

    /// The aipaging priority-to-group filter on `a1:`.
    public var isAIPagingFilter: Bool {
        kind == "bpf" && bpfName?.hasPrefix(AIPagingHTB.filterProgramName) == true && bpfDirectAction == false
    }
}

/// The loaded priority-to-group eBPF program; its fd is closed in deinit (an attached filter
/// keeps its own reference to the program).
final class PriorityFilterProgram: Sendable {
    let fd: Int32
    init() throws(KernelError) {
        var log = [CChar](repeating: 0, count: 4096)
        let fd = aip_tc_bpf_load_priority_to_class(AIPagingHTB.rootMajor, AIPagingHTB.groupRange.lowerBound,
                                                   &log, UInt32(log.count))
        if fd < 0 {
            let err = errno
            let verifier = log.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.trimmedWhitespace
            throw KernelError("bpf(BPF_PROG_LOAD)", errno: err,
                detail: "loading the priority-to-group program for cls_bpf; needs CAP_BPF and CAP_NET_ADMIN and a kernel with eBPF (CONFIG_BPF_SYSCALL, CONFIG_NET_CLS_BPF)"
                    + (verifier.isEmpty ? "" : "; verifier: \(verifier)"))
        }
        self.fd = fd
    }
    deinit { close(fd) }
}

extension String {
    fileprivate var trimmedWhitespace: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}

extension TrafficControl {
    /// The interfaces of this namespace whose root qdisc is the aipaging `htb a1:`, from one
    /// RTM_GETQDISC dump of every device. Equivalent to `tc qdisc show` filtered on `htb a1: root`.
    public func interfacesWithAIPagingRoot() throws(KernelError) -> [Int32] {
        let request = try NLMessage(type: Int32(RTM_GETQDISC), flags: NLM_F_DUMP)
        try request.appendHeader(Self.tcHeader(ifindex: 0))
        var out: [Int32] = []
        try socket.withSocket { (s) throws(KernelError) in
            try s.request(request, operation: "RTM_GETQDISC", doing: "listing root qdiscs of every interface",
                          hint: { _ in "" }) { (m) throws(KernelError) in
                guard m.type == UInt16(RTM_NEWQDISC), m.payload.count >= MemoryLayout<tcmsg>.size else { return }
                let index = m.payload.loadUnaligned(fromByteOffset: 4, as: Int32.self)
                let handle = m.payload.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
                let parent = m.payload.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
                guard parent == TCHandle.root.rawValue, handle == AIPagingHTB.rootQdisc.rawValue else { return }
                try withLibnlObject(parsing: m) { q in
                    if rtnl_tc_get_kind(q).map({ String(cString: $0) }) == "htb" { out.append(index) }
                }
            }
        }
        return out
    }
}

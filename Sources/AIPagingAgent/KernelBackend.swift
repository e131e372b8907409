import AIPagingCore
import AIPagingKernel
import CAIPagingShim
import Foundation
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The real kernel of one enforcement point: nftables through libnftnl, tc through libnl-route-3,
/// conntrack through ctnetlink, all on netlink sockets opened inside the point's namespace.
/// Owned by the lease service and used from its executor only.
public final class KernelBackend: EnforcementBackend {
    public let location: String
    let namespace: NetworkNamespace
    let nft: NFTablesSocket
    let route: RouteSocket
    let tc: TrafficControl
    let ct: ConntrackSocket
    let logger: Logger
    var ifindexCache: [String: Int32] = [:]
    /// Marks whose conntrack entries could not be flushed; retried by `maintenance()`.
    var pendingFlushes: Set<UInt32> = []
    /// Extra timeout margin learned from transactions that took longer than theirs (the agent's
    /// thread descheduled between reading the clock and the kernel taking the batch, on a loaded
    /// node): elements then expire that much before their deadline rather than after it. Capped
    /// (it must stay within the resync's early tolerance) and decaying when transactions are fast.
    var learnedMarginNs: UInt64 = 0
    static let maxLearnedMarginNs: UInt64 = 15_000_000
    /// The re-timing budget (see `commitElements`): time spent re-timing since `retimeBudgetStart`.
    var retimeBudgetStart = BootInstant(nanoseconds: 0)
    var retimeSpentNs: UInt64 = 0
    var retimesSkipped = 0
    /// For tests: delays (ns) put between the clock reading and the commit of the next
    /// nftables transactions of `apply`, one per transaction, as a descheduled thread would.
    public var injectedCommitDelaysNs: [UInt64] = []
    /// Removes, in the background, conntrack entries of flows that began before their lease.
    let sweeper: UnsteeredSweeper

    public init(point: EnforcementPointConfig, logger: Logger) throws(KernelError) {
        let ns: NetworkNamespace = point.netns.map { .named($0) } ?? .current
        namespace = ns
        location = point.netns.map { "netns \($0)" } ?? "the agent's network namespace"
        nft = try NFTablesSocket(namespace: ns)
        route = try RouteSocket(namespace: ns)
        tc = TrafficControl(socket: route)
        ct = try ConntrackSocket(namespace: ns)
        var l = logger
        l[metadataKey: "point"] = "\(point.name)"
        self.logger = l
        sweeper = try UnsteeredSweeper(namespace: ns, logger: l)
    }

    deinit { sweeper.stop() }

    static func fail(_ what: String, _ e: KernelError) -> EnforcementError {
        EnforcementError(.enforcementFailed, "\(what): \(e)")
    }

    // MARK: EnforcementBackend

    public func prepare() throws(EnforcementError) {
        do {
            switch try nft.verifyAIPagingSchema() {
            case .intact:
                logger.info("nftables table inet aipaging is present and intact; keeping its elements")
            case .absent:
                let tx = NFTTransaction()
                tx.createAIPagingTable()
                try commit(tx, "creating table inet aipaging")
                logger.info("created nftables table inet aipaging")
            case .mismatched(let reasons):
                // Rebuild the table and put its live elements back, in one transaction: flows
                // keep being steered across the rebuild.
                let state = try readElements()
                let now = SystemClock.boot().adding(nanoseconds: 1_000_000 + 5_000 * UInt64(state.steering.count + 2 * state.anchors.count))
                let tx = NFTTransaction()
                tx.recreateAIPagingTable()
                for (c, s) in state.steering { addSteer(tx, c, s.mark, s.deadline, now) }
                for (m, a) in state.anchors { addAnchor(tx, m, a.address, a.port, a.deadline, now) }
                for (m, q) in state.qos { addQoS(tx, m, q.classid, q.deadline, now) }
                try commit(tx, "rebuilding table inet aipaging")
                logger.warning("rebuilt nftables table inet aipaging with a different schema", metadata: ["reasons": "\(reasons.joined(separator: "; "))"])
            }
        } catch let e as EnforcementError {
            throw e
        } catch let e as KernelError {
            throw Self.fail("checking table inet aipaging", e)
        } catch {
            throw EnforcementError(.enforcementFailed, "\(error)")
        }
    }

    public func interface(toward address: IPAddress) throws(EnforcementError) -> String {
        do {
            let r = try route.route(to: address)
            guard case .unicast = r.type else {
                throw EnforcementError(.noRouteToAnchor, "\(address) is not a remote unicast destination in \(location) (route type \(r.type))")
            }
            ifindexCache[r.interfaceName] = r.ifindex
            return r.interfaceName
        } catch let e as EnforcementError {
            throw e
        } catch let e as KernelError {
            throw EnforcementError(e.errno == ENETUNREACH ? .noRouteToAnchor : .enforcementFailed, "route to \(address): \(e)")
        } catch {
            throw EnforcementError(.enforcementFailed, "\(error)")
        }
    }

    public func apply(_ plan: PointPlan) throws(EnforcementError) {
        flush(plan.flushBlocksBefore)
        try applyTC(plan.tcBefore)
        if !plan.nft.isEmpty { try commitElements(plan.nft) }
        flush(plan.flushBlocksAfter)
        if !plan.flushUnsteered.isEmpty {
            sweeper.add(plan.flushUnsteered.map {
                ConntrackClassifier(client: $0.client, service: $0.service, protocolNumber: $0.proto.number, servicePort: $0.port)
            })
        }
        try applyTC(plan.tcAfter)
    }

    /// Commits `changes` in one nftables transaction with kernel timeouts that end every added
    /// element at or before its lease's deadline.
    ///
    /// The kernel starts an element's timeout when it processes it, a little after the clock
    /// reading the timeout was computed from: the margin (1 ms + 5 µs per change, plus what slow
    /// transactions taught) covers that. A transaction that took longer than its margin (the
    /// agent's thread descheduled between the clock reading and the kernel, on a loaded node)
    /// may have left its elements up to the difference past their deadlines: its added elements
    /// are then re-timed at once, each removed and added again with a fresh timeout in one more
    /// transaction whose margin is twice what the slow one took, up to the learned margin's cap
    /// (so they end early by at most that, rather than late, and within the resync's early
    /// tolerance, which would otherwise replace them again and restart their counters), so that
    /// the kernel's timeouts alone end them on time should the agent die right after. Re-timing spends at most a fifth of each second: on a node so
    /// overloaded that most transactions are slow it would only add to the load, and the
    /// agent's timer still removes every element at its deadline while the agent lives. A
    /// re-timed element restarts its counters, which the evidence exporter detects.
    func commitElements(_ changes: [NFTChange]) throws(EnforcementError) {
        let (took, margin) = try commitTimed(changes, margin: nil)
        guard took > margin else { return }
        let added = changes.filter {
            switch $0 {
            case .addSteer, .addAnchor, .addQoS: return true
            case .deleteSteer, .deleteAnchor, .deleteQoS: return false
            }
        }
        guard !added.isEmpty else { return }
        let now = SystemClock.boot()
        if now.nanoseconds >= retimeBudgetStart.nanoseconds + 1_000_000_000 {
            retimeBudgetStart = now
            retimeSpentNs = 0
        }
        guard retimeSpentNs < 200_000_000 else {
            retimesSkipped += 1
            logger.warning("nftables transaction took longer than its timeout margin and the re-timing budget is spent: its elements may outlive their leases by up to the difference if the agent dies before their deadlines",
                           metadata: ["took_us": "\(took / 1000)", "margin_us": "\(margin / 1000)", "skipped": "\(retimesSkipped)"])
            return
        }
        do {
            let (took2, margin2) = try commitTimed(added, margin: min(2 * took, Self.maxLearnedMarginNs))
            retimeSpentNs += took2
            if took2 > margin2 {
                logger.warning("re-timing a slow nftables transaction's elements was slow too: they may outlive their leases by up to the difference if the agent dies before their deadlines",
                               metadata: ["took_us": "\(took2 / 1000)", "margin_us": "\(margin2 / 1000)"])
            }
        } catch {
            // The first transaction stands: its elements are what the lease table wants, and the
            // agent's timer removes them at their deadlines.
            logger.warning("could not re-time the elements of a slow nftables transaction", metadata: ["error": "\(error)"])
        }
    }

    /// One transaction of `changes`; `margin` nil: a first transaction, with the learned margin
    /// (which it updates from how long it took); otherwise a re-timing with that margin, each added
    /// element removed and added again. Returns how long it took and its margin.
    func commitTimed(_ changes: [NFTChange], margin retimeMargin: UInt64?) throws(EnforcementError) -> (took: UInt64, margin: UInt64) {
        let retime = retimeMargin != nil
        let start = SystemClock.boot()
        let baseMargin = 1_000_000 + 5_000 * UInt64(changes.count * (retime ? 3 : 1))
        let margin = baseMargin + (retimeMargin ?? learnedMarginNs)
        let now = start.adding(nanoseconds: margin)
        let tx = NFTTransaction()
        for change in changes {
            switch change {
            case .addSteer(let c, let mark, let d):
                if retime { tx.removeSteering(Self.key(c), mark: mark) }
                addSteer(tx, c, mark, d, now)
            case .deleteSteer(let c, let mark): tx.removeSteering(Self.key(c), mark: mark)
            case .addAnchor(let m, let a, let p, let d):
                if retime { tx.removeAnchor(mark: m, address: a, port: p) }
                addAnchor(tx, m, a, p, d, now)
            case .deleteAnchor(let m, let a, let p): tx.removeAnchor(mark: m, address: a, port: p)
            case .addQoS(let m, let cid, let d):
                if retime { tx.removeQoS(mark: m, classid: cid) }
                addQoS(tx, m, cid, d, now)
            case .deleteQoS(let m, let cid): tx.removeQoS(mark: m, classid: cid)
            }
        }
        if !injectedCommitDelaysNs.isEmpty {
            let delay = injectedCommitDelaysNs.removeFirst()
            usleep(useconds_t(delay / 1000))
        }
        try commit(tx, retime ? "re-timing \(changes.count) elements of a slow nftables transaction"
                              : "nftables transaction (\(changes.count) changes)")
        // Clock reading to ACK bounds how late the kernel started the timeouts.
        let took = start.nanoseconds(until: SystemClock.boot())
        guard !retime else { return (took, margin) }
        if took > margin {
            let needed = min(Self.maxLearnedMarginNs, took - baseMargin)
            logger.warning("nftables transaction took longer than its timeout margin: re-timing its elements; widening the margin",
                           metadata: ["took_us": "\(took / 1000)", "margin_us": "\(margin / 1000)",
                                      "new_margin_us": "\((baseMargin + max(learnedMarginNs, needed)) / 1000)"])
            learnedMarginNs = max(learnedMarginNs, needed)
        } else if learnedMarginNs > 0 && took * 4 < margin {
            learnedMarginNs = learnedMarginNs * 7 / 8
            if learnedMarginNs < 100_000 { learnedMarginNs = 0 }
        }
        return (took, margin)
    }

    public func observe() throws(EnforcementError) -> KernelState {
        do {
            var state = try readElements()
            for ifindex in try tc.interfacesWithAIPagingRoot() {
                let name = try route.interfaceName(index: ifindex)
                ifindexCache[name] = ifindex
                let rootClasses = try tc.classes(ifindex: ifindex, qdisc: AIPagingHTB.rootQdisc)
                var capacity = rootClasses.first { $0.handle == AIPagingHTB.aggregateClass }?.htb?.ceilKbit ?? 0
                // A skeleton missing its best-effort class or its eBPF classifier (drift) reads
                // as capacity 0: the plan then re-ensures the skeleton, which puts them back.
                let classified = try tc.filters(ifindex: ifindex, parent: AIPagingHTB.rootQdisc).contains { $0.isAIPagingFilter }
                if !classified || !rootClasses.contains(where: { $0.handle == AIPagingHTB.bestEffortClass }) {
                    capacity = 0
                }
                var iface = KernelState.Interface(capacityKbit: capacity)
                for c in rootClasses where c.handle.major == Layout.rootMajor && AIPagingHTB.groupRange.contains(c.handle.minor) {
                    let major = c.handle.minor
                    iface.groups[major] = .init(rateKbit: c.htb?.rateKbit ?? 0, priority: c.htb?.prio ?? 0)
                    for leaf in try tc.classes(ifindex: ifindex, qdisc: TCHandle(major: major, minor: 0))
                    where leaf.handle.major == major && leaf.handle.minor >= Layout.firstLeafMinor {
                        iface.leaves[leaf.handle.rawValue] = .init(rateKbit: leaf.htb?.rateKbit ?? 0, ceilKbit: leaf.htb?.ceilKbit ?? 0,
                                                                   priority: leaf.htb?.prio ?? 0, owner: 0)
                    }
                }
                state.interfaces[name] = iface
            }
            return state
        } catch {
            throw Self.fail("reading the kernel state back", error)
        }
    }

    public func removeAll() throws(EnforcementError) {
        do {
            if try nft.aipagingTable() != nil {
                let tx = NFTTransaction()
                tx.deleteAIPagingTableIfExists()
                try commit(tx, "deleting table inet aipaging")
            }
            for ifindex in try tc.interfacesWithAIPagingRoot() { try tc.removeSkeleton(ifindex: ifindex) }
            for e in try ct.entries(mark: Layout.markPrefix, mask: Layout.markMask) where e.mark != 0 {
                try? ct.deleteEntries(markedWith: e.mark)
            }
        } catch let e as EnforcementError {
            throw e
        } catch {
            throw Self.fail("removing the agent's kernel state", error as! KernelError)
        }
    }

    public func counters() throws(EnforcementError) -> [UInt32: FlowCounters] {
        do {
            return FlowCounters.byMark(try nft.listQoS())
        } catch {
            throw Self.fail("reading qos counters", error)
        }
    }

    public func maintenance() {
        if !pendingFlushes.isEmpty { flush(Array(pendingFlushes)) }
    }

    /// Subscribes to the namespace's nftables and tc notifications, ignoring those caused by
    /// this backend's own nftables and rtnetlink sockets (their port ids).
    public func watchForeignChanges(_ onChange: @escaping @Sendable (KernelChangeMonitor.Report) -> Void) throws(EnforcementError) -> KernelChangeMonitor? {
        do {
            return try KernelChangeMonitor(namespace: namespace, ignoring: [nft.portID, route.portID], onChange: onChange)
        } catch {
            throw Self.fail("watching \(location) for changes by other processes", error)
        }
    }

    // MARK: helpers

    static func key(_ c: Classifier) -> NFTSteeringKey {
        NFTSteeringKey(client: c.client, service: c.service, proto: c.proto == .tcp ? .tcp : .udp, port: c.port)!
    }

    /// Kernel timeout for a deadline: whole milliseconds left, rounded down so the kernel never
    /// holds state past the lease. Nil when the deadline has (all but) passed: nothing to add.
    static func timeout(_ deadline: BootInstant, _ now: BootInstant) -> UInt64? {
        let ms = now.milliseconds(until: deadline)
        return ms > 0 ? ms : nil
    }

    func addSteer(_ tx: NFTTransaction, _ c: Classifier, _ mark: UInt32, _ d: BootInstant, _ now: BootInstant) {
        if let t = Self.timeout(d, now) { tx.addSteering(Self.key(c), mark: mark, timeoutMs: t) }
    }
    func addAnchor(_ tx: NFTTransaction, _ m: UInt32, _ a: IPAddress, _ p: UInt16, _ d: BootInstant, _ now: BootInstant) {
        if let t = Self.timeout(d, now) { tx.addAnchor(mark: m, address: a, port: p, timeoutMs: t) }
    }
    func addQoS(_ tx: NFTTransaction, _ m: UInt32, _ cid: UInt32, _ d: BootInstant, _ now: BootInstant) {
        if let t = Self.timeout(d, now) { tx.addQoS(mark: m, classid: cid, timeoutMs: t) }
    }

    func commit(_ tx: NFTTransaction, _ what: String) throws(EnforcementError) {
        guard tx.operationCount > 0 else { return }
        do {
            try nft.commit(tx)
        } catch {
            throw EnforcementError(.enforcementFailed, "\(what): \(error)")
        }
    }

    /// The table's elements. Each element's deadline is the time its dump started plus the
    /// remaining life the kernel reported: a lower bound, early by at most `readSkewNs`.
    func readElements() throws(KernelError) -> KernelState {
        var state = KernelState()
        var skew: UInt64 = 0
        func timed<T>(_ body: () throws(KernelError) -> T) throws(KernelError) -> (T, BootInstant) {
            let start = SystemClock.boot()
            let r = try body()
            skew = max(skew, start.nanoseconds(until: SystemClock.boot()))
            return (r, start)
        }
        for fam in [IPAddress.Family.ipv4, .ipv6] {
            let (steer, t1) = try timed { () throws(KernelError) in try nft.listSteering(family: fam) }
            for e in steer {
                let c = Classifier(client: e.key.client, service: e.key.service, proto: e.key.proto == .tcp ? .tcp : .udp, port: e.key.port)
                state.steering[c] = .init(mark: e.mark, deadline: t1.adding(milliseconds: e.expiresMs ?? 0))
            }
            let (anchors, t2) = try timed { () throws(KernelError) in try nft.listAnchors(family: fam) }
            for e in anchors {
                state.anchors[e.mark] = .init(address: e.address, port: e.port, deadline: t2.adding(milliseconds: e.expiresMs ?? 0))
            }
        }
        let (qos, t3) = try timed { () throws(KernelError) in try nft.listQoS() }
        for e in qos where e.direction == .original {
            state.qos[e.mark] = .init(classid: e.classid, deadline: t3.adding(milliseconds: e.expiresMs ?? 0))
        }
        state.readSkewNs = skew
        return state
    }

    /// Deletes the conntrack entries of `marks`: one kernel flush per aligned block of
    /// consecutive marks (`MarkBlocks`), since each flush walks the whole conntrack table.
    func flush(_ marks: [UInt32]) { flush(MarkBlocks.cover(marks)) }

    /// Deletes the conntrack entries of each block (the planner's, which may span free marks).
    func flush(_ blocks: [MarkBlocks.Block]) {
        for b in blocks {
            do {
                try ct.deleteEntries(markedWith: b.value, mask: b.mask)
                if !pendingFlushes.isEmpty { pendingFlushes = pendingFlushes.filter { $0 & b.mask != b.value } }
            } catch {
                for k in 0...(~b.mask) { pendingFlushes.insert(b.value + k) }
                logger.warning("could not delete conntrack entries of lease marks; retrying later",
                               metadata: ["marks": "\(String(b.value, radix: 16))/\(String(b.mask, radix: 16))", "error": "\(error)"])
            }
        }
    }

    func ifindex(_ name: String) throws(EnforcementError) -> Int32 {
        if let i = ifindexCache[name] { return i }
        do {
            let i = try route.interfaceIndex(named: name)
            ifindexCache[name] = i
            return i
        } catch {
            throw Self.fail("interface \(name)", error)
        }
    }

    func applyTC(_ changes: [TCChange]) throws(EnforcementError) {
        // Consecutive class operations on one interface go out back to back (one round trip).
        var batch: [TCOperation] = []
        var batchIf: Int32 = -1
        func flushBatch() throws(EnforcementError) {
            guard !batch.isEmpty else { return }
            let ops = batch
            batch = []
            do {
                let r = try tc.perform(ifindex: batchIf, ops)
                if let e = r.errors.lazy.compactMap({ $0 }).first { throw Self.fail("tc", e) }
            } catch let e as EnforcementError {
                throw e
            } catch {
                throw Self.fail("tc", error as! KernelError)
            }
        }
        for change in changes {
            let op: TCOperation
            let name: String
            switch change {
            case .addSkeleton(let i, let cap), .setCapacity(let i, let cap):
                try flushBatch()
                let idx = try ifindex(i)
                do {
                    try tc.ensureSkeleton(ifindex: idx, capacityKbit: cap)
                    if case .setCapacity = change {
                        let groups = try tc.classes(ifindex: idx, qdisc: AIPagingHTB.rootQdisc)
                            .filter { AIPagingHTB.groupRange.contains($0.handle.minor) }
                        try tc.performAll(ifindex: idx, groups.map { .changeGroupCapacity(group: $0.handle.minor, capacityKbit: cap) })
                    }
                } catch {
                    throw Self.fail("HTB root on \(i)", error)
                }
                continue
            case .removeSkeleton(let i):
                try flushBatch()
                do { try tc.removeSkeleton(ifindex: try ifindex(i)) } catch let e as EnforcementError { throw e } catch {
                    throw Self.fail("removing the HTB root on \(i)", error as! KernelError)
                }
                continue
            case .addGroup(let i, let g, let rate, let cap, let prio):
                name = i; op = .addGroup(group: g, prio: prio, rateKbit: max(rate, 1), capacityKbit: cap)
            case .changeGroup(let i, let g, let rate, let cap, let prio):
                name = i; op = .changeGroup(group: g, prio: prio, rateKbit: max(rate, 1), capacityKbit: cap)
            case .deleteGroup(let i, let g):
                name = i; op = .deleteGroup(group: g)
            case .addLeaf(let i, let cid, let rate, let ceil, let prio):
                name = i; op = .addLeaf(TCHandle(rawValue: cid), HTBClassParameters(rateKbit: rate, ceilKbit: ceil, prio: prio))
            case .changeLeaf(let i, let cid, let rate, let ceil, let prio):
                name = i; op = .changeLeaf(TCHandle(rawValue: cid), HTBClassParameters(rateKbit: rate, ceilKbit: ceil, prio: prio))
            case .deleteLeaf(let i, let cid):
                name = i; op = .deleteLeaf(TCHandle(rawValue: cid))
            }
            let idx = try ifindex(name)
            if idx != batchIf { try flushBatch(); batchIf = idx }
            batch.append(op)
        }
        try flushBatch()
    }
}

/// Deletes conntrack entries of flows that began before their lease existed (mark 0), so their
/// next packet is classified and steered. Classifiers are collected and swept together, at most
/// every `interval`, on a thread of its own and through a conntrack socket of its own (a shared
/// one would make the lease service wait on its lock). Not needed for the invariants.
final class UnsteeredSweeper: Sendable {
    let conntrack: ConntrackSocket
    let logger: Logger
    let pending = Mutex<Set<ConntrackClassifier>>([])
    let stopping = Atomic<Bool>(false)
    let wake = DispatchSemaphore(value: 0)
    let interval: DispatchTimeInterval

    init(namespace: NetworkNamespace, logger: Logger, interval: DispatchTimeInterval = .milliseconds(500)) throws(KernelError) {
        self.conntrack = try ConntrackSocket(namespace: namespace)
        self.logger = logger
        self.interval = interval
        Thread.detachNewThread { [self] in run() }
    }

    func add(_ classifiers: [ConntrackClassifier]) {
        let wasEmpty = pending.withLock { p in
            let e = p.isEmpty
            p.formUnion(classifiers)
            return e
        }
        if wasEmpty { wake.signal() }
    }

    func stop() {
        stopping.store(true, ordering: .releasing)
        wake.signal()
    }

    /// Up to this many IPv4 classifiers a sweep flushes one by one in the kernel instead of
    /// dumping the table.
    static let maxSingleFlushes = 256

    /// Deletes the unsteered entries of `batch`; returns how many (when known).
    ///
    /// A dump of the conntrack table locks every one of its buckets (262 144 here: ~9 ms) inside
    /// one request, and ctnetlink serves one request at a time (the subsystem's mutex), so a
    /// lease's conntrack flush at its deadline or revoke waited behind it: that was the 8–12 ms
    /// expiry lateness outliers of the bench. A kernel-side filtered flush skips empty buckets
    /// (a sweep of 200 classifiers took 0.9 ms in all), so IPv4 classifiers go one flush each
    /// while a sweep has few of them; IPv6 (whose kernel address filter is inverted) and big
    /// batches are still one dump.
    func sweep(_ batch: Set<ConntrackClassifier>) throws(KernelError) -> Int {
        var dumped = batch.filter { $0.client.family == .ipv6 }
        var n = 0
        let v4 = batch.subtracting(dumped)
        var yielder = CooperativeYield()
        if v4.count <= Self.maxSingleFlushes && conntrack.filteredFlushSupported != false {
            for c in v4 {
                yielder.check()
                guard conntrack.filteredFlushSupported != false else { dumped.insert(c); continue }
                let r = try conntrack.deleteUnsteeredEntries(of: c)
                n += r.deleted ?? 0
            }
        } else {
            dumped.formUnion(v4)
        }
        if !dumped.isEmpty { n += try conntrack.deleteUnsteeredEntries(ofAny: dumped) }
        return n
    }

    private func run() {
        aip_thread_set_name("aip-sweeper")
        ThreadScheduling.enterBackground(.sweeper)
        while !stopping.load(ordering: .acquiring) {
            if pending.withLock({ $0.isEmpty }) { wake.wait() }
            // Let more classifiers gather, then sweep them in one walk of the table.
            Thread.sleep(forTimeInterval: 0.2)
            let batch = pending.withLock { p -> Set<ConntrackClassifier> in
                let b = p
                p = []
                return b
            }
            guard !batch.isEmpty, !stopping.load(ordering: .acquiring) else { continue }
            do {
                let n = try sweep(batch)
                if n > 0 { logger.info("re-steered flows that began before their lease", metadata: ["conntrack_entries": "\(n)"]) }
            } catch {
                logger.warning("could not remove unsteered conntrack entries", metadata: ["error": "\(error)"])
            }
            if case .milliseconds(let ms) = interval { Thread.sleep(forTimeInterval: Double(ms) / 1000) }
        }
    }
}

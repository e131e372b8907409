/// One nftables element change inside the enforcement point's table (all in one transaction).
public enum NFTChange: Sendable, Equatable {
    /// Equivalent to `nft add element inet aipaging lease4 { client . service . proto . port timeout T : mark }`.
    case addSteer(Classifier, mark: UInt32, deadline: BootInstant)
    /// Carries the element's current data: the adapter removes it with a non-exclusive add of the
    /// same element followed by a delete, so an element the kernel already expired (timeouts fire
    /// up to a tick early) does not fail the transaction.
    case deleteSteer(Classifier, mark: UInt32)
    /// Equivalent to `nft add element inet aipaging anchor4 { mark timeout T : address . port }`.
    case addAnchor(mark: UInt32, address: IPAddress, port: UInt16, deadline: BootInstant)
    case deleteAnchor(mark: UInt32, address: IPAddress, port: UInt16)
    /// Equivalent to `nft add element inet aipaging qos { mark . original timeout T : classid, mark . reply timeout T : none }`.
    case addQoS(mark: UInt32, classid: UInt32, deadline: BootInstant)
    case deleteQoS(mark: UInt32, classid: UInt32)
}

/// One tc change on an interface of the enforcement point.
public enum TCChange: Sendable, Equatable {
    /// Root `htb a1:` with `a1:1` (capacity), `a1:2` (best effort) and the group classifier.
    case addSkeleton(interface: String, capacityKbit: UInt64)
    case setCapacity(interface: String, capacityKbit: UInt64)
    case removeSkeleton(interface: String)
    /// Group class `a1:G` + qdisc `G:` + class `G:1`.
    case addGroup(interface: String, major: UInt16, rateKbit: UInt64, ceilKbit: UInt64, priority: UInt8)
    case changeGroup(interface: String, major: UInt16, rateKbit: UInt64, ceilKbit: UInt64, priority: UInt8)
    case deleteGroup(interface: String, major: UInt16)
    /// Leaf class `G:N` of one lease.
    case addLeaf(interface: String, classid: UInt32, rateKbit: UInt64, ceilKbit: UInt64, priority: UInt8)
    case changeLeaf(interface: String, classid: UInt32, rateKbit: UInt64, ceilKbit: UInt64, priority: UInt8)
    case deleteLeaf(interface: String, classid: UInt32)
}

/// The kernel changes for one enforcement point, in the order they must be applied:
/// `flushMarksBefore` (conntrack), `tcBefore` (classes that must exist before packets are
/// classified into them), `nft` (ONE atomic transaction), `flushMarksAfter`, `flushUnsteered`
/// (conntrack), `tcAfter` (classes no element points to any more).
public struct PointPlan: Sendable, Equatable {
    public var point: String
    public var flushMarksBefore: [UInt32] = []
    public var tcBefore: [TCChange] = []
    public var nft: [NFTChange] = []
    public var flushMarksAfter: [UInt32] = []
    /// The flushes as blocks of marks (`MarkBlocks`): one conntrack walk each.
    public var flushBlocksBefore: [MarkBlocks.Block] = []
    public var flushBlocksAfter: [MarkBlocks.Block] = []
    public var flushUnsteered: [Classifier] = []
    public var tcAfter: [TCChange] = []
    /// The state for the planned scope once the plan is applied.
    public var result: KernelState

    public init(point: String, result: KernelState) { self.point = point; self.result = result }

    public var isEmpty: Bool {
        flushMarksBefore.isEmpty && tcBefore.isEmpty && nft.isEmpty && flushMarksAfter.isEmpty
            && flushUnsteered.isEmpty && tcAfter.isEmpty
    }
}

/// Reconcile, don't patch: builds the desired state of a scope from the lease table and diffs it
/// against what is applied. Pure and deterministic (output sorted), so unit tests pin it.
public struct Planner: Sendable {
    /// Extra kernel life of a draining lease's state past its drain end (see `Lease.kernelDeadline`).
    public var drainGraceNs: UInt64
    /// How much earlier than the lease deadline an element may expire and still count as right
    /// (kernel read-back has jiffy/ms granularity, and a dump takes time).
    public var earlyToleranceNs: UInt64
    /// How much later: kept small, an element must never outlive its lease by more.
    public var lateToleranceNs: UInt64

    public init(drainGraceNs: UInt64 = 250_000_000, earlyToleranceNs: UInt64 = 0, lateToleranceNs: UInt64 = 0) {
        self.drainGraceNs = drainGraceNs
        self.earlyToleranceNs = earlyToleranceNs
        self.lateToleranceNs = lateToleranceNs
    }

    /// The desired state of `scope` at `point`.
    public func desired(point: String, scope: Scope, table: LeaseTable, capacityKbit: UInt64) -> KernelState {
        var d = KernelState()
        guard let idx = table.index(point) else { return d }
        for c in scope.classifiers {
            if let owner = table.steeringOwner(point: point, classifier: c) {
                d.steering[c] = .init(mark: owner.mark, deadline: owner.kernelDeadline(drainGraceNs: drainGraceNs))
            }
        }
        for m in scope.marks {
            guard let id = idx.byMark[m], let l = table[id] else { continue }
            let kd = l.kernelDeadline(drainGraceNs: drainGraceNs)
            d.anchors[m] = .init(address: l.request.anchor.address, port: l.request.anchor.port, deadline: kd)
            d.qos[m] = .init(classid: l.qosClass.classid, deadline: kd)
        }
        for name in scope.interfaces where (idx.leasesPerInterface[name] ?? 0) > 0 {
            d.interfaces[name] = .init(capacityKbit: capacityKbit)
        }
        for g in scope.groups {
            guard let info = idx.groups[g] else { continue }
            d.interfaces[g.interface, default: .init(capacityKbit: capacityKbit)].groups[g.major] =
                .init(rateKbit: info.rateKbit, priority: info.priority)
        }
        for ref in scope.leaves {
            guard let id = idx.byClass[ref], let l = table[id] else { continue }
            let q = l.request.qos
            d.interfaces[ref.interface, default: .init(capacityKbit: capacityKbit)].leaves[ref.classid] =
                .init(rateKbit: q.rateKbit, ceilKbit: q.ceilKbit, priority: q.priority, owner: l.mark)
        }
        return d
    }

    /// Whether an element with deadline `have` serves a lease whose deadline is `want`.
    func sameDeadline(_ have: BootInstant, _ want: BootInstant) -> Bool {
        have <= want ? want.nanoseconds - have.nanoseconds <= earlyToleranceNs
                     : have.nanoseconds - want.nanoseconds <= lateToleranceNs
    }

    /// The changes that make `scope` of `applied` equal to the desired state.
    public func plan(point: String, scope: Scope, table: LeaseTable, applied: KernelState, capacityKbit: UInt64) -> PointPlan {
        let want = desired(point: point, scope: scope, table: table, capacityKbit: capacityKbit)
        var plan = PointPlan(point: point, result: want)

        // nftables elements.
        for c in scope.classifiers.sorted(by: Planner.classifierOrder) {
            let have = applied.steering[c], need = want.steering[c]
            if let have, let need, have.mark == need.mark, sameDeadline(have.deadline, need.deadline) {
                plan.result.steering[c] = have
                continue
            }
            if let have { plan.nft.append(.deleteSteer(c, mark: have.mark)) }
            if let need {
                plan.nft.append(.addSteer(c, mark: need.mark, deadline: need.deadline))
                if have == nil { plan.flushUnsteered.append(c) }
            }
        }
        // Marks the applied steering of the scope's classifiers still points at: a lease whose
        // steering element goes away in this very transaction (expiry, revoke).
        let steeredMarks = Set(scope.classifiers.compactMap { applied.steering[$0]?.mark })
        for m in scope.marks.sorted() {
            let haveA = applied.anchors[m], needA = want.anchors[m]
            if let haveA, let needA, haveA.address == needA.address, haveA.port == needA.port,
               sameDeadline(haveA.deadline, needA.deadline) {
                plan.result.anchors[m] = haveA
            } else {
                if let haveA { plan.nft.append(.deleteAnchor(mark: m, address: haveA.address, port: haveA.port)) }
                if let needA { plan.nft.append(.addAnchor(mark: m, address: needA.address, port: needA.port, deadline: needA.deadline)) }
            }
            let haveQ = applied.qos[m], needQ = want.qos[m]
            if let haveQ, let needQ, haveQ.classid == needQ.classid, sameDeadline(haveQ.deadline, needQ.deadline) {
                plan.result.qos[m] = haveQ
            } else {
                if let haveQ { plan.nft.append(.deleteQoS(mark: m, classid: haveQ.classid)) }
                if let needQ { plan.nft.append(.addQoS(mark: m, classid: needQ.classid, deadline: needQ.deadline)) }
            }
            // A mark whose lease is gone: cut its flows (conntrack) after the transaction that
            // removes its elements (until then the gate drops their packets). A drained lease,
            // whose classifier already steers to its successor, is also cut *before* it: its
            // connectionless flows then re-classify onto the successor while the old elements
            // still exist, so they move without losing a packet. Each flush walks the kernel's
            // whole conntrack table; expiries and revokes need only the one after.
            if needA == nil && needQ == nil && (haveA != nil || haveQ != nil) {
                if !steeredMarks.contains(m) { plan.flushMarksBefore.append(m) }
                plan.flushMarksAfter.append(m)
            }
        }

        // tc: skeletons, groups, leaves.
        for name in scope.interfaces.sorted() {
            let have = applied.interfaces[name], need = want.interfaces[name]
            if need != nil && have == nil {
                plan.tcBefore.append(.addSkeleton(interface: name, capacityKbit: capacityKbit))
            } else if let have, need != nil, have.capacityKbit != capacityKbit {
                plan.tcBefore.append(.setCapacity(interface: name, capacityKbit: capacityKbit))
            }
        }
        for g in scope.groups.sorted(by: { ($0.interface, $0.major) < ($1.interface, $1.major) }) {
            let have = applied.interfaces[g.interface]?.groups[g.major]
            let need = want.interfaces[g.interface]?.groups[g.major]
            switch (have, need) {
            case (nil, let n?):
                plan.tcBefore.append(.addGroup(interface: g.interface, major: g.major, rateKbit: n.rateKbit, ceilKbit: capacityKbit, priority: n.priority))
            case (let h?, let n?) where h != n:
                let change = TCChange.changeGroup(interface: g.interface, major: g.major, rateKbit: n.rateKbit, ceilKbit: capacityKbit, priority: n.priority)
                if n.rateKbit >= h.rateKbit { plan.tcBefore.append(change) } else { plan.tcAfter.append(change) }
            case (_?, nil):
                plan.tcAfter.append(.deleteGroup(interface: g.interface, major: g.major))
            default:
                break
            }
        }
        var leafDeletes: [TCChange] = []
        for ref in scope.leaves.sorted(by: { ($0.interface, $0.classid) < ($1.interface, $1.classid) }) {
            let have = applied.interfaces[ref.interface]?.leaves[ref.classid]
            let need = want.interfaces[ref.interface]?.leaves[ref.classid]
            switch (have, need) {
            case (nil, let n?):
                plan.tcBefore.append(.addLeaf(interface: ref.interface, classid: ref.classid, rateKbit: n.rateKbit, ceilKbit: n.ceilKbit, priority: n.priority))
            case (let h?, let n?):
                if h.owner != n.owner && h.owner != 0 {
                    // The class id passed to another lease: a fresh class, not the old queue.
                    plan.tcBefore.append(.deleteLeaf(interface: ref.interface, classid: ref.classid))
                    plan.tcBefore.append(.addLeaf(interface: ref.interface, classid: ref.classid, rateKbit: n.rateKbit, ceilKbit: n.ceilKbit, priority: n.priority))
                } else if h.rateKbit != n.rateKbit || h.ceilKbit != n.ceilKbit || h.priority != n.priority {
                    plan.tcBefore.append(.changeLeaf(interface: ref.interface, classid: ref.classid, rateKbit: n.rateKbit, ceilKbit: n.ceilKbit, priority: n.priority))
                }
            case (_?, nil):
                leafDeletes.append(.deleteLeaf(interface: ref.interface, classid: ref.classid))
            default:
                break
            }
        }
        // Leaves go before their groups, groups before skeletons.
        plan.tcAfter = leafDeletes + plan.tcAfter
        for name in scope.interfaces.sorted() where applied.interfaces[name] != nil && want.interfaces[name] == nil {
            plan.tcAfter.append(.removeSkeleton(interface: name))
        }
        // Group additions must precede leaf additions inside tcBefore, skeletons first.
        plan.tcBefore.sort { Planner.tcOrder($0) < Planner.tcOrder($1) }
        // Conntrack flushes by block: a block may span marks no live lease holds here.
        let byMark = table.points[point]?.byMark
        let free = { (m: UInt32) in byMark?[m] == nil }
        plan.flushBlocksBefore = MarkBlocks.cover(plan.flushMarksBefore, free: free)
        plan.flushBlocksAfter = MarkBlocks.cover(plan.flushMarksAfter, free: free)
        return plan
    }

    static func tcOrder(_ c: TCChange) -> Int {
        switch c {
        case .addSkeleton, .setCapacity: return 0
        case .addGroup, .changeGroup: return 1
        case .deleteLeaf: return 2
        case .addLeaf, .changeLeaf: return 3
        case .deleteGroup, .removeSkeleton: return 4
        }
    }

    static func classifierOrder(_ a: Classifier, _ b: Classifier) -> Bool {
        if a.client != b.client { return a.client < b.client }
        if a.service != b.service { return a.service < b.service }
        if a.proto != b.proto { return a.proto.number < b.proto.number }
        return a.port < b.port
    }
}

extension KernelState {
    /// Replaces the keys of `scope` with their values in `result` (after a plan was applied).
    public mutating func merge(scope: Scope, result: KernelState) {
        for c in scope.classifiers { steering[c] = result.steering[c] }
        for m in scope.marks {
            anchors[m] = result.anchors[m]
            qos[m] = result.qos[m]
        }
        for name in scope.interfaces {
            if let r = result.interfaces[name] {
                var i = interfaces[name] ?? Interface(capacityKbit: r.capacityKbit)
                i.capacityKbit = r.capacityKbit
                interfaces[name] = i
            } else {
                interfaces[name] = nil
            }
        }
        for g in scope.groups {
            if let grp = result.interfaces[g.interface]?.groups[g.major] {
                interfaces[g.interface, default: Interface(capacityKbit: 0)].groups[g.major] = grp
            } else {
                interfaces[g.interface]?.groups[g.major] = nil
            }
        }
        for ref in scope.leaves {
            if let leaf = result.interfaces[ref.interface]?.leaves[ref.classid] {
                interfaces[ref.interface, default: Interface(capacityKbit: 0)].leaves[ref.classid] = leaf
            } else {
                interfaces[ref.interface]?.leaves[ref.classid] = nil
            }
        }
    }
}

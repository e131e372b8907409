@testable import AIPagingKernel
#if canImport(Glibc)
import Glibc
#endif

/// A test driver for the two-level HTB layout (the agent itself allocates classes in the pure core,
/// `LeaseTable`, and applies them through the planner): the kernel tests and benchmarks use it to
/// build group/leaf layouts directly with `TrafficControl`.
///
/// Bookkeeping of the two-level layout on one interface: which group holds which lease, which
/// leaf ids are free, each group's rate (the sum of its leaves). Pure value type: it touches no
/// kernel state; it returns the `TCOperation`s to hand to `TrafficControl.perform(ifindex:_:)`.
///
/// Groups are per priority (a group's class carries the prio of its leaves) and hold at most
/// `groupCapacity` leaves `G:2 … G:(groupCapacity+1)`, so adding a leaf makes the kernel walk at
/// most that many classes. A new lease goes to the lowest-numbered group of its prio that has
/// room; a group is created (lowest free number ≥ 0x100) when none has, and deleted with its
/// last leaf.
public struct HTBLayout: Sendable {
    /// Leaves per group (default 256).
    public let groupCapacity: Int
    /// Capacity of the enforcement point in kbit/s: ceil of every group, rate/ceil of `G:1`.
    public private(set) var capacityKbit: UInt64

    struct Group: Sendable, Hashable {
        var prio: UInt8
        var rateKbit: UInt64
        var leaves: [UInt16: HTBClassParameters]
        var freeMinors: [UInt16]  // stack, lowest on top
    }

    private(set) var groups: [UInt16: Group] = [:]
    /// Per prio, groups with a free slot.
    private var open: [Set<UInt16>] = Array(repeating: [], count: 8)
    private var freeGroups: [UInt16] = []  // released numbers, sorted descending (lowest at the end)
    private var nextGroup: UInt16 = AIPagingHTB.groupRange.lowerBound

    public init(capacityKbit: UInt64, groupCapacity: Int = 256) {
        precondition(groupCapacity >= 1 && groupCapacity <= 0xfffd, "groupCapacity must be 1…65533")
        self.groupCapacity = groupCapacity
        self.capacityKbit = capacityKbit
    }

    /// Number of leases (leaves) in the layout.
    public var leaseCount: Int { groups.values.reduce(0) { $0 + $1.leaves.count } }
    /// Number of groups.
    public var groupCount: Int { groups.count }
    /// No lease: the interface should carry no aipaging root (`TrafficControl.removeSkeleton`).
    public var isEmpty: Bool { groups.isEmpty }

    /// The parameters of leaf `leaf`, if it is in the layout.
    public func parameters(of leaf: TCHandle) -> HTBClassParameters? { groups[leaf.major]?.leaves[leaf.minor] }

    /// The group numbers in use with their prio and rate (sum of their leaves' rates).
    public var groupSummary: [(group: UInt16, prio: UInt8, rateKbit: UInt64, leaves: Int)] {
        groups.keys.sorted().map { g in (g, groups[g]!.prio, groups[g]!.rateKbit, groups[g]!.leaves.count) }
    }

    /// Places a new lease: returns its leaf id `G:N` (the value nftables must write into
    /// skb->priority) and the operations: `[addGroup, addLeaf]` for a new group, otherwise
    /// `[addLeaf, changeGroup]` (group rate += lease rate).
    /// - Throws: `KernelError` EINVAL for invalid parameters, ENOSPC when every group number is used.
    public mutating func add(_ p: HTBClassParameters) throws(KernelError) -> (leaf: TCHandle, operations: [TCOperation]) {
        try TrafficControl.validate(rate: p.rateKbit, ceil: p.ceilKbit, prio: p.prio, what: "lease")
        if let g = open[Int(p.prio)].min() {
            var group = groups[g]!
            let minor = group.freeMinors.removeLast()
            group.leaves[minor] = p
            group.rateKbit += p.rateKbit
            if group.freeMinors.isEmpty { open[Int(p.prio)].remove(g) }
            groups[g] = group
            let leaf = TCHandle(major: g, minor: minor)
            return (leaf, [.addLeaf(leaf, p), .changeGroup(group: g, prio: p.prio, rateKbit: group.rateKbit, capacityKbit: capacityKbit)])
        }
        let g = try allocateGroup()
        var group = Group(prio: p.prio, rateKbit: p.rateKbit, leaves: [:],
                          freeMinors: (2...UInt16(groupCapacity + 1)).reversed())
        let minor = group.freeMinors.removeLast()
        group.leaves[minor] = p
        groups[g] = group
        if !group.freeMinors.isEmpty { open[Int(p.prio)].insert(g) }
        let leaf = TCHandle(major: g, minor: minor)
        return (leaf, [.addGroup(group: g, prio: p.prio, rateKbit: p.rateKbit, capacityKbit: capacityKbit), .addLeaf(leaf, p)])
    }

    /// Changes a lease's rate/ceil in place (`[changeLeaf, changeGroup]`, queued packets kept).
    /// A different prio needs another group: the lease moves to a new leaf id (returned), and
    /// the operations add the new leaf before deleting the old one (the old queue is dropped;
    /// steer the flow to the new id between the two, or accept the loss).
    public mutating func change(_ leaf: TCHandle, to p: HTBClassParameters) throws(KernelError) -> (leaf: TCHandle, operations: [TCOperation]) {
        guard let old = parameters(of: leaf) else {
            throw KernelError("HTBLayout.change", errno: ENOENT, detail: "leaf \(leaf) is not in the layout")
        }
        try TrafficControl.validate(rate: p.rateKbit, ceil: p.ceilKbit, prio: p.prio, what: "lease \(leaf)")
        if p.prio == old.prio {
            var group = groups[leaf.major]!
            group.leaves[leaf.minor] = p
            group.rateKbit = group.rateKbit - old.rateKbit + p.rateKbit
            groups[leaf.major] = group
            var ops: [TCOperation] = [.changeLeaf(leaf, p)]
            if p.rateKbit != old.rateKbit {
                ops.append(.changeGroup(group: leaf.major, prio: p.prio, rateKbit: group.rateKbit, capacityKbit: capacityKbit))
            }
            return (leaf, ops)
        }
        let (newLeaf, addOps) = try add(p)
        let removeOps = try remove(leaf)
        return (newLeaf, addOps + removeOps)
    }

    /// Removes a lease: `[deleteLeaf, changeGroup]`, or `[deleteGroup]` for a group's last leaf.
    public mutating func remove(_ leaf: TCHandle) throws(KernelError) -> [TCOperation] {
        guard var group = groups[leaf.major], let p = group.leaves.removeValue(forKey: leaf.minor) else {
            throw KernelError("HTBLayout.remove", errno: ENOENT, detail: "leaf \(leaf) is not in the layout")
        }
        if group.leaves.isEmpty {
            groups[leaf.major] = nil
            open[Int(group.prio)].remove(leaf.major)
            releaseGroup(leaf.major)
            return [.deleteGroup(group: leaf.major)]
        }
        group.rateKbit -= p.rateKbit
        group.freeMinors.append(leaf.minor)
        group.freeMinors.sort(by: >)
        groups[leaf.major] = group
        open[Int(group.prio)].insert(leaf.major)
        return [.deleteLeaf(leaf), .changeGroup(group: leaf.major, prio: group.prio, rateKbit: group.rateKbit, capacityKbit: capacityKbit)]
    }

    /// New capacity: every group's class `a1:G` (ceil) and `G:1` (rate = ceil) follow.
    /// Call `TrafficControl.ensureSkeleton` with the same capacity for `a1:1` and `a1:2`.
    public mutating func setCapacity(_ kbit: UInt64) -> [TCOperation] {
        capacityKbit = kbit
        return groups.keys.sorted().flatMap { g -> [TCOperation] in
            let group = groups[g]!
            return [.changeGroup(group: g, prio: group.prio, rateKbit: group.rateKbit, capacityKbit: kbit),
                    .changeGroupCapacity(group: g, capacityKbit: kbit)]
        }
    }

    private mutating func allocateGroup() throws(KernelError) -> UInt16 {
        if let g = freeGroups.popLast() { return g }
        guard nextGroup <= AIPagingHTB.groupRange.upperBound else {
            throw KernelError("HTBLayout.add", errno: ENOSPC,
                              detail: "all \(AIPagingHTB.groupRange.count) group numbers are in use; raise groupCapacity")
        }
        defer { nextGroup += 1 }
        return nextGroup
    }

    private mutating func releaseGroup(_ g: UInt16) {
        freeGroups.append(g)
        freeGroups.sort(by: >)
    }
}

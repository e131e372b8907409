import AIPagingCore

/// A fake kernel for tests of the lease service and the control API: it applies plans to a
/// `KernelState` in memory, can be told to fail the next apply, and resolves anchor routes from
/// a table. Expired elements disappear when `now` passes their deadline, like kernel timeouts.
public final class InMemoryBackend: EnforcementBackend {
    public let location: String
    public private(set) var state = KernelState()
    public var routes: [IPAddress.Family: String] = [.ipv4: "veth-anchor", .ipv6: "veth-anchor"]
    public var unroutable: Set<IPAddress> = []
    /// Fail the next `apply` after this many of its steps (nil: never).
    public var failNextApplyAfterSteps: Int?
    /// Fail every `apply` whose plan matches, after `failAfterSteps` steps (a kernel that keeps
    /// refusing one lease's state).
    public var failWhen: (@Sendable (PointPlan) -> Bool)?
    public var failAfterSteps = 0
    /// Called at the start of every `apply` (a test's slow kernel advances its clock here).
    public var onApply: (@Sendable (PointPlan) -> Void)?
    public private(set) var appliedPlans: [PointPlan] = []
    public private(set) var flushedMarks: [UInt32] = []
    public var clock: @Sendable () -> BootInstant

    public init(location: String = "fake", clock: @escaping @Sendable () -> BootInstant) {
        self.location = location
        self.clock = clock
    }

    public func prepare() throws(EnforcementError) {}

    public func interface(toward address: IPAddress) throws(EnforcementError) -> String {
        if unroutable.contains(address) {
            throw EnforcementError(.noRouteToAnchor, "no route to \(address) in \(location)")
        }
        return routes[address.family] ?? "eth0"
    }

    public func apply(_ plan: PointPlan) throws(EnforcementError) {
        onApply?(plan)
        expire()
        var steps = 0
        let persistent = failWhen?(plan) == true
        func step() throws(EnforcementError) {
            if let limit = failNextApplyAfterSteps, steps >= limit {
                failNextApplyAfterSteps = nil
                throw EnforcementError(.enforcementFailed, "injected failure after \(steps) steps")
            }
            if persistent && steps >= failAfterSteps {
                throw EnforcementError(.enforcementFailed, "injected failure after \(steps) steps")
            }
            steps += 1
        }
        flushedMarks += plan.flushMarksBefore
        for c in plan.tcBefore { try step(); applyTC(c) }
        try step()
        // nftables: all or nothing.
        var next = state
        for c in plan.nft {
            switch c {
            case .addSteer(let cl, let mark, let d):
                guard next.steering[cl] == nil else { throw EnforcementError(.enforcementFailed, "EEXIST steering \(cl)") }
                next.steering[cl] = .init(mark: mark, deadline: d)
            case .deleteSteer(let cl, _):
                guard next.steering.removeValue(forKey: cl) != nil else { throw EnforcementError(.enforcementFailed, "ENOENT steering \(cl)") }
            case .addAnchor(let m, let a, let p, let d):
                guard next.anchors[m] == nil else { throw EnforcementError(.enforcementFailed, "EEXIST anchor \(m)") }
                next.anchors[m] = .init(address: a, port: p, deadline: d)
            case .deleteAnchor(let m, _, _):
                guard next.anchors.removeValue(forKey: m) != nil else { throw EnforcementError(.enforcementFailed, "ENOENT anchor \(m)") }
            case .addQoS(let m, let cid, let d):
                guard next.qos[m] == nil else { throw EnforcementError(.enforcementFailed, "EEXIST qos \(m)") }
                next.qos[m] = .init(classid: cid, deadline: d)
            case .deleteQoS(let m, _):
                guard next.qos.removeValue(forKey: m) != nil else { throw EnforcementError(.enforcementFailed, "ENOENT qos \(m)") }
            }
        }
        state.steering = next.steering
        state.anchors = next.anchors
        state.qos = next.qos
        flushedMarks += plan.flushMarksAfter
        for c in plan.tcAfter { try step(); applyTC(c) }
        appliedPlans.append(plan)
    }

    private func applyTC(_ c: TCChange) {
        switch c {
        case .addSkeleton(let i, let cap): state.interfaces[i] = .init(capacityKbit: cap)
        case .setCapacity(let i, let cap): state.interfaces[i]?.capacityKbit = cap
        case .removeSkeleton(let i): state.interfaces[i] = nil
        case .addGroup(let i, let major, let rate, _, let prio), .changeGroup(let i, let major, let rate, _, let prio):
            state.interfaces[i]?.groups[major] = .init(rateKbit: rate, priority: prio)
        case .deleteGroup(let i, let major):
            state.interfaces[i]?.groups[major] = nil
            if let leaves = state.interfaces[i]?.leaves {
                state.interfaces[i]?.leaves = leaves.filter { $0.key >> 16 != UInt32(major) }
            }
        case .addLeaf(let i, let cid, let rate, let ceil, let prio), .changeLeaf(let i, let cid, let rate, let ceil, let prio):
            state.interfaces[i]?.leaves[cid] = .init(rateKbit: rate, ceilKbit: ceil, priority: prio, owner: 0)
        case .deleteLeaf(let i, let cid):
            state.interfaces[i]?.leaves[cid] = nil
        }
    }

    /// Drops elements whose deadline passed (the kernel's timeouts).
    public func expire() {
        let now = clock()
        state.steering = state.steering.filter { $0.value.deadline > now }
        state.anchors = state.anchors.filter { $0.value.deadline > now }
        state.qos = state.qos.filter { $0.value.deadline > now }
    }

    public func observe() throws(EnforcementError) -> KernelState {
        expire()
        return state
    }

    public func removeAll() throws(EnforcementError) { state = KernelState() }

    public func counters() throws(EnforcementError) -> [UInt32: FlowCounters] {
        Dictionary(uniqueKeysWithValues: state.qos.keys.map { ($0, FlowCounters()) })
    }

    public private(set) var maintenanceRuns = 0
    public func maintenance() { maintenanceRuns += 1 }

    /// Test hook: alter the "kernel" behind the agent's back.
    public func tamper(_ body: (inout KernelState) -> Void) { body(&state) }
}

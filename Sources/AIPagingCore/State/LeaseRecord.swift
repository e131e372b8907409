/// An HTB leaf class allocated to a lease: `major:minor` inside the group qdisc `major:` on
/// interface `interface` of its enforcement point (layout in docs/design.md).
public struct QoSClassRef: Hashable, Sendable, CustomStringConvertible {
    public var interface: String
    public var major: UInt16
    public var minor: UInt16

    public init(interface: String, major: UInt16, minor: UInt16) {
        self.interface = interface
        self.major = major
        self.minor = minor
    }

    /// The tc classid (`major << 16 | minor`), also the value nftables puts in skb->priority.
    public var classid: UInt32 { UInt32(major) << 16 | UInt32(minor) }
    public var group: GroupRef { GroupRef(interface: interface, major: major) }
    public var description: String { "\(String(major, radix: 16)):\(String(minor, radix: 16))" }
}

/// A group class `a1:major` with its child qdisc `major:` on one interface.
public struct GroupRef: Hashable, Sendable {
    public var interface: String
    public var major: UInt16
    public init(interface: String, major: UInt16) { self.interface = interface; self.major = major }
}

/// A lease the agent holds: the controller's request plus what the agent decided for it.
public struct Lease: Sendable, Equatable {
    // (Stored fields ordered so the narrow ones fill the padding after wider ones: the lease
    // table holds one `Lease` per live lease.)
    public var request: CommitRequest
    /// Name of the enforcement point whose namespace holds its state.
    public var enforcementPoint: String
    public var admittedAt: ClockReading
    /// When it was last renewed (equals admittedAt until then).
    public var renewedAt: ClockReading
    /// When the lease ends on the boot clock (kernel timeouts and the agent's timer use this).
    public var deadline: BootInstant
    /// The same deadline on the wall clock (what the journal keeps and the API shows).
    public var expiresAt: WallTime
    /// Its HTB class.
    public var qosClass: QoSClassRef
    /// The conntrack mark identifying its flows (0xa1000000 | slot).
    public var mark: UInt32
    /// For a draining lease: when the drain ends and the lease is released.
    public var drainEndsAt: BootInstant? {
        get { ending?.value.drainEndsAt }
        set { ending.modify(empty: Ending()) { $0.drainEndsAt = newValue } }
    }
    /// For a draining lease: the lease that replaced it.
    public var replacedBy: LeaseID? {
        get { ending?.value.replacedBy }
        set { ending.modify(empty: Ending()) { $0.replacedBy = newValue } }
    }
    /// When steering switched to this lease (relocation) or was installed.
    public var switchedAt: BootInstant?
    public var state: LeaseState
    /// When the lease ended (released, expired, revoked).
    public var endedAt: ClockReading? {
        get { ending?.value.endedAt }
        set { ending.modify(empty: Ending()) { $0.endedAt = newValue } }
    }
    /// `drainEndsAt`, `replacedBy` and `endedAt`, out of line: only a draining or ended lease
    /// has them, and the lease table holds one `Lease` per live lease.
    private var ending: OutOfLine<Ending>?
    private struct Ending: Equatable, Sendable {
        var drainEndsAt: BootInstant?
        var replacedBy: LeaseID?
        var endedAt: ClockReading?
    }

    public var id: LeaseID { request.leaseID }
    public var aisi: AISI { request.aisi }
    public var classifier: Classifier { request.classifier }

    public init(request: CommitRequest, state: LeaseState, enforcementPoint: String, admittedAt: ClockReading,
                deadline: BootInstant, expiresAt: WallTime, mark: UInt32, qosClass: QoSClassRef) {
        self.request = request
        self.state = state
        self.enforcementPoint = enforcementPoint
        self.admittedAt = admittedAt
        self.renewedAt = admittedAt
        self.deadline = deadline
        self.expiresAt = expiresAt
        self.mark = mark
        self.qosClass = qosClass
    }

    /// Whether this lease owns the steering of its classifier (new flows go to its anchor).
    public var ownsSteering: Bool { state == .admitted || state == .active }

    /// When its kernel state must be gone at the latest: the lease deadline, or for a draining
    /// lease the drain end plus `grace` (the agent ends the drain itself at drain end, moving
    /// connectionless flows first; the grace keeps the kernel from cutting them a moment early).
    public func kernelDeadline(drainGraceNs: UInt64) -> BootInstant {
        if state == .draining, let end = drainEndsAt {
            return min(deadline, end.adding(nanoseconds: drainGraceNs))
        }
        return deadline
    }

    /// The next instant the agent must act on: the drain end or the deadline.
    public var nextDeadline: BootInstant {
        if state == .draining, let end = drainEndsAt { return min(end, deadline) }
        return deadline
    }
}

import AIPagingCore
import AIPagingKernel

/// Why the kernel could not be made to match a plan.
public struct EnforcementError: Error, Sendable, CustomStringConvertible {
    public var cause: RejectCause
    public var message: String
    public init(_ cause: RejectCause = .enforcementFailed, _ message: String) {
        self.cause = cause
        self.message = message
    }
    public var description: String { "\(cause.rawValue): \(message)" }
}

/// The kernel of one enforcement point, as the lease service sees it: a small protocol the real
/// netlink adapter and the in-memory fake both implement. Not thread-safe: the lease service
/// owns each backend and calls it from its own executor only.
public protocol EnforcementBackend: AnyObject {
    /// Human name of where the state lives (the namespace).
    var location: String { get }

    /// Creates the agent's nftables table if it is missing or has the wrong schema (keeping any
    /// elements it holds), before the first reconcile.
    func prepare() throws(EnforcementError)

    /// The interface of the enforcement point whose route leads to `address` (`ip route get`).
    func interface(toward address: IPAddress) throws(EnforcementError) -> String

    /// Applies a plan in its order: conntrack flushes, tc before, ONE nftables transaction,
    /// conntrack, tc after. Element timeouts are the deadlines minus the boot clock at sending.
    /// On error, some steps may have been applied: the caller resyncs from `observe()`.
    func apply(_ plan: PointPlan) throws(EnforcementError)

    /// What the kernel holds now: the table's elements and the HTB classes of ours.
    func observe() throws(EnforcementError) -> KernelState

    /// Removes everything of the agent's from the kernel (the table, our qdiscs).
    func removeAll() throws(EnforcementError)

    /// Per-lease packet and byte counters of the qos elements, keyed by mark (original, reply).
    func counters() throws(EnforcementError) -> [UInt32: FlowCounters]

    /// Deferred, coalesced kernel housekeeping (called about once a second): removes conntrack
    /// entries of flows that began before their lease existed (so they re-classify), retries
    /// conntrack flushes that failed. Never required for the invariants.
    func maintenance()

    /// Starts watching the point's kernel for changes made by anyone but this backend (drift):
    /// `onChange` gets a report, on another thread, shortly after someone else alters or deletes
    /// the agent's state or adds to it. Nil when nobody else can change the state (the in-memory
    /// fake). The caller stops the monitor.
    func watchForeignChanges(_ onChange: @escaping @Sendable (KernelChangeMonitor.Report) -> Void) throws(EnforcementError) -> KernelChangeMonitor?
}

extension EnforcementBackend {
    public func watchForeignChanges(_ onChange: @escaping @Sendable (KernelChangeMonitor.Report) -> Void) throws(EnforcementError) -> KernelChangeMonitor? {
        nil
    }
}

/// Packets and bytes of one lease's flows in both directions, from the qos element counters.
public struct FlowCounters: Sendable, Equatable {
    public var originalPackets: UInt64 = 0
    public var originalBytes: UInt64 = 0
    public var replyPackets: UInt64 = 0
    public var replyBytes: UInt64 = 0
    public init() {}

    public static func += (a: inout FlowCounters, b: FlowCounters) {
        a.originalPackets += b.originalPackets
        a.originalBytes += b.originalBytes
        a.replyPackets += b.replyPackets
        a.replyBytes += b.replyBytes
    }

    /// Per lease mark, from one dump of the `qos` map (one element per mark and direction).
    public static func byMark(_ elements: [NFTQoSElement]) -> [UInt32: FlowCounters] {
        var out: [UInt32: FlowCounters] = [:]
        for e in elements {
            if e.direction == .original {
                out[e.mark, default: FlowCounters()].originalPackets = e.packets
                out[e.mark, default: FlowCounters()].originalBytes = e.bytes
            } else {
                out[e.mark, default: FlowCounters()].replyPackets = e.packets
                out[e.mark, default: FlowCounters()].replyBytes = e.bytes
            }
        }
        return out
    }
}

/// A tc handle or class id `major:minor` (both 16-bit, printed in hex like `tc` does).
public struct TCHandle: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var major: UInt16
    public var minor: UInt16

    public init(major: UInt16, minor: UInt16) {
        self.major = major
        self.minor = minor
    }

    /// From the kernel's 32-bit form (`TC_H_MAKE(major << 16, minor)`).
    public init(rawValue: UInt32) {
        major = UInt16(truncatingIfNeeded: rawValue >> 16)
        minor = UInt16(truncatingIfNeeded: rawValue)
    }

    /// The kernel's 32-bit form, also the value nftables writes with `meta priority set`.
    public var rawValue: UInt32 { UInt32(major) << 16 | UInt32(minor) }

    /// `TC_H_ROOT` (ffff:ffff), the parent of a root qdisc.
    public static let root = TCHandle(rawValue: 0xffff_ffff)
    /// `TC_H_UNSPEC` (0:0).
    public static let unspecified = TCHandle(rawValue: 0)

    /// `"a1:2"`; a qdisc handle (minor 0) prints as `"a1:"`, `TC_H_ROOT` as `"root"`, like tc.
    public var description: String {
        if self == .root { return "root" }
        if minor == 0 { return String(major, radix: 16) + ":" }
        return String(major, radix: 16) + ":" + String(minor, radix: 16)
    }

    public static func < (a: TCHandle, b: TCHandle) -> Bool { a.rawValue < b.rawValue }
}

/// The fixed aipaging HTB layout on an interface (see `TrafficControl`).
public enum AIPagingHTB {
    /// Handle major of the root qdisc: `a1:`. A root `htb` with this handle is "ours".
    public static let rootMajor: UInt16 = 0xa1
    /// The root qdisc `a1:`.
    public static let rootQdisc = TCHandle(major: rootMajor, minor: 0)
    /// `a1:1`, rate = ceil = capacity; parent of the groups and of best effort.
    public static let aggregateClass = TCHandle(major: rootMajor, minor: 1)
    /// `a1:2`, the root qdisc's default class for packets that belong to no lease.
    public static let bestEffortClass = TCHandle(major: rootMajor, minor: 2)
    /// Group numbers (`a1:G`, inner qdisc `G:`) the eBPF filter maps priorities to.
    public static let groupRange: ClosedRange<UInt16> = 0x100...0xfff0
    /// Prio of the best-effort class (lowest HTB priority).
    public static let bestEffortPrio: UInt8 = 7
    /// `pref` of the root eBPF filter.
    public static let filterPreference: UInt16 = 1
    /// Handle of the root eBPF filter.
    public static let filterHandle: UInt32 = 1
    /// Name of the eBPF program (what `tc filter show` prints).
    public static let filterProgramName = "aip_prio2grp"

    /// `a1:G`: the group's class in the root qdisc.
    public static func groupClass(_ group: UInt16) -> TCHandle { TCHandle(major: rootMajor, minor: group) }
    /// `G:`: the group's inner qdisc.
    public static func groupQdisc(_ group: UInt16) -> TCHandle { TCHandle(major: group, minor: 0) }
    /// `G:1`: the inner root class that holds the group's leaves.
    public static func groupRootClass(_ group: UInt16) -> TCHandle { TCHandle(major: group, minor: 1) }
}

/// Parameters of an HTB leaf (one lease): rates in kbit/s (1 kbit = 1000 bit/s), prio 0 (highest)
/// through 7.
public struct HTBClassParameters: Hashable, Sendable, CustomStringConvertible {
    public var rateKbit: UInt64
    public var ceilKbit: UInt64
    public var prio: UInt8

    public init(rateKbit: UInt64, ceilKbit: UInt64, prio: UInt8) {
        self.rateKbit = rateKbit
        self.ceilKbit = ceilKbit
        self.prio = prio
    }

    public var description: String { "rate \(rateKbit)kbit ceil \(ceilKbit)kbit prio \(prio)" }
}

/// Packet and byte counters of a qdisc or class (`tc -s`): TCA_STATS2 basic + queue.
public struct TCStatistics: Hashable, Sendable {
    public var bytes: UInt64
    public var packets: UInt64
    public var drops: UInt64
    public var overlimits: UInt64
    public var queueLength: UInt64
    public var backlogBytes: UInt64

    public init(bytes: UInt64 = 0, packets: UInt64 = 0, drops: UInt64 = 0, overlimits: UInt64 = 0,
                queueLength: UInt64 = 0, backlogBytes: UInt64 = 0) {
        self.bytes = bytes
        self.packets = packets
        self.drops = drops
        self.overlimits = overlimits
        self.queueLength = queueLength
        self.backlogBytes = backlogBytes
    }
}

/// A qdisc as dumped by RTM_GETQDISC (`tc -s qdisc show dev IF`).
public struct TCQdiscInfo: Hashable, Sendable {
    public var ifindex: Int32
    public var handle: TCHandle
    public var parent: TCHandle
    public var kind: String
    /// HTB only: the default class (`default 2` on `a1:` is `a1:2`); nil for `default 0`.
    public var htbDefaultClass: TCHandle?
    /// HTB only: r2q.
    public var htbRateToQuantum: UInt32?
    public var statistics: TCStatistics

    /// True for the root `htb` with handle `a1:` that aipaging owns.
    public var isAIPagingRoot: Bool {
        parent == .root && kind == "htb" && handle == AIPagingHTB.rootQdisc
    }
}

/// A class as dumped by RTM_GETTCLASS (`tc -s -d class show dev IF`).
public struct TCClassInfo: Hashable, Sendable {
    public var ifindex: Int32
    public var handle: TCHandle
    public var parent: TCHandle
    public var kind: String
    /// HTB parameters (nil for other kinds).
    public var htb: HTB?
    /// Handle of the qdisc attached under the class (tcm_info), `0:` if none is visible.
    public var leafQdisc: TCHandle
    public var statistics: TCStatistics

    public struct HTB: Hashable, Sendable {
        public var rateKbit: UInt64
        public var ceilKbit: UInt64
        public var prio: UInt8
        public var quantum: UInt32
        /// 0 for a leaf, >0 for an inner class.
        public var level: UInt32
        public var burstBytes: UInt32
        public var cburstBytes: UInt32
    }
}

/// One tc change on an interface, as used by `TrafficControl.perform(ifindex:_:)`.
/// Group number G is in `AIPagingHTB.groupRange`; a leaf is `G:N` with N ≥ 2.
public enum TCOperation: Hashable, Sendable, CustomStringConvertible {
    /// Class `a1:G` (parent `a1:1`, rate, ceil = capacity, prio), qdisc `G:` (htb, parent `a1:G`,
    /// direct_qlen 0: packets steered to a leaf that does not exist are dropped), class `G:1`
    /// (rate = ceil = capacity): three requests.
    case addGroup(group: UInt16, prio: UInt8, rateKbit: UInt64, capacityKbit: UInt64)
    /// Changes class `a1:G` (rate = sum of its leaves, ceil = capacity, prio) in place.
    case changeGroup(group: UInt16, prio: UInt8, rateKbit: UInt64, capacityKbit: UInt64)
    /// Changes class `G:1` to rate = ceil = capacity (after the enforcement point's capacity changed).
    case changeGroupCapacity(group: UInt16, capacityKbit: UInt64)
    /// Deletes class `a1:G`, which destroys qdisc `G:` and every leaf in it.
    case deleteGroup(group: UInt16)
    /// Adds leaf class `G:N` under `G:1`.
    case addLeaf(TCHandle, HTBClassParameters)
    /// Changes leaf `G:N` in place; its queue (and queued packets) stays.
    case changeLeaf(TCHandle, HTBClassParameters)
    /// Deletes leaf `G:N` (its queued packets are dropped).
    case deleteLeaf(TCHandle)

    public var description: String {
        switch self {
        case let .addGroup(g, prio, rate, cap): return "add group \(String(g, radix: 16)) prio \(prio) rate \(rate)kbit capacity \(cap)kbit"
        case let .changeGroup(g, prio, rate, cap): return "change group \(String(g, radix: 16)) prio \(prio) rate \(rate)kbit capacity \(cap)kbit"
        case let .changeGroupCapacity(g, cap): return "change group \(String(g, radix: 16)) capacity \(cap)kbit"
        case let .deleteGroup(g): return "delete group \(String(g, radix: 16))"
        case let .addLeaf(h, p): return "add leaf \(h) \(p)"
        case let .changeLeaf(h, p): return "change leaf \(h) \(p)"
        case let .deleteLeaf(h): return "delete leaf \(h)"
        }
    }
}

/// What `TrafficControl.ensureSkeleton` found and did.
public enum TCSkeletonResult: Hashable, Sendable {
    /// There was no aipaging root: qdisc `a1:`, classes `a1:1`, `a1:2` and the filter were created.
    case created
    /// The root existed; `a1:1`/`a1:2` were updated to the given capacity and a missing filter re-added.
    case updated
}

/// Outcome of `TrafficControl.perform(ifindex:_:)`.
public struct TCBatchResult: Sendable {
    /// One slot per operation, in order: nil = applied.
    public var errors: [KernelError?]
    /// Extended-ACK warnings the kernel attached to successful requests
    /// (e.g. "sch_htb: quantum of class … is big. Consider r2q change."), prefixed by the operation.
    public var warnings: [String]

    /// True when every operation was applied.
    public var succeeded: Bool { errors.allSatisfy { $0 == nil } }
}

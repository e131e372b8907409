/// The enforcement state of one enforcement point, as data: what the agent wants in the kernel
/// (desired, built from the lease table) or what it knows is there (applied / observed).
///
/// nftables: steering elements (classifier -> lease mark), anchor elements (mark -> anchor),
/// qos elements (mark -> HTB classid); each with a deadline that becomes its kernel timeout.
/// tc: per interface, whether the HTB skeleton exists, its groups and its leaf classes.
public struct KernelState: Sendable, Equatable {
    public struct Steer: Sendable, Equatable {
        public var mark: UInt32
        public var deadline: BootInstant
        public init(mark: UInt32, deadline: BootInstant) { self.mark = mark; self.deadline = deadline }
    }
    public struct AnchorTarget: Sendable, Equatable {
        public var address: IPAddress
        public var port: UInt16
        public var deadline: BootInstant
        public init(address: IPAddress, port: UInt16, deadline: BootInstant) {
            self.address = address; self.port = port; self.deadline = deadline
        }
    }
    public struct QoS: Sendable, Equatable {
        public var classid: UInt32
        public var deadline: BootInstant
        public init(classid: UInt32, deadline: BootInstant) { self.classid = classid; self.deadline = deadline }
    }
    public struct Leaf: Sendable, Equatable {
        public var rateKbit: UInt64
        public var ceilKbit: UInt64
        public var priority: UInt8
        /// The lease mark the class belongs to (0 when read back from the kernel: unknown).
        public var owner: UInt32
        public init(rateKbit: UInt64, ceilKbit: UInt64, priority: UInt8, owner: UInt32) {
            self.rateKbit = rateKbit; self.ceilKbit = ceilKbit; self.priority = priority; self.owner = owner
        }
    }
    public struct Group: Sendable, Equatable {
        public var rateKbit: UInt64
        public var priority: UInt8
        public init(rateKbit: UInt64, priority: UInt8) { self.rateKbit = rateKbit; self.priority = priority }
    }
    public struct Interface: Sendable, Equatable {
        /// Capacity the root class `a1:1` is configured with.
        public var capacityKbit: UInt64
        public var groups: [UInt16: Group] = [:]
        public var leaves = CompactDictionary<UInt32, Leaf>()
        public init(capacityKbit: UInt64) { self.capacityKbit = capacityKbit }
    }

    public var steering = CompactDictionary<Classifier, Steer>()
    public var anchors = CompactDictionary<UInt32, AnchorTarget>()
    public var qos = CompactDictionary<UInt32, QoS>()
    public var interfaces: [String: Interface] = [:]
    /// For state read back from the kernel: the longest element dump took this long, so element
    /// deadlines (read time + remaining) may be that much early.
    public var readSkewNs: UInt64 = 0

    public init() {}

    public var isEmpty: Bool { steering.isEmpty && anchors.isEmpty && qos.isEmpty && interfaces.isEmpty }
    public var leafCount: Int { interfaces.values.reduce(0) { $0 + $1.leaves.count } }
}

/// The part of the state one change can affect; planning diffs only these keys, so a change
/// costs O(its own size), not O(all leases). `Scope.everything(...)` is a full resync.
public struct Scope: Sendable, Equatable {
    public var classifiers: Set<Classifier> = []
    public var marks: Set<UInt32> = []
    public var leaves: Set<QoSClassRef> = []
    public var groups: Set<GroupRef> = []
    public var interfaces: Set<String> = []

    public init() {}

    public mutating func add(_ lease: Lease) {
        classifiers.insert(lease.classifier)
        marks.insert(lease.mark)
        leaves.insert(lease.qosClass)
        groups.insert(lease.qosClass.group)
        interfaces.insert(lease.qosClass.interface)
    }

    public mutating func formUnion(_ other: Scope) {
        classifiers.formUnion(other.classifiers)
        marks.formUnion(other.marks)
        leaves.formUnion(other.leaves)
        groups.formUnion(other.groups)
        interfaces.formUnion(other.interfaces)
    }

    public var isEmpty: Bool { classifiers.isEmpty && marks.isEmpty && leaves.isEmpty && groups.isEmpty && interfaces.isEmpty }

    /// Every key present in the table's point or in `applied`.
    public static func everything(point: String, table: LeaseTable, applied: KernelState) -> Scope {
        var s = Scope()
        for l in table.leases.values where l.enforcementPoint == point { s.add(l) }
        s.classifiers.formUnion(applied.steering.keys)
        s.marks.formUnion(applied.anchors.keys)
        s.marks.formUnion(applied.qos.keys)
        for (name, i) in applied.interfaces {
            s.interfaces.insert(name)
            for major in i.groups.keys { s.groups.insert(GroupRef(interface: name, major: major)) }
            for cid in i.leaves.keys {
                s.leaves.insert(QoSClassRef(interface: name, major: UInt16(cid >> 16), minor: UInt16(cid & 0xffff)))
            }
        }
        return s
    }
}

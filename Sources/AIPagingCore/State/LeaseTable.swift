/// Limits and constants of the kernel layout the allocator works within.
public enum Layout {
    /// Lease marks are `markPrefix | slot` in the conntrack mark; `markMask` selects the prefix.
    public static let markPrefix: UInt32 = 0xa100_0000
    public static let markMask: UInt32 = 0xff00_0000
    public static let maxSlot: UInt32 = 0x00ff_ffff
    /// Root HTB qdisc handle major (`a1:`); `a1:1` is the root class, `a1:2` best effort.
    public static let rootMajor: UInt16 = 0xa1
    /// Group qdisc handle majors: one group per (interface, priority) holds up to `groupSize` leaves.
    public static let firstGroupMajor: UInt16 = 0x100
    public static let lastGroupMajor: UInt16 = 0xfff0
    /// Leaf minors inside a group start at 2 (`G:1` is the group's inner root class).
    public static let firstLeafMinor: UInt16 = 2
    public static let defaultGroupSize = 256
    /// Leases due within the same `markBucketNs` get their marks from one aligned block of
    /// `markBlockSlots` slots (`LeaseTable.allocateMark`).
    public static let markBlockSlots: UInt32 = 16
    public static let markBucketNs: UInt64 = 2_000_000
}

/// Everything the agent knows about leases, with the indexes admission and planning need.
///
/// It is a plain value with no I/O. Every index is derived from the lease records through
/// `upsert`/`remove`, so restoring a record restores the indexes: that is how a failed kernel
/// install is undone (`Undo`).
public struct LeaseTable: Sendable {
    public private(set) var leases = LeaseStore()
    /// Highest generation seen for an ended lease id (replay protection): a tombstone. It is kept
    /// for `tombstoneRetentionNs` after the later of the lease's end and its expiry, then
    /// forgotten (`pruneTombstones`), so a long-running agent does not grow with every lease it
    /// ever ended. Within that time a resent COMMIT of the ended lease is refused as a replay;
    /// after it, a COMMIT with an absolute `expires_at` is refused as expired anyway.
    public internal(set) var endedGenerations: [LeaseID: UInt64] = [:]
    public var tombstoneRetentionNs: Int64 = 3_600 * 1_000_000_000
    /// (retained from, wall ns) -> (generation, lease id), earliest first. Entries whose tombstone
    /// was replaced by a later generation or restored away are skipped when they surface.
    private var tombstoneHeap = MinHeap<Int64, (generation: UInt64, id: LeaseID)>()
    /// Relocation instants per AISI (sliding window for the rate limit).
    public private(set) var relocationLog: [AISI: [BootInstant]] = [:]
    public private(set) var points: [String: PointIndex] = [:]
    public let groupSize: Int

    /// Per enforcement point indexes.
    public struct PointIndex: Sendable {
        /// Live leases per classifier (at most one owns the steering; others are draining).
        public internal(set) var byClassifier = CompactDictionary<Classifier, LeaseIDs>()
        public internal(set) var byMark = CompactDictionary<UInt32, LeaseID>()
        public internal(set) var byClass = CompactDictionary<QoSClassRef, LeaseID>()
        public internal(set) var groups: [GroupRef: GroupInfo] = [:]
        /// Groups with a free leaf slot per (interface, priority).
        var openGroups: [InterfacePriority: Set<UInt16>] = [:]
        var majorsInUse: [String: Set<UInt16>] = [:]
        public internal(set) var leasesPerInterface: [String: Int] = [:]
        /// Live leases of the point by state, kept as leases change (status and metrics read it
        /// without a walk of every lease on the lease thread).
        public internal(set) var leasesByState: [LeaseState: Int] = [:]
        /// Sum of guaranteed rates of leases that own steering (admitted/active), kbit/s.
        public internal(set) var guaranteedKbit: UInt64 = 0
        var nextSlot: UInt32 = 1
        /// The block of marks each deadline bucket hands out from (`allocateMark`).
        var markBlocks: [UInt64: MarkBlock] = [:]
    }

    /// An aligned block of mark slots `base ..< base + Layout.markBlockSlots`, handed out from
    /// `base + next` on.
    struct MarkBlock: Sendable {
        var base: UInt32
        var next: UInt32
    }

    /// The leases of one classifier: almost always one (a second only while a relocation drains),
    /// so the first is stored inline and only further ones take an allocation.
    public struct LeaseIDs: Sendable, Equatable {
        public private(set) var first: LeaseID
        var rest: [LeaseID] = []
        init(_ id: LeaseID) { first = id }
        public var count: Int { 1 + rest.count }
        mutating func insert(_ id: LeaseID) {
            if id != first && !rest.contains(id) { rest.append(id) }
        }
        /// Removes `id`; false when none is left.
        mutating func remove(_ id: LeaseID) -> Bool {
            if id == first {
                guard !rest.isEmpty else { return false }
                first = rest.removeFirst()
            } else {
                rest.removeAll { $0 == id }
            }
            return true
        }
    }

    public struct GroupInfo: Sendable, Equatable {
        public var priority: UInt8
        /// The leaf minors in use (the leases are found through `byClass`).
        public var members = MinorSet()
        public var rateKbit: UInt64 = 0
    }

    /// A set of 16-bit class minors as a bitmap: a group of 256 leaves takes 40 bytes instead of
    /// a dictionary of 256 lease ids (~9 kB, ~3.6 MB at 100 000 leases).
    public struct MinorSet: Sendable, Equatable {
        private var words: [UInt64] = []
        public private(set) var count = 0
        public init() {}
        public var isEmpty: Bool { count == 0 }

        public func contains(_ minor: UInt16) -> Bool {
            let w = Int(minor) >> 6
            return w < words.count && words[w] & (1 << UInt64(minor & 63)) != 0
        }

        public mutating func insert(_ minor: UInt16) {
            let w = Int(minor) >> 6
            if w >= words.count { words += [UInt64](repeating: 0, count: w + 1 - words.count) }
            let bit: UInt64 = 1 << UInt64(minor & 63)
            if words[w] & bit == 0 { words[w] |= bit; count += 1 }
        }

        public mutating func remove(_ minor: UInt16) {
            let w = Int(minor) >> 6
            let bit: UInt64 = 1 << UInt64(minor & 63)
            if w < words.count && words[w] & bit != 0 { words[w] &= ~bit; count -= 1 }
        }

        /// The smallest minor not in the set, from `start`.
        public func firstFree(from start: UInt16) -> UInt16 {
            var m = start
            while contains(m) { m += 1 }
            return m
        }
    }

    struct InterfacePriority: Hashable, Sendable {
        var interface: String
        var priority: UInt8
    }

    public init(groupSize: Int = Layout.defaultGroupSize) {
        precondition(groupSize >= 1 && groupSize <= 0xfff0)
        self.groupSize = groupSize
    }

    public subscript(id: LeaseID) -> Lease? { leases[id] }
    public var liveCount: Int { leases.count }

    public func index(_ point: String) -> PointIndex? { points[point] }

    /// The live lease that owns the steering of `classifier` at `point`, if any.
    public func steeringOwner(point: String, classifier: Classifier) -> Lease? {
        guard let ids = points[point]?.byClassifier[classifier] else { return nil }
        if let l = leases[ids.first], l.ownsSteering { return l }
        for id in ids.rest { if let l = leases[id], l.ownsSteering { return l } }
        return nil
    }

    // MARK: indexed mutation

    /// Inserts or replaces a live lease and updates every index. Terminal leases are removed
    /// and their generation remembered.
    public mutating func upsert(_ lease: Lease) {
        if let old = leases[lease.id] { unindex(old) }
        guard lease.state.isLive else {
            leases[lease.id] = nil
            rememberEnded(lease)
            return
        }
        leases[lease.id] = lease
        index(lease)
    }

    public mutating func remove(_ id: LeaseID) {
        guard let old = leases.removeValue(forKey: id) else { return }
        unindex(old)
    }

    mutating func rememberEnded(_ lease: Lease) {
        let g = lease.request.generation
        if let prev = endedGenerations[lease.id], prev >= g { return }
        let from = max(lease.expiresAt.nanosecondsSinceEpoch, lease.endedAt?.wall.nanosecondsSinceEpoch ?? 0)
        remember(lease.id, generation: g, retainedFrom: WallTime(nanosecondsSinceEpoch: from))
    }

    /// Records a tombstone whose retention counts from `from` (journal replay, compaction).
    public mutating func remember(_ id: LeaseID, generation g: UInt64, retainedFrom from: WallTime) {
        endedGenerations[id] = g
        tombstoneHeap.push(from.nanosecondsSinceEpoch, (g, id))
    }

    /// Forgets tombstones whose retention is over at `now`; returns how many.
    @discardableResult
    public mutating func pruneTombstones(now: WallTime) -> Int {
        var n = 0
        while let top = tombstoneHeap.top, top.key &+ tombstoneRetentionNs <= now.nanosecondsSinceEpoch {
            tombstoneHeap.popTop()
            if endedGenerations[top.value.id] == top.value.generation {
                endedGenerations[top.value.id] = nil
                n += 1
            }
        }
        if tombstoneHeap.count > 64 && tombstoneHeap.count > 2 * endedGenerations.count {
            tombstoneHeap.filter { endedGenerations[$0.value.id] == $0.value.generation }
        }
        return n
    }

    /// Every tombstone with the instant its retention counts from (for journal compaction).
    public var tombstones: [(id: LeaseID, generation: UInt64, retainedFrom: WallTime)] { journalSource.tombstones }

    /// What a journal compaction writes: the leases, each point's next mark slot and the
    /// tombstones. It shares storage with the table until the table changes, and only these
    /// parts: a change then copies them, not the points' indexes as a copy of the whole table
    /// would (measured at 13 000 leases: the first batch after a compaction began spent 0.5–0.6
    /// ms more in admission with a copy of the whole table, ~0.1 ms more with this).
    public struct JournalSource: Sendable {
        public let leases: LeaseStore
        public let nextSlots: [String: UInt32]
        let endedGenerations: [LeaseID: UInt64]
        let tombstoneHeap: MinHeap<Int64, (generation: UInt64, id: LeaseID)>

        public var tombstones: [(id: LeaseID, generation: UInt64, retainedFrom: WallTime)] {
            var seen = Set<LeaseID>()
            var out: [(id: LeaseID, generation: UInt64, retainedFrom: WallTime)] = []
            for e in tombstoneHeap.entries.sorted(by: { $0.key > $1.key })
            where endedGenerations[e.value.id] == e.value.generation && seen.insert(e.value.id).inserted {
                out.append((e.value.id, e.value.generation, WallTime(nanosecondsSinceEpoch: e.key)))
            }
            return out
        }
    }

    public var journalSource: JournalSource {
        JournalSource(leases: leases, nextSlots: points.mapValues(\.nextSlot), endedGenerations: endedGenerations, tombstoneHeap: tombstoneHeap)
    }

    public mutating func restoreEndedGeneration(_ id: LeaseID, _ generation: UInt64?) {
        endedGenerations[id] = generation
    }

    /// Mutates one point's indexes in place. (Copying a `PointIndex` out of `points` and writing it
    /// back would make every mutation copy its dictionaries: O(leases) per change.)
    private mutating func withPoint<R>(_ name: String, _ body: (inout PointIndex) -> R) -> R {
        body(&points[name, default: PointIndex()])
    }

    private mutating func index(_ l: Lease) {
        let size = groupSize
        withPoint(l.enforcementPoint) { p in
            if p.byClassifier[l.classifier] == nil {
                p.byClassifier[l.classifier] = LeaseIDs(l.id)
            } else {
                p.byClassifier[l.classifier]!.insert(l.id)
            }
            p.byMark[l.mark] = l.id
            p.byClass[l.qosClass] = l.id
            let g = l.qosClass.group
            // In place (a copy of the group written back would copy its member dictionary).
            if p.groups[g] == nil { p.groups[g] = GroupInfo(priority: l.request.qos.priority) }
            p.groups[g]!.members.insert(l.qosClass.minor)
            p.groups[g]!.rateKbit += l.request.qos.rateKbit
            let members = p.groups[g]!.members.count, priority = p.groups[g]!.priority
            p.majorsInUse[g.interface, default: []].insert(g.major)
            let key = InterfacePriority(interface: g.interface, priority: priority)
            if members >= size {
                p.openGroups[key]?.remove(g.major)
            } else {
                p.openGroups[key, default: []].insert(g.major)
            }
            p.leasesPerInterface[g.interface, default: 0] += 1
            p.leasesByState[l.state, default: 0] += 1
            if l.ownsSteering { p.guaranteedKbit += l.request.qos.rateKbit }
        }
    }

    private mutating func unindex(_ l: Lease) {
        guard points[l.enforcementPoint] != nil else { return }
        withPoint(l.enforcementPoint) { p in
            if p.byClassifier[l.classifier]?.remove(l.id) == false { p.byClassifier[l.classifier] = nil }
            if p.byMark[l.mark] == l.id { p.byMark[l.mark] = nil }
            if p.byClass[l.qosClass] == l.id { p.byClass[l.qosClass] = nil }
            let g = l.qosClass.group
            if p.groups[g] != nil {
                p.groups[g]!.members.remove(l.qosClass.minor)
                p.groups[g]!.rateKbit -= min(p.groups[g]!.rateKbit, l.request.qos.rateKbit)
                let key = InterfacePriority(interface: g.interface, priority: p.groups[g]!.priority)
                if p.groups[g]!.members.isEmpty {
                    p.groups[g] = nil
                    p.openGroups[key]?.remove(g.major)
                    if p.openGroups[key]?.isEmpty == true { p.openGroups[key] = nil }
                    p.majorsInUse[g.interface]?.remove(g.major)
                } else {
                    p.openGroups[key, default: []].insert(g.major)
                }
            }
            p.leasesPerInterface[g.interface, default: 1] -= 1
            if p.leasesPerInterface[g.interface] == 0 { p.leasesPerInterface[g.interface] = nil }
            p.leasesByState[l.state, default: 1] -= 1
            if p.leasesByState[l.state] == 0 { p.leasesByState[l.state] = nil }
            if l.ownsSteering { p.guaranteedKbit -= min(p.guaranteedKbit, l.request.qos.rateKbit) }
        }
    }

    // MARK: allocation

    /// A fresh lease mark for a lease due at `deadline`. Marks rotate through 2^24 slots so a
    /// mark is not reused while conntrack entries of its previous lease could still linger.
    ///
    /// Leases due within the same 2 ms (`Layout.markBucketNs`) take their marks from one aligned
    /// block of 16 slots, taken whole from the rotation: at their deadline their conntrack
    /// entries go in one flush of the block (one walk of the kernel's conntrack table) instead
    /// of one per lease, since leases due together are rarely admitted together (64 clients'
    /// requests interleave). A block's slots left unused stay free. When no whole free block is
    /// left (a crowded mark space), any free slot.
    mutating func allocateMark(point: String, dueAt deadline: BootInstant, now: BootInstant, undo: inout Undo) -> UInt32? {
        let size = Layout.markBlockSlots
        let key = deadline.nanoseconds / Layout.markBucketNs
        return withPoint(point) { p in
            undo.marks.append((point, p.nextSlot, key, p.markBlocks[key]))
            if var b = p.markBlocks[key] {
                while b.next < size {
                    let slot = b.base + b.next
                    b.next += 1
                    if p.byMark[Layout.markPrefix | slot] == nil {
                        p.markBlocks[key] = b.next < size ? b : nil
                        return Layout.markPrefix | slot
                    }
                }
                p.markBlocks[key] = nil
            }
            // Blocks of buckets already past serve no admission any more.
            if p.markBlocks.count >= 64 {
                let nowKey = now.nanoseconds / Layout.markBucketNs
                p.markBlocks = p.markBlocks.filter { $0.key >= nowKey }
                if p.markBlocks.count >= 256 { p.markBlocks = [:] }
            }
            // The block the cursor is in, from the cursor on (slot 0 is never a lease's); then
            // whole blocks.
            var base = p.nextSlot / size * size
            var first = max(p.nextSlot, 1)
            for _ in 0...(Layout.maxSlot / size) {
                if base + size - 1 > Layout.maxSlot { (base, first) = (0, 1) }
                if (first ..< base + size).allSatisfy({ p.byMark[Layout.markPrefix | $0] == nil }) {
                    p.nextSlot = base + size > Layout.maxSlot ? 1 : base + size
                    p.markBlocks[key] = MarkBlock(base: base, next: first - base + 1)
                    return Layout.markPrefix | first
                }
                base += size
                first = base
            }
            for _ in 0..<Layout.maxSlot {
                let slot = p.nextSlot
                p.nextSlot = slot >= Layout.maxSlot ? 1 : slot + 1
                let mark = Layout.markPrefix | slot
                if p.byMark[mark] == nil { return mark }
            }
            return nil
        }
    }

    /// Restores what `allocateMark` changed (a rollback).
    mutating func restoreMarkAllocation(point: String, nextSlot: UInt32, bucket: UInt64, block: MarkBlock?) {
        withPoint(point) { p in
            p.nextSlot = nextSlot
            p.markBlocks[bucket] = block
        }
    }

    /// Restores the mark rotation (journal replay).
    public mutating func setNextSlot(point: String, _ slot: UInt32) {
        withPoint(point) { $0.nextSlot = max(1, min(slot, Layout.maxSlot)) }
    }

    public func nextSlot(point: String) -> UInt32 { points[point]?.nextSlot ?? 1 }

    /// A free leaf class on `interface` for `priority`: a free minor in an open group of that
    /// priority, else a new group.
    func allocateClass(point: String, interface: String, priority: UInt8) -> QoSClassRef? {
        let p = points[point] ?? PointIndex()
        let key = InterfacePriority(interface: interface, priority: priority)
        if let majors = p.openGroups[key], let major = majors.min(), let info = p.groups[GroupRef(interface: interface, major: major)] {
            return QoSClassRef(interface: interface, major: major, minor: info.members.firstFree(from: Layout.firstLeafMinor))
        }
        let used = p.majorsInUse[interface] ?? []
        var major = Layout.firstGroupMajor
        while major <= Layout.lastGroupMajor {
            if !used.contains(major) { return QoSClassRef(interface: interface, major: major, minor: Layout.firstLeafMinor) }
            major += 1
        }
        return nil
    }

    // MARK: relocation rate

    public func relocationsInWindow(aisi: AISI, now: BootInstant, windowNs: UInt64 = 60_000_000_000) -> Int {
        guard let log = relocationLog[aisi] else { return 0 }
        let floor = now.nanoseconds > windowNs ? now.nanoseconds - windowNs : 0
        return log.filter { $0.nanoseconds > floor }.count
    }

    mutating func recordRelocation(aisi: AISI, at now: BootInstant, windowNs: UInt64 = 60_000_000_000) {
        let floor = now.nanoseconds > windowNs ? now.nanoseconds - windowNs : 0
        var log = relocationLog[aisi, default: []].filter { $0.nanoseconds > floor }
        log.append(now)
        relocationLog[aisi] = log
    }

    mutating func setRelocationLog(aisi: AISI, _ log: [BootInstant]?) { relocationLog[aisi] = log }
}

/// A min-heap of (instant, lease id) with lazy deletion: entries that no longer match the
/// lease's current next deadline are skipped when they surface. O(log n) per change, so the
/// agent arms one timer at the earliest deadline without scanning all leases.
public struct DeadlineQueue: Sendable {
    private var heap = MinHeap<BootInstant, LeaseID>()
    public init() {}

    public var count: Int { heap.count }

    public mutating func push(_ instant: BootInstant, _ id: LeaseID) { heap.push(instant, id) }

    /// The earliest entry still valid per `isCurrent` (stale ones are dropped on the way).
    public mutating func peek(isCurrent: (BootInstant, LeaseID) -> Bool) -> BootInstant? {
        while let top = heap.top {
            if isCurrent(top.key, top.value) { return top.key }
            heap.popTop()
        }
        return nil
    }

    /// Removes and returns every valid entry due at `now`.
    public mutating func popDue(at now: BootInstant, isCurrent: (BootInstant, LeaseID) -> Bool) -> [LeaseID] {
        var out: [LeaseID] = []
        var seen = Set<LeaseID>()
        while let top = heap.top, top.key <= now {
            heap.popTop()
            if isCurrent(top.key, top.value), seen.insert(top.value).inserted { out.append(top.value) }
        }
        return out
    }
}

/// A min-heap of (instant, lease id) with lazy deletion: entries that no longer match the
/// lease's current next deadline are skipped when they surface. O(log n) per change, so the
/// agent arms one timer at the earliest deadline without scanning all leases.
public struct DeadlineQueue: Sendable {
    private var heap: [(BootInstant, LeaseID)] = []
    public init() {}

    public var count: Int { heap.count }

    public mutating func push(_ instant: BootInstant, _ id: LeaseID) {
        heap.append((instant, id))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if heap[parent].0 <= heap[i].0 { break }
            heap.swapAt(parent, i)
            i = parent
        }
    }

    /// The earliest entry still valid per `isCurrent` (stale ones are dropped on the way).
    public mutating func peek(isCurrent: (BootInstant, LeaseID) -> Bool) -> BootInstant? {
        while let top = heap.first {
            if isCurrent(top.0, top.1) { return top.0 }
            popTop()
        }
        return nil
    }

    /// Removes and returns every valid entry due at `now`.
    public mutating func popDue(at now: BootInstant, isCurrent: (BootInstant, LeaseID) -> Bool) -> [LeaseID] {
        var out: [LeaseID] = []
        var seen = Set<LeaseID>()
        while let top = heap.first, top.0 <= now {
            popTop()
            if isCurrent(top.0, top.1), seen.insert(top.1).inserted { out.append(top.1) }
        }
        return out
    }

    private mutating func popTop() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && heap[l].0 < heap[m].0 { m = l }
            if r < heap.count && heap[r].0 < heap[m].0 { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
    }
}

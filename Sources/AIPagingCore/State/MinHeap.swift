/// A binary min-heap of (key, value) pairs ordered by key: O(log n) push and pop. The agent's
/// timers (deadlines, pre-expiry reads, tombstone retention) use it with lazy deletion: entries
/// that no longer hold are skipped when they reach the top.
public struct MinHeap<Key: Comparable & Sendable, Value: Sendable>: Sendable {
    public private(set) var entries: [(key: Key, value: Value)] = []
    public init() {}

    public var count: Int { entries.count }
    public var top: (key: Key, value: Value)? { entries.first }

    public mutating func push(_ key: Key, _ value: Value) {
        // Grow by a quarter, not Array's doubling (one entry per live lease in the deadline heaps).
        if entries.count == entries.capacity { entries.reserveCapacity(Swift.max(16, entries.count + entries.count / 4)) }
        entries.append((key, value))
        var i = entries.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if entries[parent].key <= entries[i].key { break }
            entries.swapAt(parent, i)
            i = parent
        }
    }

    @discardableResult
    public mutating func popTop() -> (key: Key, value: Value)? {
        guard let first = entries.first else { return nil }
        let last = entries.removeLast()
        guard !entries.isEmpty else { return first }
        entries[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < entries.count && entries[l].key < entries[m].key { m = l }
            if r < entries.count && entries[r].key < entries[m].key { m = r }
            if m == i { break }
            entries.swapAt(i, m)
            i = m
        }
        return first
    }

    /// Keeps only the entries `keep` accepts (rebuilding the heap).
    public mutating func filter(_ keep: ((key: Key, value: Value)) -> Bool) {
        let kept = entries.filter(keep)
        entries = []
        for e in kept { push(e.key, e.value) }
    }
}

/// The live leases by id, stored densely: an id -> slot index and an array of slots, so a lease
/// (several hundred bytes) takes one slot instead of a hash bucket. A Swift dictionary keeps at
/// most 3/4 of its buckets full and doubles, so past 98 304 leases it would hold 262 144 lease-sized
/// buckets; here the buckets hold only a 4-byte slot number. Freed slots are reused (the slot
/// array, like a dictionary, does not shrink while leases remain).
public struct LeaseStore: Sendable, Equatable {
    private var index: [LeaseID: Int32] = [:]
    private var slots: [Lease?] = []
    private var free: [Int32] = []

    public init() {}

    public var count: Int { index.count }
    public var isEmpty: Bool { index.isEmpty }
    public var keys: Dictionary<LeaseID, Int32>.Keys { index.keys }

    /// Every lease, in slot order.
    public var values: LazyMapSequence<LazyFilterSequence<LazyMapSequence<[Lease?], Lease?>>, Lease> {
        slots.lazy.compactMap { $0 }
    }

    public subscript(id: LeaseID) -> Lease? {
        get { index[id].flatMap { slots[Int($0)] } }
        set {
            if let newValue {
                if let i = index[id] {
                    slots[Int(i)] = newValue
                } else if let i = free.popLast() {
                    slots[Int(i)] = newValue
                    index[id] = i
                } else {
                    index[id] = Int32(slots.count)
                    slots.append(newValue)
                }
            } else {
                _ = removeValue(forKey: id)
            }
        }
    }

    @discardableResult
    public mutating func removeValue(forKey id: LeaseID) -> Lease? {
        guard let i = index.removeValue(forKey: id) else { return nil }
        let old = slots[Int(i)]
        slots[Int(i)] = nil
        if index.isEmpty {
            slots.removeAll(keepingCapacity: true)
            free.removeAll(keepingCapacity: true)
        } else {
            free.append(i)
        }
        return old
    }

    /// Equal when they hold the same leases under the same ids (wherever their slots are).
    public static func == (a: LeaseStore, b: LeaseStore) -> Bool {
        guard a.count == b.count else { return false }
        for (id, i) in a.index { guard let l = a.slots[Int(i)], b[id] == l else { return false } }
        return true
    }
}

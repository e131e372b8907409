/// The live leases by id, stored densely: an id -> slot index and slots in fixed-size chunks, so a
/// lease (several hundred bytes) takes one slot instead of a hash bucket. A Swift dictionary keeps at
/// most 3/4 of its buckets full and doubles, so past 98 304 leases it would hold 262 144 lease-sized
/// buckets; here the buckets hold only a 4-byte slot number. Chunks of 512 slots, rather than one
/// array, grow without a doubling's overshoot (up to 2x) and without copying every lease when they
/// do. Freed slots are reused (the chunks, like a dictionary, do not shrink while leases remain).
public struct LeaseStore: Sendable, Equatable {
    private var index = CompactDictionary<LeaseID, Int32>()
    private var chunks: [[Lease?]] = []
    private var slotCount: Int32 = 0
    private var free: [Int32] = []
    static let chunkShift = 9
    static let chunkMask = Int32(1 << chunkShift - 1)

    public init() {}

    public var count: Int { index.count }
    public var isEmpty: Bool { index.isEmpty }
    public var keys: [LeaseID] { index.keys }

    /// Every lease, in slot order.
    public var values: LazyMapSequence<LazyFilterSequence<LazyMapSequence<FlattenSequence<[[Lease?]]>, Lease?>>, Lease> {
        chunks.joined().lazy.compactMap { $0 }
    }

    private subscript(slot i: Int32) -> Lease? {
        get { chunks[Int(i >> Self.chunkShift)][Int(i & Self.chunkMask)] }
        set { chunks[Int(i >> Self.chunkShift)][Int(i & Self.chunkMask)] = newValue }
    }

    public subscript(id: LeaseID) -> Lease? {
        get { index[id].flatMap { self[slot: $0] } }
        set {
            if let newValue {
                if let i = index[id] {
                    self[slot: i] = newValue
                } else if let i = free.popLast() {
                    self[slot: i] = newValue
                    index[id] = i
                } else {
                    let i = slotCount
                    if Int(i >> Self.chunkShift) == chunks.count {
                        chunks.append(Array(repeating: nil, count: 1 << Self.chunkShift))
                    }
                    slotCount += 1
                    self[slot: i] = newValue
                    index[id] = i
                }
            } else {
                _ = removeValue(forKey: id)
            }
        }
    }

    @discardableResult
    public mutating func removeValue(forKey id: LeaseID) -> Lease? {
        guard let i = index.removeValue(forKey: id) else { return nil }
        let old = self[slot: i]
        self[slot: i] = nil
        if index.isEmpty {
            chunks.removeAll()
            slotCount = 0
            free.removeAll(keepingCapacity: true)
        } else {
            free.append(i)
        }
        return old
    }

    /// Equal when they hold the same leases under the same ids (wherever their slots are).
    public static func == (a: LeaseStore, b: LeaseStore) -> Bool {
        guard a.count == b.count else { return false }
        for (id, i) in a.index { guard let l = a[slot: i], b[id] == l else { return false } }
        return true
    }
}

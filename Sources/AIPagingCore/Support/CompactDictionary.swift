/// A hash map for the agent's per-lease tables: its entries sit densely in two arrays (keys,
/// values) and an open-addressing table of 32-bit positions finds them.
///
/// Why not `Dictionary`: a Swift dictionary stores keys and values in its buckets and keeps at
/// most 3/4 of them full, doubling from there, so just past 98 304 entries it holds 262 144
/// key-and-value buckets (load 0.38). At 100 000 leases the agent's dictionaries keyed by
/// classifier, mark and class then cost ~900 bytes per lease. Here an entry costs its key and
/// value once (plus at most a quarter of growth slack) and 4 bytes per bucket of the position
/// table, which is kept at most half full: probes are short and the table is ~1 MB at 100 000
/// entries.
///
/// `map[k]` copies the value out and back (fine for the small values kept here); `map[k, default:]`
/// mutates in place.
///
/// Removal moves the last entry into the hole (so iteration order is not insertion order, as with
/// `Dictionary` it is unspecified) and deletes the bucket by backward shift (no tombstones, so a
/// long-lived map with churn does not degrade).
public struct CompactDictionary<Key: Hashable, Value> {
    @usableFromInline var _keys: [Key] = []
    @usableFromInline var _values: [Value] = []
    /// Positions in `_keys`/`_values`, or -1 for an empty bucket; its count is 0 or a power of two.
    @usableFromInline var table: [Int32] = []

    @inlinable
    public init() {}

    @inlinable
    public init(minimumCapacity: Int) {
        _keys.reserveCapacity(minimumCapacity)
        _values.reserveCapacity(minimumCapacity)
        rehash(bucketsFor(minimumCapacity))
    }

    @inlinable
    public init<S: Sequence>(uniqueKeysWithValues pairs: S) where S.Element == (Key, Value) {
        for (k, v) in pairs {
            precondition(find(k).position == nil, "duplicate key \(k)")
            insertNew(k, v)
        }
    }

    @inlinable
    public var count: Int { _keys.count }
    @inlinable
    public var isEmpty: Bool { _keys.isEmpty }
    /// The keys, in storage order.
    @inlinable
    public var keys: [Key] { _keys }
    /// The values, in the order of `keys`.
    @inlinable
    public var values: [Value] { _values }

    // MARK: lookup

    @inlinable @inline(__always)
    var mask: Int { table.count - 1 }

    /// The entry's position and, either way, the bucket where the search ended (the key's bucket
    /// or the empty one it would take).
    @inlinable @inline(__always)
    func find(_ key: Key) -> (position: Int?, bucket: Int) {
        guard !table.isEmpty else { return (nil, -1) }
        let m = mask
        var b = key.hashValue & m
        while true {
            let p = table[b]
            if p < 0 { return (nil, b) }
            if _keys[Int(p)] == key { return (Int(p), b) }
            b = (b + 1) & m
        }
    }

    @inlinable
    public func index(forKey key: Key) -> Int? { find(key).position }

    @inlinable
    public subscript(key: Key) -> Value? {
        get {
            guard let p = find(key).position else { return nil }
            return _values[p]
        }
        set {
            let (found, bucket) = find(key)
            switch (found, newValue) {
            case (let p?, let v?): _values[p] = v
            case (let p?, nil): remove(at: p, bucket: bucket)
            case (nil, let v?): insertNew(key, v)
            case (nil, nil): break
            }
        }
    }

    @inlinable
    public subscript(key: Key, default defaultValue: @autoclosure () -> Value) -> Value {
        get {
            guard let p = find(key).position else { return defaultValue() }
            return _values[p]
        }
        _modify {
            let p: Int
            if let found = find(key).position {
                p = found
            } else {
                insertNew(key, defaultValue())
                p = _values.count - 1
            }
            yield &_values[p]
        }
    }

    @inlinable
    @discardableResult
    public mutating func updateValue(_ value: Value, forKey key: Key) -> Value? {
        if let p = find(key).position {
            let old = _values[p]
            _values[p] = value
            return old
        }
        insertNew(key, value)
        return nil
    }

    @inlinable
    @discardableResult
    public mutating func removeValue(forKey key: Key) -> Value? {
        let (found, bucket) = find(key)
        guard let p = found else { return nil }
        let v = _values[p]
        remove(at: p, bucket: bucket)
        return v
    }

    @inlinable
    public mutating func removeAll(keepingCapacity keep: Bool = false) {
        _keys.removeAll(keepingCapacity: keep)
        _values.removeAll(keepingCapacity: keep)
        if keep { for i in table.indices { table[i] = -1 } } else { table = [] }
    }

    /// The entries for which `isIncluded` holds (like `Dictionary.filter`, a map again).
    @inlinable
    public func filter(_ isIncluded: (Element) throws -> Bool) rethrows -> CompactDictionary {
        var out = CompactDictionary()
        for i in _keys.indices where try isIncluded((_keys[i], _values[i])) { out.insertNew(_keys[i], _values[i]) }
        return out
    }

    @inlinable
    public func mapValues<T>(_ transform: (Value) throws -> T) rethrows -> CompactDictionary<Key, T> {
        var out = CompactDictionary<Key, T>()
        out._keys = _keys
        out._values = try _values.map(transform)
        out.table = table
        return out
    }

    // MARK: storage

    @inlinable
    func bucketsFor(_ n: Int) -> Int {
        var c = 8
        while c < 2 * n { c <<= 1 }
        return c
    }

    @inlinable
    mutating func insertNew(_ key: Key, _ value: Value) {
        if 2 * (_keys.count + 1) > table.count { rehash(bucketsFor(_keys.count + 1)) }
        if _keys.count == _keys.capacity {
            // Grow by a quarter rather than Array's doubling: a full doubling leaves up to half
            // of a 100 000-entry map's key and value storage unused.
            let n = Swift.max(16, _keys.count + _keys.count / 4)
            _keys.reserveCapacity(n)
            _values.reserveCapacity(n)
        }
        let m = mask
        var b = key.hashValue & m
        while table[b] >= 0 { b = (b + 1) & m }
        table[b] = Int32(_keys.count)
        _keys.append(key)
        _values.append(value)
    }

    @inlinable
    mutating func rehash(_ buckets: Int) {
        precondition(buckets <= Int(Int32.max), "CompactDictionary: too many entries")
        table = [Int32](repeating: -1, count: buckets)
        let m = buckets - 1
        for (i, k) in _keys.enumerated() {
            var b = k.hashValue & m
            while table[b] >= 0 { b = (b + 1) & m }
            table[b] = Int32(i)
        }
    }

    /// Removes the entry at `position` whose bucket is `bucket`.
    @inlinable
    mutating func remove(at position: Int, bucket: Int) {
        let m = mask
        // Backward-shift deletion: pull later members of the probe run into the hole whenever
        // the hole lies between their home bucket and where they sit.
        var hole = bucket
        var b = (hole + 1) & m
        while table[b] >= 0 {
            let home = _keys[Int(table[b])].hashValue & m
            if (b &- home) & m >= (b &- hole) & m {
                table[hole] = table[b]
                hole = b
            }
            b = (b + 1) & m
        }
        table[hole] = -1
        // Move the last entry into the freed position and repoint its bucket.
        let last = _keys.count - 1
        if position != last {
            var lb = _keys[last].hashValue & m
            while table[lb] != Int32(last) { lb = (lb + 1) & m }
            table[lb] = Int32(position)
            _keys.swapAt(position, last)
            _values.swapAt(position, last)
        }
        _keys.removeLast()
        _values.removeLast()
        if _keys.isEmpty && table.count > 1024 { table = [] }
    }
}

extension CompactDictionary: Sequence {
    public typealias Element = (key: Key, value: Value)

    public struct Iterator: IteratorProtocol {
        @usableFromInline let keys: [Key]
        @usableFromInline let values: [Value]
        @usableFromInline var i = 0
        @inlinable init(keys: [Key], values: [Value]) { self.keys = keys; self.values = values }
        @inlinable
        public mutating func next() -> Element? {
            guard i < keys.count else { return nil }
            defer { i += 1 }
            return (keys[i], values[i])
        }
    }

    @inlinable
    public func makeIterator() -> Iterator { Iterator(keys: _keys, values: _values) }
    @inlinable
    public var underestimatedCount: Int { _keys.count }
}

extension CompactDictionary: ExpressibleByDictionaryLiteral {
    @inlinable
    public init(dictionaryLiteral elements: (Key, Value)...) {
        self.init(uniqueKeysWithValues: elements)
    }
}

extension CompactDictionary: Equatable where Value: Equatable {
    /// Equal when they map the same keys to the same values (in whatever order they are stored).
    @inlinable
    public static func == (a: Self, b: Self) -> Bool {
        guard a.count == b.count else { return false }
        for i in a._keys.indices {
            guard let p = b.find(a._keys[i]).position, b._values[p] == a._values[i] else { return false }
        }
        return true
    }
}

extension CompactDictionary: @unchecked Sendable where Key: Sendable, Value: Sendable {}

extension CompactDictionary: CustomStringConvertible {
    @inlinable
    public var description: String {
        "[" + zip(_keys, _values).map { "\($0): \($1)" }.joined(separator: ", ") + "]"
    }
}

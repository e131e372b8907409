/// A value kept out of line, for the optional fields most leases never set (relocation, drain,
/// end): a struct holds `OutOfLine<T>?`, 8 bytes, instead of `T`'s size in every copy — at
/// 100 000 leases each 8 bytes saved is 0.8 MB. Immutable: a write replaces the box, so copies of
/// the owning struct never share a mutation. Owners store nil rather than a box of an empty value
/// (`Optional.modify(empty:_:)`), so equality of the owners stays equality of their values.
public final class OutOfLine<T: Equatable & Sendable>: Equatable, Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
    public static func == (a: OutOfLine, b: OutOfLine) -> Bool { a === b || a.value == b.value }
}

extension OutOfLine: Hashable where T: Hashable {
    public func hash(into h: inout Hasher) { h.combine(value) }
}

extension Optional {
    /// Applies `change` to the boxed value (`empty` when there is none) and stores a new box, or
    /// nil when the result is `empty`.
    public mutating func modify<T: Equatable & Sendable>(empty: T, _ change: (inout T) -> Void) where Wrapped == OutOfLine<T> {
        var v = self?.value ?? empty
        change(&v)
        self = v == empty ? nil : OutOfLine(v)
    }
}

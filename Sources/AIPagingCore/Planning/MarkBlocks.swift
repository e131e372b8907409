/// A set of conntrack marks as aligned blocks `(value, mask)`: a mark `m` is in a block when
/// `m & mask == value`. Each block is 2^k consecutive marks starting at a multiple of 2^k, each of
/// them in the set or free (held by no live lease), so a flush by block never touches another
/// lease's flows.
///
/// Why: flushing a lease's conntrack entries by mark makes the kernel walk its whole conntrack
/// hash table (0.1–0.2 ms here, whatever the number of entries). Leases due together hold marks
/// of one aligned block (`LeaseTable.allocateMark`), and those that ended before them left theirs
/// free, so the leases of a batch of expiries are a few walks instead of one each.
public enum MarkBlocks {
    /// The marks `m` with `m & mask == value`.
    public struct Block: Sendable, Equatable {
        public var value: UInt32
        public var mask: UInt32
        public init(value: UInt32, mask: UInt32) { self.value = value; self.mask = mask }
        public func contains(_ m: UInt32) -> Bool { m & mask == value }
    }

    /// Blocks that cover `marks`; a block may also cover marks for which `free` is true (no
    /// live lease holds them, so a flush finds nothing of a lease there), up to 64 marks, which
    /// joins runs that an ended neighbour or an unused slot splits, and unaligned runs. With no
    /// free marks the blocks cover exactly the set.
    public static func cover(_ marks: some Sequence<UInt32>, free: (UInt32) -> Bool = { _ in false }) -> [Block] {
        let m = Array(Set(marks)).sorted()
        let inSet = Set(m)
        var blocks: [Block] = []
        var i = 0
        while i < m.count {
            let v = m[i]
            // The largest aligned block from v that the sorted run covers completely (sorted and
            // unique: the run is consecutive iff its last element is v + size - 1).
            var k = min(v == 0 ? 31 : v.trailingZeroBitCount, 31)
            while k > 0 {
                let size = 1 << k
                if i + size - 1 < m.count && m[i + size - 1] == v &+ UInt32(size - 1) { break }
                k -= 1
            }
            // Wider, around v, over free marks, up to 64: doubled while every mark of the wider
            // block is in the set or free (a block that fails only has wider ones that fail).
            while k < 6 {
                let base = v & ~(UInt32(1) << (k + 1) - 1)
                guard (base ... base | (UInt32(1) << (k + 1) - 1)).allSatisfy({ inSet.contains($0) || free($0) }) else { break }
                k += 1
            }
            let block = Block(value: v & ~UInt32(truncatingIfNeeded: (1 << k) - 1), mask: ~UInt32(truncatingIfNeeded: (1 << k) - 1))
            blocks.append(block)
            while i < m.count && block.contains(m[i]) { i += 1 }
        }
        return blocks
    }
}

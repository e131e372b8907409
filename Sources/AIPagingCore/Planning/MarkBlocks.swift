/// A set of conntrack marks as aligned blocks `(value, mask)`: a mark `m` is in the set exactly
/// when `m & mask == value` for one of the blocks. Each block is 2^k consecutive marks starting
/// at a multiple of 2^k, all of them in the set, so a flush by block never touches a mark outside
/// the set (another lease's flows).
///
/// Why: flushing a lease's conntrack entries by mark makes the kernel walk its whole conntrack
/// hash table (0.1–0.2 ms here, whatever the number of entries). Leases that end together were
/// mostly admitted together and hold consecutive marks (the slot rotation hands them out in
/// order), so a batch of 64 expiries is a handful of walks instead of 64.
public enum MarkBlocks {
    public static func cover(_ marks: some Sequence<UInt32>) -> [(value: UInt32, mask: UInt32)] {
        let m = Array(Set(marks)).sorted()
        var blocks: [(value: UInt32, mask: UInt32)] = []
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
            blocks.append((v, ~UInt32((1 << k) - 1)))
            i += 1 << k
        }
        return blocks
    }
}

import Testing
@testable import AIPagingCore

/// A key whose hash collides on purpose (few distinct hashes), so probe runs are long and
/// backward-shift deletion is exercised across wrapped runs.
private struct Colliding: Hashable {
    var v: Int
    func hash(into h: inout Hasher) { h.combine(v % 7) }
}

@Suite struct CompactDictionaryTests {
    /// Random inserts, updates, removals and default-subscript mutations, checked step by step
    /// against `Dictionary`.
    @Test(arguments: [1, 2, 3, 4])
    func behavesLikeDictionary(seed: UInt64) {
        var rng = SplitMix(seed: seed)
        var c = CompactDictionary<Colliding, Int>()
        var d: [Colliding: Int] = [:]
        let range = seed.isMultiple(of: 2) ? 40 : 3_000
        for step in 0..<20_000 {
            let k = Colliding(v: Int.random(in: 0..<range, using: &rng))
            switch Int.random(in: 0..<5, using: &rng) {
            case 0, 1:
                c[k] = step; d[k] = step
            case 2:
                #expect(c.removeValue(forKey: k) == d.removeValue(forKey: k))
            case 3:
                c[k, default: 0] += 1; d[k, default: 0] += 1
            default:
                c[k] = nil; d[k] = nil
            }
            #expect(c[k] == d[k])
            if step % 997 == 0 {
                #expect(c.count == d.count)
                for (key, value) in d { #expect(c[key] == value) }
                var seen = Set<Colliding>()
                for (key, value) in c { #expect(d[key] == value); #expect(seen.insert(key).inserted) }
                #expect(seen.count == d.count)
            }
        }
        for (key, value) in d { #expect(c[key] == value) }
        for key in d.keys { c[key] = nil }
        #expect(c.isEmpty)
    }

    @Test func equalityIgnoresStorageOrder() {
        var a = CompactDictionary<Int, String>(), b = CompactDictionary<Int, String>()
        for i in 0..<100 { a[i] = "\(i)" }
        for i in (0..<100).reversed() { b[i] = "\(i)" }
        #expect(a == b)
        b[5] = "x"
        #expect(a != b)
        b[5] = nil
        #expect(a != b)
        let lit: CompactDictionary<Int, String> = [1: "a", 2: "b"]
        #expect(lit[1] == "a" && lit[2] == "b" && lit.count == 2)
    }

    @Test func removingEverythingAndRefillingKeepsFinding() {
        var c = CompactDictionary<Int, Int>()
        for round in 0..<3 {
            for i in 0..<5_000 { c[i &* 2_654_435_761] = i + round }
            for i in stride(from: 0, to: 5_000, by: 2) { c[i &* 2_654_435_761] = nil }
            for i in 0..<5_000 { #expect(c[i &* 2_654_435_761] == (i.isMultiple(of: 2) ? nil : i + round)) }
            c.removeAll()
            #expect(c.isEmpty && c[1] == nil)
        }
    }
}

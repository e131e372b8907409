import Testing
import AIPagingCore

@Suite struct FinalizationPassesTests {
    /// A writer that takes longer than a window for a pass (100 sessions, 30 records a step, a
    /// window due every 3 steps): every session still gets records, each covering up to a window
    /// that is due, never going back, and none waits longer than two passes.
    @Test func aSlowWriterReachesEverySession() {
        var passes = FinalizationPasses<Int>()
        let sessions = Array(0..<100)
        var emitted = [Int64](repeating: -1, count: 100)
        var lastStep = [Int](repeating: 0, count: 100)
        var maxGap = 0
        var window: Int64 = 0
        for step in 1...60 {
            if step % 3 == 0 {
                window += 1
                passes.due(window) { sessions }
            }
            var n = 0
            while n < 30, let (s, w) = passes.next(snapshot: { sessions }) {
                #expect(w <= window && w >= emitted[s], "session \(s) got window \(w) after \(emitted[s]), \(window) due")
                if w > emitted[s] {
                    emitted[s] = w
                    maxGap = max(maxGap, step - lastStep[s])
                    lastStep[s] = step
                    n += 1
                }
            }
        }
        // A pass of 100 at 30 a step takes 4 steps: nobody waits more than two of them (plus
        // the step a pass waits for its window).
        #expect(maxGap <= 11, "a session waited \(maxGap) steps")
        #expect(lastStep.allSatisfy { $0 >= 50 }, "sessions last reached at steps \(Set(lastStep).sorted())")
        #expect(emitted.allSatisfy { $0 >= window - 3 })
    }

    /// A fast writer: one pass per window, each session once, with that window as the target.
    @Test func onePassPerWindowWhenTheWriterKeepsUp() {
        var passes = FinalizationPasses<Int>()
        #expect(!passes.active && passes.next(snapshot: { [1] }) == nil)
        for w in Int64(1)...3 {
            passes.due(w) { [1, 2, 3] }
            #expect(passes.active)
            var seen: [Int] = []
            while let (s, t) = passes.next(snapshot: { [1, 2, 3] }) {
                #expect(t == w)
                seen.append(s)
            }
            #expect(seen == [1, 2, 3] && !passes.active)
        }
    }

    /// A newer window due mid-pass: the rest of the pass gets it, then a pass for the ones passed.
    @Test func aNewerWindowMidPassRetargetsAndFollowsOn() {
        var passes = FinalizationPasses<Int>()
        passes.due(5) { [1, 2, 3, 4] }
        var got: [(Int, Int64)] = []
        for _ in 0..<2 { got.append(passes.next(snapshot: { [1, 2, 3, 4] })!) }
        passes.due(6) { [1, 2, 3, 4] }
        while let x = passes.next(snapshot: { [1, 2, 3, 4, 9] }) { got.append(x) }
        #expect(got.map(\.0) == [1, 2, 3, 4, 1, 2, 3, 4, 9])
        #expect(got.map(\.1) == [5, 5, 6, 6, 6, 6, 6, 6, 6])
    }
}

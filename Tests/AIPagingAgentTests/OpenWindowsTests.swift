import Testing
@testable import AIPagingAgent

@Suite struct OpenWindowsTests {
    /// A session that owes many windows (its records fell behind) holds at most four; the record
    /// that covers all of them still counts every packet, and the newest windows stay apart.
    @Test func manyOwedWindowsAreMergedWithoutLosingCounts() {
        var w = ExporterLoop.OpenWindows()
        for x in Int64(1)...20 {
            w.update(x) { $0.delta.originalPackets += UInt64(x); $0.asOf = x * 100 }
            #expect(w.count == min(Int(x), 2 + ExporterLoop.OpenWindows.maxSpill))
        }
        // A record for windows 1...18 (the two newest still open).
        var packets: UInt64 = 0
        var asOf: Int64 = 0
        for x in Int64(1)...18 {
            if let t = w.take(x) { packets += t.delta.originalPackets; asOf = max(asOf, t.asOf) }
        }
        w.removeAll(before: 18)
        #expect(packets == (1...18).reduce(0, +) && asOf == 1800)
        #expect(w.count == 2)
        #expect(w.take(19)?.delta.originalPackets == 19 && w.take(20)?.delta.originalPackets == 20)
    }

    /// One or two open windows (the usual case) are kept apart.
    @Test func twoWindowsStayApart() {
        var w = ExporterLoop.OpenWindows()
        w.update(7) { $0.delta.replyPackets = 1 }
        w.update(8) { $0.delta.replyPackets = 2 }
        w.update(7) { $0.delta.replyPackets += 10 }
        #expect(w.take(7)?.delta.replyPackets == 11 && w.take(8)?.delta.replyPackets == 2 && w.count == 0)
    }
}

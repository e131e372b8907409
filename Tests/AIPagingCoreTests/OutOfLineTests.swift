import Testing
@testable import AIPagingCore

/// The lease fields kept out of line (`OutOfLine`) behave as stored fields: a copy never sees
/// another copy's write, and a value whose rare fields went back to nil equals one that never
/// had them (so the journal's and the planner's comparisons of leases are unchanged).
@Suite struct OutOfLineTests {
    @Test func relocationFieldsAreValuesAndClearBackToEqual() {
        let plain = Fixture.request()
        var r = plain
        r.relocates = "L0"
        r.drainMs = 1500
        let copy = r
        r.drainMs = 3000
        #expect(copy.relocates == "L0" && copy.drainMs == 1500)
        #expect(r.relocates == "L0" && r.drainMs == 3000)
        #expect(r != plain && copy != r)
        r.relocates = nil
        r.drainMs = nil
        #expect(r == plain && r.hashValue == plain.hashValue)
        // Equal contents in two separate boxes are equal requests.
        #expect(Fixture.request(relocates: "L0", drainMs: 5) == Fixture.request(relocates: "L0", drainMs: 5))
    }

    @Test func endingFieldsAreValuesAndClearBackToEqual() throws {
        var t = LeaseTable()
        let a = try t.admit(Fixture.request(), context: Fixture.context()).lease
        var l = a
        l.drainEndsAt = BootInstant(nanoseconds: 42)
        l.replacedBy = "L2"
        let copy = l
        l.endedAt = Fixture.now
        #expect(copy.endedAt == nil && copy.replacedBy == "L2" && copy.drainEndsAt == BootInstant(nanoseconds: 42))
        #expect(l.endedAt == Fixture.now && l != copy)
        l.drainEndsAt = nil
        l.replacedBy = nil
        l.endedAt = nil
        #expect(l == a)
    }
}

import Testing
@testable import AIPagingCore

@Suite struct JournalRecordTests {
    func lease(_ id: String = "L1", ttl: UInt64 = 30_000) throws -> Lease {
        var t = LeaseTable()
        let a = try t.admit(Fixture.request(id: id, ttlMs: ttl, generation: 4), context: Fixture.context())
        var l = a.lease
        l.state = .active
        l.switchedAt = Fixture.now.boot
        return l
    }

    @Test func roundTripsOnTheSameBoot() throws {
        let l = try lease()
        let json = JournalRecord.lease(l).json(bootID: "b1", clock: Fixture.now)
        let back = try JournalRecord.decode(try JSON.parse(json.serialized()), bootID: "b1", clock: Fixture.now)
        #expect(back == .lease(l))
        let e = JournalRecord.ended(id: "x", state: .revoked, generation: 7, at: Fixture.now.wall, mark: 0xa1000009, point: "ep")
        #expect(try JournalRecord.decode(e.json(bootID: "b1", clock: Fixture.now), bootID: "b1", clock: Fixture.now) == e)
    }

    @Test func anotherBootMovesDeadlinesThroughWallTime() throws {
        var l = try lease()
        l.state = .draining
        l.drainEndsAt = Fixture.now.boot.adding(milliseconds: 5000)
        let json = JournalRecord.lease(l).json(bootID: "old-boot", clock: Fixture.now)
        // After a reboot the boot clock restarted near zero; 10 s of wall time have passed.
        let later = ClockReading(boot: BootInstant(nanoseconds: 2_000_000_000), wall: Fixture.now.wall.adding(milliseconds: 10_000))
        guard case .lease(let back) = try JournalRecord.decode(json, bootID: "new-boot", clock: later) else { Issue.record("not a lease"); return }
        #expect(back.deadline == later.boot.adding(milliseconds: 20_000))      // 30 s ttl, 10 s gone
        #expect(back.drainEndsAt == later.boot)                                  // drain end passed: clamped to now
        #expect(back.mark == l.mark && back.qosClass == l.qosClass && back.request == l.request)
    }

    @Test func replayKeepsTheLatestDropsTheEndedAndTheOverdue() throws {
        let a = try lease("a"), b = try lease("b", ttl: 1000)
        var c = try lease("c")
        c.mark = Layout.markPrefix | 77
        let records: [JournalRecord] = [
            .lease(a), .lease(b), .lease(c),
            .ended(id: "c", state: .revoked, generation: 4, at: Fixture.now.wall, mark: c.mark, point: "ep"),
        ]
        let (t, dropped) = LeaseTable.replay(records, now: Fixture.now.boot.adding(milliseconds: 2000), groupSize: 256)
        #expect(Set(t.leases.keys) == ["a"])
        #expect(dropped.map(\.id) == ["b"])
        #expect(t.endedGenerations["c"] == 4 && t.endedGenerations["b"] == 4)
        #expect(t.nextSlot(point: "ep") == 78)   // marks are not reused after a restart
        #expect(t.index("ep")?.guaranteedKbit == a.request.qos.rateKbit)
        // A cursor from a compaction moves the rotation on.
        let (t2, _) = LeaseTable.replay([.cursor(point: "ep", nextSlot: 500), .lease(a)], now: Fixture.now.boot, groupSize: 256)
        #expect(t2.nextSlot(point: "ep") == 500)
    }

    /// `withdrawn` undoes a `lease` record written ahead of a failed install: the lease is gone
    /// and the tombstone its id had before is back (none if it had none).
    @Test func replayOfAWithdrawnLease() throws {
        let a = try lease("a"), b = try lease("b")
        let end = JournalRecord.ended(id: "b", state: .revoked, generation: 4, at: Fixture.now.wall, mark: b.mark, point: "ep")
        var b5 = b
        b5.request.generation = 5
        let records: [JournalRecord] = [.lease(b), end, .lease(a), .lease(b5), .withdrawn(id: "a"), .withdrawn(id: "b")]
        let (t, dropped) = LeaseTable.replay(records, now: Fixture.now.boot, groupSize: 256)
        #expect(t.leases.isEmpty && dropped.isEmpty)
        #expect(t.endedGenerations["b"] == 4 && t.endedGenerations["a"] == nil)
        // A later admission of the id stands.
        let (t2, _) = LeaseTable.replay(records + [.lease(a)], now: Fixture.now.boot, groupSize: 256)
        #expect(Set(t2.leases.keys) == ["a"])
        // Round trip.
        let json = JournalRecord.withdrawn(id: "a").json(bootID: "x", clock: Fixture.now)
        #expect(try JournalRecord.decode(json, bootID: "x", clock: Fixture.now) == .withdrawn(id: "a"))
    }

    @Test func crc32MatchesZlib() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([]) == 0)
    }
}

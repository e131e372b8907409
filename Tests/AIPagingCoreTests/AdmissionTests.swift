import Testing
@testable import AIPagingCore

@Suite struct AdmissionTests {
    func catalogPolicy() throws -> Policy {
        try Policy.parse(Array("""
        {"policy_version":1,"name":"t","max_ttl_ms":60000,"default_drain_ms":1000,"max_drain_ms":5000,
         "max_relocations_per_minute":2,
         "anchors":[{"id":"edge-1","address":"198.18.2.2","ports":[7000]},{"id":"cloud-1","address":"198.18.3.2"}],
         "accept_unsigned":true}
        """.utf8))
    }

    @Test func admitsAndAllocates() throws {
        var t = LeaseTable()
        let a = try t.admit(Fixture.request(), context: Fixture.context())
        #expect(a.kind == .new)
        #expect(a.lease.state == .admitted)
        #expect(a.lease.mark == Layout.markPrefix | 1)
        #expect(a.lease.qosClass == QoSClassRef(interface: "veth-a", major: 0x100, minor: 2))
        #expect(a.lease.deadline == Fixture.now.boot.adding(milliseconds: 30_000))
        #expect(a.lease.expiresAt == Fixture.now.wall.adding(milliseconds: 30_000))
        #expect(t.index("ep")?.guaranteedKbit == 1000)
        t.activate("L1", switchedAt: Fixture.now.boot)
        #expect(t["L1"]?.state == .active)
    }

    @Test func ttlAndDrainLimits() throws {
        let p = try catalogPolicy()
        var t = LeaseTable()
        #expect { try t.admit(Fixture.request(ttlMs: 60_001), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .ttlExceedsPolicy
        }
        #expect { try t.admit(Fixture.request(drainMs: 6000), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .invalidDrain
        }
        var past = Fixture.request()
        past.lifetime = .expiresAt(Fixture.now.wall.adding(milliseconds: -1))
        #expect { try t.admit(past, context: Fixture.context(policy: p)) } throws: { ($0 as? LeaseError)?.cause == .alreadyExpired }
        var far = Fixture.request()
        far.lifetime = .expiresAt(Fixture.now.wall.adding(milliseconds: 120_000))
        #expect { try t.admit(far, context: Fixture.context(policy: p)) } throws: { ($0 as? LeaseError)?.cause == .ttlExceedsPolicy }
        var ok = Fixture.request()
        ok.lifetime = .expiresAt(Fixture.now.wall.adding(milliseconds: 10_000))
        let a = try t.admit(ok, context: Fixture.context(policy: p))
        #expect(a.lease.deadline == Fixture.now.boot.adding(milliseconds: 10_000))
        #expect(t.liveCount == 1)
    }

    @Test func anchorCatalog() throws {
        let p = try catalogPolicy()
        var t = LeaseTable()
        #expect { try t.admit(Fixture.request(anchorID: "nowhere"), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .unknownAnchor
        }
        #expect { try t.admit(Fixture.request(anchor: "198.18.9.9"), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .anchorMismatch
        }
        #expect { try t.admit(Fixture.request(port: 8080), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .anchorMismatch
        }
        _ = try t.admit(Fixture.request(id: "ok", port: 9999, anchorID: "cloud-1", anchor: "198.18.3.2"), context: Fixture.context(policy: p))
        #expect(t.liveCount == 1)
    }

    @Test func capacity() throws {
        var t = LeaseTable()
        _ = try t.admit(Fixture.request(id: "a", client: "198.18.1.2", rate: 60_000, ceil: 60_000), context: Fixture.context(capacity: 100_000))
        #expect { try t.admit(Fixture.request(id: "b", client: "198.18.1.3", rate: 40_001, ceil: 50_000), context: Fixture.context(capacity: 100_000)) } throws: {
            ($0 as? LeaseError)?.cause == .insufficientCapacity
        }
        _ = try t.admit(Fixture.request(id: "c", client: "198.18.1.4", rate: 40_000, ceil: 50_000), context: Fixture.context(capacity: 100_000))
        #expect(t.index("ep")?.guaranteedKbit == 100_000)
    }

    @Test func classifierConflicts() throws {
        var t = LeaseTable()
        _ = try t.admit(Fixture.request(id: "a", aisi: "x"), context: Fixture.context())
        #expect { try t.admit(Fixture.request(id: "b", aisi: "y"), context: Fixture.context()) } throws: {
            guard let e = $0 as? LeaseError else { return false }
            return e.cause == .classifierConflict && e.message.contains("AISI x")
        }
        #expect { try t.admit(Fixture.request(id: "c", aisi: "x"), context: Fixture.context()) } throws: {
            ($0 as? LeaseError)?.cause == .classifierConflict
        }
        // Another client of the same service is a different classifier.
        _ = try t.admit(Fixture.request(id: "d", aisi: "y", client: "198.18.1.3"), context: Fixture.context())
        #expect(t.liveCount == 2)
    }

    @Test func replayAndRenewal() throws {
        var t = LeaseTable()
        _ = try t.admit(Fixture.request(id: "a", generation: 2), context: Fixture.context())
        t.activate("a", switchedAt: Fixture.now.boot)
        #expect { try t.admit(Fixture.request(id: "a", generation: 1), context: Fixture.context()) } throws: {
            ($0 as? LeaseError)?.cause == .replay
        }
        var later = Fixture.now
        later.boot = later.boot.adding(milliseconds: 10_000)
        later.wall = later.wall.adding(milliseconds: 10_000)
        let r = try t.admit(Fixture.request(id: "a", ttlMs: 60_000, rate: 1500, ceil: 3000, generation: 2), context: Fixture.context(now: later))
        guard case .renewal(let prev) = r.kind else { Issue.record("not a renewal"); return }
        #expect(prev.deadline == Fixture.now.boot.adding(milliseconds: 30_000))
        #expect(r.lease.deadline == later.boot.adding(milliseconds: 60_000))
        #expect(r.lease.mark == prev.mark)
        #expect(r.lease.qosClass == prev.qosClass)
        #expect(t.index("ep")?.guaranteedKbit == 1500)
        #expect { try t.admit(Fixture.request(id: "a", anchorID: "cloud-1", anchor: "198.18.3.2", generation: 2), context: Fixture.context()) } throws: {
            ($0 as? LeaseError)?.cause == .immutableField
        }
        // A priority change moves the lease to a group of that priority.
        let p = try t.admit(Fixture.request(id: "a", prio: 5, generation: 3), context: Fixture.context())
        #expect(t.index("ep")?.groups[p.lease.qosClass.group]?.priority == 5)
        #expect(t.index("ep")?.groups.values.filter { $0.priority == 1 }.isEmpty == true)
        // An ended lease id needs a higher generation.
        var u = LeaseTable.Undo()
        t.end("a", .revoked, at: Fixture.now, undo: &u)
        #expect { try t.admit(Fixture.request(id: "a", generation: 3), context: Fixture.context()) } throws: {
            ($0 as? LeaseError)?.cause == .replay
        }
        _ = try t.admit(Fixture.request(id: "a", generation: 4), context: Fixture.context())
    }

    /// Tombstones (replay protection for ended lease ids) are kept for the retention after the
    /// later of the end and the lease's expiry, then forgotten: the table does not grow with every
    /// lease the agent ever ended. A journal replay keeps the instant the retention counts from.
    @Test func tombstonesAreForgottenAfterTheirRetention() throws {
        var t = LeaseTable()
        t.tombstoneRetentionNs = 60_000_000_000
        _ = try t.admit(Fixture.request(id: "a", ttlMs: 30_000, generation: 2), context: Fixture.context())
        _ = try t.admit(Fixture.request(id: "b", client: "198.18.1.3", ttlMs: 30_000, generation: 1), context: Fixture.context())
        var u = LeaseTable.Undo()
        t.end("a", .revoked, at: Fixture.now, undo: &u)   // revoked 30 s before its expiry
        t.end("b", .revoked, at: Fixture.now, undo: &u)
        let expiry = Fixture.now.wall.adding(milliseconds: 30_000)
        #expect(t.endedGenerations == ["a": 2, "b": 1])
        // Retention counts from the expiry (the later instant): kept until expiry + 60 s.
        #expect(t.pruneTombstones(now: expiry.adding(milliseconds: 59_999)) == 0)
        #expect { try t.admit(Fixture.request(id: "a", generation: 2), context: Fixture.context()) } throws: {
            ($0 as? LeaseError)?.cause == .replay
        }
        // A journal replay of a compaction keeps the same instant.
        let records = t.tombstones.map { JournalRecord.ended(id: $0.id, state: .expired, generation: $0.generation, at: $0.retainedFrom, mark: 0, point: "ep") }
        var (restored, _) = LeaseTable.replay(records, now: Fixture.now.boot, groupSize: 256)
        restored.tombstoneRetentionNs = 60_000_000_000
        #expect(t.pruneTombstones(now: expiry.adding(milliseconds: 60_000)) == 2)
        #expect(t.endedGenerations.isEmpty)
        #expect(restored.endedGenerations == ["a": 2, "b": 1])
        #expect(restored.tombstones.allSatisfy { $0.retainedFrom == expiry })
        // After the retention the id is free again (a ttl COMMIT under it is a new lease).
        _ = try t.admit(Fixture.request(id: "a", generation: 1), context: Fixture.context())
        // A re-ended lease keeps only its newest tombstone.
        t.end("a", .revoked, at: Fixture.now, undo: &u)
        #expect(t.tombstones.count == 1 && t.endedGenerations["a"] == 1)
    }

    @Test func relocationRules() throws {
        let p = try catalogPolicy()
        var t = LeaseTable()
        _ = try t.admit(Fixture.request(id: "old", aisi: "s", rate: 60_000, ceil: 60_000), context: Fixture.context(policy: p, iface: "to-edge"))
        #expect { try t.admit(Fixture.request(id: "n", aisi: "s", relocates: "old"), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .relocationConflict   // old is only admitted, not active
        }
        t.activate("old", switchedAt: Fixture.now.boot)
        #expect { try t.admit(Fixture.request(id: "n", aisi: "other", relocates: "old"), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .relocationAISIMismatch
        }
        #expect { try t.admit(Fixture.request(id: "n", aisi: "s", relocates: "ghost"), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .relocationTargetUnknown
        }
        #expect { try t.admit(Fixture.request(id: "n", aisi: "s", port: 7001, relocates: "old"), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .anchorMismatch || ($0 as? LeaseError)?.cause == .relocationConflict
        }
        // Capacity counts the old lease as released: 60 + 60 > 100 but the old one goes.
        let r = try t.admit(Fixture.request(id: "n", aisi: "s", anchorID: "cloud-1", anchor: "198.18.3.2", rate: 60_000, ceil: 60_000, relocates: "old", drainMs: 500),
                            context: Fixture.context(policy: p, iface: "to-cloud"))
        #expect(r.kind == .relocation(old: "old"))
        #expect(t["old"]?.state == .draining)
        #expect(t["old"]?.drainEndsAt == Fixture.now.boot.adding(milliseconds: 500))
        #expect(t["old"]?.replacedBy == "n")
        #expect(t.steeringOwner(point: "ep", classifier: r.lease.classifier)?.id == "n")
        #expect(t.index("ep")?.guaranteedKbit == 60_000)
        // Undo puts everything back.
        t.rollback(r.undo)
        #expect(t["n"] == nil)
        #expect(t["old"]?.state == .active)
        #expect(t.steeringOwner(point: "ep", classifier: r.lease.classifier)?.id == "old")
        #expect(t.relocationsInWindow(aisi: "s", now: Fixture.now.boot) == 0)
    }

    @Test func relocationRateLimit() throws {
        let p = try catalogPolicy()   // 2 per minute
        var t = LeaseTable()
        _ = try t.admit(Fixture.request(id: "l0", aisi: "s"), context: Fixture.context(policy: p))
        t.activate("l0", switchedAt: Fixture.now.boot)
        var prev = "l0"
        for i in 1...2 {
            _ = try t.admit(Fixture.request(id: "l\(i)", aisi: "s", anchorID: i % 2 == 1 ? "cloud-1" : "edge-1",
                                            anchor: i % 2 == 1 ? "198.18.3.2" : "198.18.2.2", relocates: prev), context: Fixture.context(policy: p))
            t.activate("l\(i)", switchedAt: Fixture.now.boot)
            prev = "l\(i)"
        }
        #expect { try t.admit(Fixture.request(id: "l3", aisi: "s", anchorID: "cloud-1", anchor: "198.18.3.2", relocates: prev), context: Fixture.context(policy: p)) } throws: {
            ($0 as? LeaseError)?.cause == .relocationRateExceeded
        }
        var later = Fixture.now
        later.boot = later.boot.adding(milliseconds: 61_000)
        later.wall = later.wall.adding(milliseconds: 61_000)
        _ = try t.admit(Fixture.request(id: "l3", aisi: "s", anchorID: "cloud-1", anchor: "198.18.3.2", relocates: prev), context: Fixture.context(now: later, policy: p))
    }

    /// The dense lease store: slots are reused, equality ignores where leases sit, removing the
    /// last lease empties it.
    @Test func leaseStoreReusesSlots() throws {
        var t = LeaseTable()
        for i in 0..<5 { _ = try t.admit(Fixture.request(id: "s\(i)", client: "198.18.1.\(i + 10)"), context: Fixture.context()) }
        var store = t.leases
        let l2 = try #require(store["s2"])
        store["s2"] = nil
        #expect(store.count == 4 && store["s2"] == nil)
        var other = store
        store["s2"] = l2                     // back into the freed slot
        #expect(store == t.leases)
        other["s9"] = l2                      // same lease under another id: not equal
        #expect(other != t.leases)
        #expect(Set(store.values.map(\.id)) == ["s0", "s1", "s2", "s3", "s4"])
        for i in 0..<5 { store.removeValue(forKey: "s\(i)") }
        #expect(store.isEmpty && Array(store.values).isEmpty)
        store["s3"] = l2
        #expect(store.count == 1 && store["s3"]?.id == "s2")
    }

    @Test func failedAdmissionChangesNothing() throws {
        var t = LeaseTable()
        _ = try t.admit(Fixture.request(id: "a"), context: Fixture.context())
        let before = t.leases
        let slot = t.nextSlot(point: "ep")
        #expect(throws: LeaseError.self) { try t.admit(Fixture.request(id: "b", rate: 200_000, ceil: 200_000), context: Fixture.context()) }
        #expect(t.leases == before)
        #expect(t.nextSlot(point: "ep") == slot)
    }

    @Test func marksRotateAndClassesFillGroups() throws {
        var t = LeaseTable(groupSize: 3)
        var marks: [UInt32] = []
        var classes: [QoSClassRef] = []
        for i in 0..<7 {
            let a = try t.admit(Fixture.request(id: "l\(i)", client: "198.18.1.\(i + 10)"), context: Fixture.context())
            marks.append(a.lease.mark)
            classes.append(a.lease.qosClass)
        }
        #expect(Set(marks).count == 7)
        #expect(classes.map(\.major) == [0x100, 0x100, 0x100, 0x101, 0x101, 0x101, 0x102])
        #expect(classes.map(\.minor) == [2, 3, 4, 2, 3, 4, 2])
        var u = LeaseTable.Undo()
        t.end("l1", .revoked, at: Fixture.now, undo: &u)
        let again = try t.admit(Fixture.request(id: "n", client: "198.18.1.99"), context: Fixture.context())
        #expect(again.lease.qosClass == QoSClassRef(interface: "veth-a", major: 0x100, minor: 3))
        #expect(again.lease.mark == Layout.markPrefix | 8)   // marks do not come back at once
    }
}

@Suite struct StateMachineTests {
    @Test func legalTransitions() {
        let legal: [(LeaseState, LeaseEvent, LeaseState)] = [
            (.admitted, .installed, .active), (.active, .renewed, .active), (.active, .switchedAway, .draining),
            (.draining, .drainEnded, .released), (.active, .expired, .expired), (.draining, .expired, .expired),
            (.admitted, .revoked, .revoked), (.active, .revoked, .revoked), (.draining, .revoked, .revoked),
        ]
        let events: [LeaseEvent] = [.installed, .renewed, .switchedAway, .drainEnded, .expired, .revoked]
        for s in LeaseState.allCases {
            for e in events {
                let expected = legal.first { $0.0 == s && $0.1 == e }?.2
                #expect(LeaseStateMachine.next(s, on: e) == expected, "\(s) on \(e)")
            }
        }
        for s in [LeaseState.released, .expired, .revoked] { #expect(!s.isLive) }
    }
}

@Suite struct DeadlineQueueTests {
    @Test func ordersAndSkipsStale() {
        var q = DeadlineQueue()
        let base = BootInstant(nanoseconds: 1000)
        q.push(base.adding(nanoseconds: 30), "c")
        q.push(base.adding(nanoseconds: 10), "a")
        q.push(base.adding(nanoseconds: 20), "b")
        q.push(base.adding(nanoseconds: 5), "stale")
        let current: [String: BootInstant] = ["a": base.adding(nanoseconds: 10), "b": base.adding(nanoseconds: 20), "c": base.adding(nanoseconds: 30)]
        let valid = { (i: BootInstant, id: String) in current[id] == i }
        #expect(q.peek(isCurrent: valid) == base.adding(nanoseconds: 10))
        #expect(q.popDue(at: base.adding(nanoseconds: 20), isCurrent: valid) == ["a", "b"])
        #expect(q.peek(isCurrent: valid) == base.adding(nanoseconds: 30))
    }
}

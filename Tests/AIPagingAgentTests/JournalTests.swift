@testable import AIPagingAgent
import CAIPagingShim
import AIPagingCore
import Foundation
import Testing

@Suite struct LeaseJournalTests {
    func tempDir() throws -> String {
        let d = NSTemporaryDirectory() + "aipaging-journal-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    func record(_ id: String, clock: ClockReading) -> Lease {
        let req = CommitRequest(leaseID: id, aisi: "s", aist: "t", lifetime: .ttl(milliseconds: 60_000),
                                classifier: Classifier(client: IPAddress("198.18.1.2")!, service: IPAddress("198.18.100.10")!, proto: .udp, port: 7000),
                                anchor: Anchor(id: "edge-1", address: IPAddress("198.18.2.2")!, port: 7000),
                                qos: QoSBinding(rateKbit: 10, ceilKbit: 20, priority: 1))
        return Lease(request: req, state: .active, enforcementPoint: "ep", admittedAt: clock, deadline: clock.boot.adding(milliseconds: 60_000),
                     expiresAt: clock.wall.adding(milliseconds: 60_000), mark: Layout.markPrefix | 1,
                     qosClass: QoSClassRef(interface: "eth0", major: 0x100, minor: 2))
    }

    /// A lease service on one enforcement point with an in-memory kernel and its journal in `dir`.
    /// A journal in `dir` with `n` leases `l0`, `l1`, ... appended one by one.
    func journal(_ dir: String, leases n: Int, clock: ClockReading) throws -> LeaseJournal {
        let j = try LeaseJournal(stateDir: dir)
        for i in 0..<n { try j.append([.lease(record("l\(i)", clock: clock))], clock: clock) }
        return j
    }

    /// The records' lease ids in order ("cursor" for a cursor record).
    func leaseIDs(_ records: [JournalRecord]) -> [String] {
        records.map { r in
            if case .lease(let l) = r { return l.id }
            return "cursor"
        }
    }

    /// The journal file's size on disk.
    func fileBytes(_ dir: String) -> Int? {
        (try? FileManager.default.attributesOfItem(atPath: dir + "/leases.journal"))?[.size] as? Int
    }

    func journaledService(_ dir: String, _ clock: ManualClock) throws -> LeaseService {
        LeaseService(points: [EnforcementPointConfig(name: "ep", netns: nil, capacityKbit: 1_000_000)],
                     backends: ["ep": InMemoryBackend { clock.now().boot }], policy: .lab, clock: clock,
                     journal: try LeaseJournal(stateDir: dir))
    }

    /// A journaled service that has replayed its journal and started.
    func startedJournaledService(_ dir: String, _ clock: ManualClock) async throws -> LeaseService {
        let service = try journaledService(dir, clock)
        _ = try await service.recover()
        try await service.start()
        return service
    }

    @Test func appendsLoadsAndCutsATornTail() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clock = SystemClock().now()
        let j = try LeaseJournal(stateDir: dir)
        try j.append([.lease(record("a", clock: clock)), .lease(record("b", clock: clock))], clock: clock)
        try j.append([.ended(id: "a", state: .revoked, generation: 0, at: clock.wall, mark: Layout.markPrefix | 1, point: "ep")], clock: clock)
        // A crash in the middle of the next write leaves half a line.
        let fh = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/leases.journal"))
        try fh.seekToEnd()
        fh.write(Data("1234abcd {\"op\":\"lease\",\"req".utf8))
        try fh.close()
        let again = try LeaseJournal(stateDir: dir)
        let (records, cut) = try again.load(clock: clock)
        #expect(records.count == 3)
        #expect(cut == "1234abcd {\"op\":\"lease\",\"req".utf8.count)
        // The file ends after the last good record now, and appends continue from there.
        try again.append([.lease(record("c", clock: clock))], clock: clock)
        #expect(try LeaseJournal(stateDir: dir).load(clock: clock).records.count == 4)
    }

    @Test func aCorruptedRecordEndsTheJournal() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clock = SystemClock().now()
        let j = try LeaseJournal(stateDir: dir)
        try j.append([.lease(record("a", clock: clock)), .lease(record("b", clock: clock))], clock: clock)
        var text = try String(contentsOfFile: dir + "/leases.journal", encoding: .utf8)
        text = text.replacingOccurrences(of: "\"lease_id\":\"b\"", with: "\"lease_id\":\"x\"")
        try text.write(toFile: dir + "/leases.journal", atomically: false, encoding: .utf8)
        let (records, cut) = try LeaseJournal(stateDir: dir).load(clock: clock)
        #expect(records.count == 1 && cut > 0)
    }

    @Test func compactionKeepsExactlyTheLiveState() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clock = SystemClock().now()
        let j = try journal(dir, leases: 50, clock: clock)
        try j.compact([.cursor(point: "ep", nextSlot: 9), .lease(record("keep", clock: clock))], clock: clock)
        try j.append([.lease(record("after", clock: clock))], clock: clock)
        let (records, _) = try LeaseJournal(stateDir: dir).load(clock: clock)
        #expect(records.count == 3)
        #expect(!FileManager.default.fileExists(atPath: dir + "/leases.journal.tmp"))
    }

    @Test func aBackgroundCompactionKeepsWhatWasAppendedWhileItsSnapshotWasWritten() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clock = SystemClock().now()
        let j = try journal(dir, leases: 50, clock: clock)
        j.beginCompaction([.cursor(point: "ep", nextSlot: 9), .lease(record("keep", clock: clock))], clock: clock)
        #expect(!j.needsCompaction)
        // Appends go on to the journal while the snapshot is written, and are durable there.
        try j.append([.lease(record("during", clock: clock))], clock: clock)
        #expect(try LeaseJournal(stateDir: dir).load(clock: clock).records.count == 51)
        #expect(try j.finishCompaction(wait: true))
        try j.append([.lease(record("after", clock: clock))], clock: clock)
        let (records, cut) = try LeaseJournal(stateDir: dir).load(clock: clock)
        #expect(cut == 0)
        #expect(leaseIDs(records) == ["cursor", "keep", "during", "after"])
        #expect(!FileManager.default.fileExists(atPath: dir + "/leases.journal.tmp"))
        #expect(j.sizeBytes == fileBytes(dir))
    }

    /// What the journal gets while the snapshot is written, and while the switch waits, is
    /// copied (and made durable) by the compaction's thread, so the switch on the lease thread
    /// copies only what came after its last look.
    @Test func theCompactionsThreadCopiesWhatWasAppendedMeanwhile() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clock = SystemClock().now()
        let j = try journal(dir, leases: 20, clock: clock)
        let snapshotMayGo = DispatchSemaphore(value: 0)
        let keep = record("keep", clock: clock)
        j.beginCompaction(clock: clock) {
            snapshotMayGo.wait()
            return [.lease(keep)]
        }
        // More than the switch is left to copy, appended while the snapshot is being made, and
        // again after that, while the switch would wait.
        var during: [String] = []
        func appendPastTheSlack() throws {
            var bytes = 0
            while bytes <= 2 * LeaseJournal.catchUpSlackBytes {
                let before = j.sizeBytes
                during.append("d\(during.count)")
                try j.append([.lease(record(during.last!, clock: clock))], clock: clock)
                bytes += j.sizeBytes - before
            }
        }
        try appendPastTheSlack()
        snapshotMayGo.signal()
        let deadline = Date().addingTimeInterval(10)
        while !j.compactionReady && Date() < deadline { usleep(1000) }
        #expect(j.compactionReady)
        try appendPastTheSlack()
        func left() -> Int { j.sizeBytes - (j.compactionCopiedTo ?? 0) }
        while left() > LeaseJournal.catchUpSlackBytes && Date() < deadline { usleep(1000) }
        #expect(left() <= LeaseJournal.catchUpSlackBytes)
        // What the thread has not copied (at most the slack; here also one record appended after
        // its last look) is copied by the switch.
        try j.append([.lease(record("late", clock: clock))], clock: clock)
        let rest = left()
        #expect(try j.finishCompaction())
        #expect(j.lastSwitchTailBytes == rest)
        #expect(rest < LeaseJournal.catchUpSlackBytes + 1024)
        try j.append([.lease(record("after", clock: clock))], clock: clock)
        let (records, cut) = try LeaseJournal(stateDir: dir).load(clock: clock)
        #expect(cut == 0)
        #expect(leaseIDs(records) == ["keep"] + during + ["late", "after"])
        #expect(j.sizeBytes == fileBytes(dir))
        // The replaced journal is closed (in the background), not leaked.
        func replacedStillOpen() -> Bool {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return fds.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + $0)) == dir + "/leases.journal (deleted)" }
        }
        let closeBy = Date().addingTimeInterval(5)
        while replacedStillOpen() && Date() < closeBy { usleep(1000) }
        #expect(!replacedStillOpen())
    }

    @Test func aCompactionNotFinishedLeavesTheJournalAsItWas() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clock = SystemClock().now()
        do {
            let j = try journal(dir, leases: 20, clock: clock)
            j.beginCompaction([.lease(record("keep", clock: clock))], clock: clock)
            try j.append([.lease(record("during", clock: clock))], clock: clock)
        }   // the journal is closed (an agent stopped) before the switch
        #expect(try LeaseJournal(stateDir: dir).load(clock: clock).records.count == 21)
        #expect(!FileManager.default.fileExists(atPath: dir + "/leases.journal.tmp"))
    }

    /// A restarted agent gets its leases back from the journal (in-memory kernel).
    @Test func aRestartedServiceHasItsLeasesBack() async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clock = ManualClock()
        func service() throws -> LeaseService { try journaledService(dir, clock) }
        let first = try await startedJournaledService(dir, clock)
        let req = try CommitDecoder.decode(lease("K1", ttlMs: 10_000))
        let out = try await first.commit(req)
        var reloc = try CommitDecoder.decode(lease("K2", anchorID: "cloud-1", anchor: "198.18.3.2", relocates: "K1", drainMs: 3000))
        reloc.generation = 0
        _ = try await first.commit(reloc)
        _ = try await first.commit(try CommitDecoder.decode(lease("K3", client: "198.18.1.3", ttlMs: 10_000)))
        _ = try await first.revoke("K3")
        // Each batch's fdatasync is timed, and the lease thread's wait for it.
        let stats = await first.snapshot().stats
        #expect(stats.journalSync.count >= 4 && stats.journalWait.count == stats.journalSync.count)
        #expect(stats.journalSync.maxNs > 0)
        await first.stop(flush: false)

        clock.advance(milliseconds: 4000)   // K1's drain ended while the agent was down
        let second = try service()
        let r = try await second.recover()
        #expect(r.restored == 1 && r.dropped == 1)
        let k2 = try #require(await second.lease("K2"))
        #expect(k2.state == .active)
        #expect(k2.deadline == out.lease.admittedAt.boot.adding(milliseconds: 30_000))
        let k1 = await second.lease("K1"), k3 = await second.lease("K3")
        #expect(k1 == nil && k3 == nil)
        // Replays stay refused across the restart.
        do {
            _ = try await second.commit(try CommitDecoder.decode(lease("K3", client: "198.18.1.3")))
            Issue.record("replay admitted")
        } catch let e as LeaseError {
            #expect(e.cause == .replay)
        }
    }
}

extension LeaseJournalTests {
    /// A batch's journal records are written ahead of its kernel install (their fdatasync runs
    /// while the kernel is changed), so an install that then fails has to be corrected in the
    /// journal: after a restart, no refused admission, renewal or relocation comes back.
    @Test func aRefusedInstallDoesNotComeBackAfterARestart() async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clock = ManualClock()
        func service() throws -> LeaseService { try journaledService(dir, clock) }
        let first = try await startedJournaledService(dir, clock)
        _ = try await first.commit(try CommitDecoder.decode(lease("K1", ttlMs: 10_000)))
        let k3 = try await first.commit(try CommitDecoder.decode(lease("K3", client: "198.18.1.6", ttlMs: 10_000))).lease
        _ = try await first.commit(try CommitDecoder.decode(lease("T", client: "198.18.1.5")))
        _ = try await first.revoke("T")

        // From now on the kernel refuses anything toward the cloud anchor and the steering of
        // clients .4, .5 and .6 (every retry too).
        let cloud = IPAddress("198.18.3.2")!
        let refusedClients: Set<IPAddress> = [IPAddress("198.18.1.4")!, IPAddress("198.18.1.5")!, IPAddress("198.18.1.6")!]
        _ = await first.withBackend("ep") { backend in
            (backend as! InMemoryBackend).failWhen = { plan in
                plan.nft.contains {
                    switch $0 {
                    case .addAnchor(_, let a, _, _): return a == cloud
                    case .addSteer(let c, _, _): return refusedClients.contains(c.client)
                    default: return false
                    }
                }
            }
        }
        clock.advance(milliseconds: 1000)
        func refused(_ json: JSON) async throws {
            do {
                _ = try await first.commit(try CommitDecoder.decode(json))
                Issue.record("admitted \(json)")
            } catch let e as LeaseError {
                #expect(e.cause == .enforcementFailed)
            }
        }
        try await refused(lease("N", client: "198.18.1.4"))                       // a new lease
        try await refused(lease("T", client: "198.18.1.5", generation: 1))        // an ended id, a newer generation
        try await refused(lease("K3", client: "198.18.1.6", ttlMs: 20_000))       // a renewal
        var reloc = try CommitDecoder.decode(lease("K2", anchorID: "cloud-1", anchor: "198.18.3.2", relocates: "K1", drainMs: 3000))
        reloc.generation = 0
        do {
            _ = try await first.commit(reloc)
            Issue.record("relocation admitted")
        } catch let e as LeaseError {
            #expect(e.cause == .enforcementFailed)
        }
        #expect(await first.lease("K1")?.state == .active)
        await first.stop(flush: false)

        let second = try service()
        let r = try await second.recover()
        #expect(r.restored == 2 && r.dropped == 0)
        let n = await second.lease("N"), k2 = await second.lease("K2"), t = await second.lease("T")
        #expect(n == nil && k2 == nil && t == nil)
        let k1 = try #require(await second.lease("K1"))
        #expect(k1.state == .active && k1.replacedBy == nil && k1.drainEndsAt == nil)
        #expect(await second.lease("K3")?.deadline == k3.deadline)
        try await second.start()
        // T's tombstone (generation 0) is back; N never had one.
        do {
            _ = try await second.commit(try CommitDecoder.decode(lease("T", client: "198.18.1.5")))
            Issue.record("replay admitted")
        } catch let e as LeaseError {
            #expect(e.cause == .replay)
        }
        _ = try await second.commit(try CommitDecoder.decode(lease("N", client: "198.18.1.4")))
        await second.stop(flush: false)
    }
}

extension LeaseJournalTests {
    /// A commit whose journal record cannot be written (the disk is full) is refused with its
    /// cause, and nothing of it stays in the kernel, although the records now go out before the
    /// kernel install.
    @Test func aCommitThatCannotBeJournaledIsRefusedAndLeavesNoKernelState() async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createSymbolicLink(atPath: dir + "/leases.journal", withDestinationPath: "/dev/full")
        let clock = ManualClock()
        let service = try journaledService(dir, clock)
        try await service.start()
        do {
            _ = try await service.commit(try CommitDecoder.decode(lease("F")))
            Issue.record("admitted without a durable record")
        } catch let e as LeaseError {
            #expect(e.cause == .enforcementFailed && e.message.contains("could not be recorded durably"), "\(e)")
        }
        #expect(await service.lease("F") == nil)
        let kernel = try await service.observeKernel("ep")
        #expect(kernel.steering.isEmpty && kernel.anchors.isEmpty && kernel.qos.isEmpty && kernel.leafCount == 0)
        await service.stop(flush: false)
    }
}

@Suite struct ShimCRCTests {
    @Test func shimCRCEqualsTheReference() {
        for n in [0, 1, 7, 8, 9, 63, 64, 1000] {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
            #expect(bytes.withUnsafeBytes { aip_crc32(0, $0.baseAddress, $0.count) } == CRC32.checksum(bytes))
        }
    }
}

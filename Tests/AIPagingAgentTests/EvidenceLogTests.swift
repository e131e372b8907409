@testable import AIPagingAgent
import AIPagingCore
import Foundation
import Logging
import Testing

/// The evidence log's writer wakes for the first record after a pause and otherwise finds the
/// records queued meanwhile by itself, one write-behind nap after its last write.
@Suite struct EvidenceLogTests {
    static func record(_ n: Int) -> EVIRecord {
        EVIRecord(kind: .agent, event: "test-\(n)", aisi: nil, leaseID: nil, enforcementPoint: nil, anchor: nil, qos: nil,
                  relatedLease: nil, time: WallTime(nanosecondsSinceEpoch: 1_700_000_000_000_000_000 + Int64(n)), monotonicNs: UInt64(n))
    }

    /// Polls until `count` records are written (10 s at most: far less than the 60 s sync
    /// interval, the writer's only other reason to wake).
    static func waitWritten(_ log: EvidenceLog, _ count: UInt64) async throws {
        for _ in 0..<10_000 where log.status.recordsWritten < count { try await Task.sleep(for: .milliseconds(1)) }
        #expect(log.status.recordsWritten == count)
    }

    @Test func recordsQueuedDuringTheWritersNapAreWrittenWithoutWakingIt() async throws {
        let dir = try AgentTempDirs.make("aipaging-evilog-")
        defer { AgentTempDirs.remove(dir) }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let key = try EvidenceKey.loadOrCreate(dir: dir)
        // A long nap, so that the records below certainly come during it.
        let log = try EvidenceLog(stateDir: dir, key: key, syncIntervalMs: 60_000, writeBehindMs: 400, logger: logger)
        defer { log.close() }

        // (The writer thread may start after this first record.)
        log.append(Self.record(0))
        try await Self.waitWritten(log, 1)
        // Its nap ends with nothing queued: parked, so the next record wakes it.
        try await Task.sleep(for: .milliseconds(1000))
        let w = log.status.wakes
        log.append(Self.record(1))
        try await Self.waitWritten(log, 2)
        #expect(log.status.wakes == w + 1)

        // Within the nap after that write: queued, nobody woken, written when the nap ends.
        log.append(Self.record(2))
        log.append([Self.record(3), Self.record(4)])
        try await Self.waitWritten(log, 5)
        #expect(log.status.wakes == w + 1)

        // That nap found records, so the writer napped once more and then, finding none, parked:
        // the next record wakes it again.
        try await Task.sleep(for: .milliseconds(1500))
        log.append(Self.record(5))
        try await Self.waitWritten(log, 6)
        #expect(log.status.wakes == w + 2)

        // A query during a nap does not wait for its end: flush() wakes the writer.
        log.append(Self.record(6))
        await log.flush()
        #expect(log.status.recordsWritten == 7)
        #expect(log.status.wakes == w + 3)
    }
}

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

    /// Polls until `condition` holds, 10 s at most: far less than the test log's 60 s sync
    /// interval, the writer's only other reason to wake.
    static func wait(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<10_000 where !condition() { try await Task.sleep(for: .milliseconds(1)) }
        #expect(condition(), "\(what)")
    }

    @Test func recordsQueuedDuringTheWritersNapAreWrittenWithoutWakingIt() async throws {
        let dir = try AgentTempDirs.make("aipaging-evilog-")
        defer { AgentTempDirs.remove(dir) }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let key = try EvidenceKey.loadOrCreate(dir: dir)
        // A 2 s nap, so that the records appended right after a write certainly come during it.
        let log = try EvidenceLog(stateDir: dir, key: key, syncIntervalMs: 60_000, writeBehindMs: 2000, logger: logger)
        defer { log.close() }

        // The writer parks once it has nothing to write: the next record wakes it.
        try await Self.wait("the writer parks") { log.status.writerParked }
        let w = log.status.wakes
        log.append(Self.record(0))
        try await Self.wait("record 0 written") { log.status.recordsWritten == 1 }
        #expect(log.status.wakes == w + 1)

        // Within the nap after that write: queued, nobody woken, written when the nap ends.
        log.append(Self.record(1))
        log.append([Self.record(2), Self.record(3)])
        try await Self.wait("records 1-3 written") { log.status.recordsWritten == 4 }
        #expect(log.status.wakes == w + 1)

        // A query during the nap after that write does not wait for its end: flush() wakes the
        // writer, which writes what was queued before it.
        log.append(Self.record(4))
        await log.flush()
        #expect(log.status.recordsWritten == 5)
        #expect(log.status.wakes == w + 2)

        // That nap finds nothing and the writer parks again: the next record wakes it.
        try await Self.wait("the writer parks again") { log.status.writerParked }
        log.append(Self.record(5))
        try await Self.wait("record 5 written") { log.status.recordsWritten == 6 }
        #expect(log.status.wakes == w + 3)
    }
}

import AIPagingTestSupport
import Testing
import Foundation
@testable import AIPagingKernel
import AIPagingCore

/// Big transactions, the size cap and its splitting.
@Suite(.serialized) struct NFTablesBatchTests {
    /// `count` distinct IPv4 steering keys: clients 198.18.0.0 + i (inside 198.18.0.0/15).
    static func keys(_ count: Int, port: UInt16 = 7000) -> [NFTSteeringKey] {
        (0..<count).map { i in
            NFTSteeringKey(client: .v4(0xc612_0000 + UInt32(i)), service: NFT.ip("198.18.100.10"), proto: .udp, port: port)!
        }
    }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    @Test(.enabled(if: Shell.isRoot))
    func hundredThousandElementsInOneTransaction() throws {
        try NFT.withNamespace("big") { _, socket in
            try NFT.createSchema(socket)
            let t0 = Self.now()
            let tx = NFTTransaction()
            for (i, k) in Self.keys(100_000).enumerated() {
                tx.addSteering(k, mark: AIPagingNFT.leaseMark(slot: UInt32(i)), timeoutMs: 600_000)
            }
            let t1 = Self.now()
            let result = try socket.commit(tx)
            let t2 = Self.now()
            let listed = try socket.listSteering(family: .ipv4)
            let t3 = Self.now()
            print(String(format: "100000 elements: build %.0f ms, commit %.0f ms (%d bytes, %d transaction), dump+decode %.0f ms",
                         (t1 - t0) * 1000, (t2 - t1) * 1000, result.bytes, result.transactions, (t3 - t2) * 1000))
            #expect(result.transactions == 1 && result.operations == 100_000 && result.endAcknowledged)
            #expect(listed.count == 100_000)
            #expect(Set(listed.map(\.mark)).count == 100_000)
            if socket.reorderedDumpRetries > 0 { print("element dump retried \(socket.reorderedDumpRetries)x (hash resize during the dump)") }
        }
    }

    @Test(.enabled(if: Shell.isRoot))
    func transactionOverTheCapIsSplit() throws {
        try NFT.withNamespace("split") { _, socket in
            try NFT.createSchema(socket)
            let keys = Self.keys(3_000)
            let tx = NFTTransaction()
            for (i, k) in keys.enumerated() { tx.addSteering(k, mark: AIPagingNFT.leaseMark(slot: UInt32(i)), timeoutMs: 60_000) }
            let cap = 64 << 10
            #expect(tx.encodedBytes > 4 * cap)

            // Not allowed to split: nothing is sent.
            let refused = try #require(throws: NFTTransactionError.self) {
                try socket.commit(tx, maxTransactionBytes: cap, allowSplit: false)
            }
            #expect(refused.first.errno == EMSGSIZE)
            #expect(try socket.listSteering(family: .ipv4).isEmpty)

            let result = try socket.commit(tx, maxTransactionBytes: cap)
            #expect(result.transactions == (tx.encodedBytes + cap - 1) / cap || result.transactions == (tx.encodedBytes + cap - 1) / cap + 1)
            #expect(result.wasSplit && result.bytes <= result.transactions * cap)
            #expect(try socket.listSteering(family: .ipv4).count == 3_000)
        }
    }

    @Test(.enabled(if: Shell.isRoot))
    func aFailureInASplitCommitStopsThere() throws {
        try NFT.withNamespace("splitfail") { _, socket in
            try NFT.createSchema(socket)
            let keys = Self.keys(2_000)
            let existing = NFTTransaction()
            existing.addSteering(keys[1_999], mark: AIPagingNFT.leaseMark(slot: 1_999), timeoutMs: 60_000)
            try socket.commit(existing)

            let tx = NFTTransaction()
            for (i, k) in keys.enumerated() { tx.addSteering(k, mark: AIPagingNFT.leaseMark(slot: UInt32(i)), timeoutMs: 60_000) }
            let cap = tx.encodedBytes / 2 + 1_000   // two transactions; the duplicate is in the second
            let error = try #require(throws: NFTTransactionError.self) { try socket.commit(tx, maxTransactionBytes: cap) }
            #expect(error.totalTransactions == 2 && error.committedTransactions == 1)
            #expect(error.first.errno == EEXIST && error.first.operation.contains("198.18.7.207"))
            let present = try socket.listSteering(family: .ipv4).count
            #expect(present > 1 && present < 2_000)   // first transaction + the old element
        }
    }
}

import AIPagingTestSupport
import Testing
import Foundation
@testable import AIPagingKernel
import AIPagingCore

/// Element add / expiry / delete / renew, transaction atomicity and error attribution.
@Suite(.serialized) struct NFTablesLifecycleTests {
    let k1 = NFT.key("198.18.1.2", "198.18.100.10", .udp, 7000)
    let k2 = NFT.key("198.18.1.3", "198.18.100.10", .udp, 7000)
    let k6 = NFT.key("2001:db8:1::2", "2001:db8:100::10", .tcp, 443)

    @Test(.enabled(if: Shell.isRoot))
    func elementsExpireInTheKernel() throws {
        try NFT.withNamespace("expiry") { ns, socket in
            try NFT.createSchema(socket)
            let tx = NFTTransaction()
            tx.addSteering(k1, mark: NFT.mark1, timeoutMs: 300)
            tx.addSteering(k6, mark: NFT.mark2, timeoutMs: 300)
            tx.addAnchor(mark: NFT.mark1, address: NFT.ip("198.18.2.2"), port: 7000, timeoutMs: 300)
            tx.addQoS(mark: NFT.mark1, classid: 0x0001_0001, timeoutMs: 300)
            try socket.commit(tx)

            let listed = try socket.listSteering(family: .ipv4)
            #expect(listed.map(\.key) == [k1])
            #expect(listed.first?.timeoutMs == 300)
            #expect((listed.first?.expiresMs ?? 0) <= 300)
            #expect(try socket.listSteering(family: .ipv6).count == 1)
            #expect(try socket.listQoS().count == 2)

            usleep(400_000)
            #expect(try socket.listSteering(family: .ipv4).isEmpty)
            #expect(try socket.listSteering(family: .ipv6).isEmpty)
            #expect(try socket.listAnchors(family: .ipv4).isEmpty)
            #expect(try socket.listQoS().isEmpty)
            #expect(!(try ns.exec(["nft", "list", "map", "inet", "aipaging", "lease4"])).contains("elements"))
        }
    }

    /// The streamed counter read sees every qos element of a dump that spans many netlink
    /// rounds, once per mark and direction, and agrees with the element listing.
    @Test(.enabled(if: Shell.isRoot))
    func streamedCounterReadMatchesTheListing() throws {
        try NFT.withNamespace("ctrs") { _, socket in
            try NFT.createSchema(socket)
            try NFT.addQoSElements(socket, count: 3_000)
            var counters = CompactDictionary<UInt32, NFTQoSCounters>()
            counters[42] = NFTQoSCounters()  // emptied by the read
            try socket.readQoSCounters(into: &counters)
            #expect(counters.count == 3_000)
            #expect(counters.values.allSatisfy { $0.directions == 3 })
            let listed = try socket.listQoS()
            #expect(listed.count == 6_000)
            for e in listed {
                let c = counters[e.mark]
                #expect(c != nil)
                #expect((e.direction == .original ? c?.originalPackets : c?.replyPackets) == e.packets)
            }
            let empty = NFTTransaction()
            for i in 0..<3_000 { empty.deleteQoS(mark: 0xa100_0000 | UInt32(i + 1)) }
            try socket.commit(empty)
            try socket.readQoSCounters(into: &counters)
            #expect(counters.isEmpty)
        }
    }

    /// Reading counters by key (single-element GETs, 64 keys a request) gives what the dump
    /// gives for the marks asked for; marks with no elements are skipped and counted, wherever
    /// they fall in a request; asking only for absent marks is an error that says so.
    @Test(.enabled(if: Shell.isRoot))
    func keyedCounterReadMatchesTheDump() throws {
        try NFT.withNamespace("keyed") { _, socket in
            try NFT.createSchema(socket)
            try NFT.addQoSElements(socket, count: 1_000)
            var dumped = CompactDictionary<UInt32, NFTQoSCounters>()
            try socket.readQoSCounters(into: &dumped)
            var keyed = CompactDictionary<UInt32, NFTQoSCounters>()
            keyed[7] = NFTQoSCounters()   // emptied by the read
            // Every mark, plus absent ones at the start, inside and at the end of requests.
            let present = (1...1_000).map { 0xa100_0000 | UInt32($0) }
            var asked: [UInt32] = [0xa100_f001]
            for (i, m) in present.enumerated() {
                asked.append(m)
                if i % 97 == 5 { asked.append(0xa100_f002 + UInt32(i)) }
            }
            asked.append(0xa100_ffff)
            let missingMarks = asked.count - present.count
            let missing = try socket.readQoSCounters(marks: asked, into: &keyed)
            #expect(missing == 2 * missingMarks)
            #expect(keyed.count == 1_000 && dumped.count == 1_000)
            for (mark, c) in dumped { #expect(keyed[mark] == c) }
            // A subset: only those.
            let some = try socket.readQoSCounters(marks: present.prefix(10), into: &keyed)
            #expect(some == 0 && keyed.count == 10)
            // Replies that overflow a small receive buffer: smaller requests, the same result.
            socket.setReceiveBufferForTesting(8192)
            let again = try socket.readQoSCounters(marks: asked, into: &keyed)
            #expect(again == 2 * missingMarks && keyed.count == 1_000)
            for (mark, c) in dumped { #expect(keyed[mark] == c) }
            #expect(throws: KernelError.self) {
                try socket.readQoSCounters(marks: (1...100).map { 0xa101_0000 | UInt32($0) }, into: &keyed)
            }
        }
    }

    @Test(.enabled(if: Shell.isRoot))
    func deleteRemovesElementsAndMissingDeleteIsNamed() throws {
        try NFT.withNamespace("delete") { _, socket in
            try NFT.createSchema(socket)
            let add = NFTTransaction()
            add.addSteering(k1, mark: NFT.mark1, timeoutMs: 60_000)
            add.addAnchor(mark: NFT.mark1, address: NFT.ip("2001:db8:2::2"), port: 7000, timeoutMs: 60_000)
            add.addQoS(mark: NFT.mark1, classid: 0x0001_0001, timeoutMs: 60_000)
            try socket.commit(add)
            #expect(try socket.listAnchors(family: .ipv6).map(\.address) == [NFT.ip("2001:db8:2::2")])

            let del = NFTTransaction()
            del.deleteSteering(k1)
            del.deleteAnchor(mark: NFT.mark1, family: .ipv6)
            del.deleteQoS(mark: NFT.mark1)
            try socket.commit(del)
            #expect(try socket.listSteering(family: .ipv4).isEmpty)
            #expect(try socket.listAnchors(family: .ipv6).isEmpty)
            #expect(try socket.listQoS().isEmpty)

            let again = NFTTransaction()
            again.deleteSteering(k1)
            let error = try #require(throws: NFTTransactionError.self) { try socket.commit(again) }
            #expect(error.first.operation == "NFT_MSG_DELSETELEM lease4 198.18.1.2 . 198.18.100.10 . udp . 7000")
            #expect(error.first.errno == ENOENT)
        }
    }

    @Test(.enabled(if: Shell.isRoot), arguments: [NFTAckMode.errorsOnly, .perMessage])
    func aFailingOperationAbortsTheWholeTransaction(mode: NFTAckMode) throws {
        try NFT.withNamespace("atomic") { _, socket in
            try NFT.createSchema(socket)
            let first = NFTTransaction()
            first.addSteering(k1, mark: NFT.mark1, timeoutMs: 60_000)
            try socket.commit(first, ackMode: mode)

            // A good operation, a duplicate, another good one: nothing of it may stay.
            let tx = NFTTransaction()
            tx.addSteering(k2, mark: NFT.mark2, timeoutMs: 60_000)
            tx.addSteering(k1, mark: NFT.mark1, timeoutMs: 60_000)
            tx.addQoS(mark: NFT.mark2, classid: 0x0001_0002, timeoutMs: 60_000)
            let error = try #require(throws: NFTTransactionError.self) { try socket.commit(tx, ackMode: mode) }
            #expect(error.failures.count == 1)
            #expect(error.first.operation == "NFT_MSG_NEWSETELEM lease4 198.18.1.2 . 198.18.100.10 . udp . 7000")
            #expect(error.first.errno == EEXIST)
            #expect(error.first.description.contains("EEXIST"))
            #expect(error.committedTransactions == 0)

            #expect(try socket.listSteering(family: .ipv4).map(\.key) == [k1])
            #expect(try socket.listQoS().isEmpty)

            // The socket is still usable and in step after the failure.
            let ok = NFTTransaction()
            ok.addSteering(k2, mark: NFT.mark2, timeoutMs: 60_000)
            let result = try socket.commit(ok, ackMode: mode)
            #expect(result.endAcknowledged)
            #expect(try socket.listSteering(family: .ipv4).count == 2)
        }
    }

    @Test(.enabled(if: Shell.isRoot))
    func everyFailingOperationIsReportedInOrder() throws {
        try NFT.withNamespace("errors") { _, socket in
            try NFT.createSchema(socket)
            let tx = NFTTransaction()
            tx.deleteSteering(k6)                                         // ENOENT
            tx.addAnchor(mark: NFT.mark1, address: NFT.ip("198.18.2.2"), port: 1, timeoutMs: 1000)
            tx.deleteQoS(mark: NFT.mark3)                                 // 2 x ENOENT
            let error = try #require(throws: NFTTransactionError.self) { try socket.commit(tx) }
            #expect(error.failures.map(\.operation) == [
                "NFT_MSG_DELSETELEM lease6 2001:db8:1::2 . 2001:db8:100::10 . tcp . 443",
                "NFT_MSG_DELSETELEM qos 0xa1000003 . original",
                "NFT_MSG_DELSETELEM qos 0xa1000003 . reply",
            ])
            #expect(error.failures.allSatisfy { $0.errno == ENOENT })
            #expect(try socket.listAnchors(family: .ipv4).isEmpty)
        }
    }

    @Test(.enabled(if: Shell.isRoot))
    func elementOperationsWithoutTheTableFailWithENOENT() throws {
        try NFT.withNamespace("notable") { _, socket in
            #expect(try socket.verifyAIPagingSchema() == .absent)
            #expect(try socket.aipagingTable() == nil)
            let tx = NFTTransaction()
            tx.addSteering(k1, mark: NFT.mark1, timeoutMs: 1000)
            let error = try #require(throws: NFTTransactionError.self) { try socket.commit(tx) }
            #expect(error.first.errno == ENOENT)
            #expect(error.first.operation.hasPrefix("NFT_MSG_NEWSETELEM lease4"))
            let dump = try #require(throws: KernelError.self) { try socket.listSteering(family: .ipv4) }
            #expect(dump.errno == ENOENT && dump.operation == "NFT_MSG_GETSETELEM")
        }
    }

    @Test(.enabled(if: Shell.isRoot))
    func renewRestartsTheTimeout() throws {
        try NFT.withNamespace("renew") { _, socket in
            try NFT.createSchema(socket)
            let tx = NFTTransaction()
            tx.addSteering(k1, mark: NFT.mark1, timeoutMs: 1_000)
            tx.addAnchor(mark: NFT.mark1, address: NFT.ip("198.18.2.2"), port: 7000, timeoutMs: 1_000)
            tx.addQoS(mark: NFT.mark1, classid: 0x0001_0001, timeoutMs: 1_000)
            try socket.commit(tx)
            usleep(100_000)

            let renew = NFTTransaction()
            renew.renewSteering(k1, mark: NFT.mark1, timeoutMs: 60_000)
            renew.renewAnchor(mark: NFT.mark1, address: NFT.ip("198.18.2.2"), port: 7000, timeoutMs: 60_000)
            renew.renewQoS(mark: NFT.mark1, classid: 0x0001_0001, timeoutMs: 60_000)
            #expect(renew.operationCount == 2 + 2 + 4)
            try socket.commit(renew)
            let s = try socket.listSteering(family: .ipv4)
            #expect(s.map(\.timeoutMs) == [60_000])
            #expect((s.first?.expiresMs ?? 0) > 59_000)
            #expect(try socket.listAnchors(family: .ipv4).map(\.timeoutMs) == [60_000])
            #expect(try socket.listQoS().map(\.timeoutMs) == [60_000, 60_000])

            // Renewing an element that is gone: plain renew fails (ENOENT) and changes nothing;
            // createIfMissing succeeds.
            let gone = NFT.key("198.18.1.9", "198.18.100.10", .tcp, 80)
            let strict = NFTTransaction()
            strict.renewSteering(gone, mark: NFT.mark2, timeoutMs: 5_000)
            let error = try #require(throws: NFTTransactionError.self) { try socket.commit(strict) }
            #expect(error.first.errno == ENOENT && error.first.operation.hasPrefix("NFT_MSG_DELSETELEM lease4 198.18.1.9"))
            let lenient = NFTTransaction()
            lenient.renewSteering(gone, mark: NFT.mark2, timeoutMs: 5_000, createIfMissing: true)
            lenient.renewSteering(k1, mark: NFT.mark1, timeoutMs: 5_000, createIfMissing: true)
            try socket.commit(lenient)
            #expect(Set(try socket.listSteering(family: .ipv4).map(\.key)) == [gone, k1])
            #expect(try socket.listSteering(family: .ipv4).allSatisfy { $0.timeoutMs == 5_000 })
        }
    }

    @Test(.enabled(if: Shell.isRoot))
    func wrongSchemaIsDetectedAndRecreatedAtomically() throws {
        try NFT.withNamespace("schema") { ns, socket in
            // An older/foreign table: other marker, a missing rule, an extra chain.
            let foreign = NFT.schemaOnly
                .replacingOccurrences(of: "aipaging schema 2", with: "aipaging schema 0")
                .replacingOccurrences(of: "\t\tcounter packets 0 bytes 0 drop\n", with: "")
                + "table inet aipaging {\n\tchain extra {\n\t}\n}\n"
            try ns.exec(["nft", "-f", "-"], input: foreign)
            try ns.exec(["nft", "add", "element", "inet", "aipaging", "lease4",
                         "{ 198.18.1.7 . 198.18.100.10 . udp . 53 timeout 1m : 0xa1000007 }"])
            guard case .mismatched(let reasons) = try socket.verifyAIPagingSchema() else {
                Issue.record("foreign table not detected")
                return
            }
            #expect(reasons.contains { $0.contains("marker") })
            #expect(reasons.contains { $0.contains("chain gate: 2 rules, expected 3") })
            #expect(reasons.contains { $0.contains("unexpected chain extra") })

            // delete + create + elements in one transaction.
            let tx = NFTTransaction()
            tx.recreateAIPagingTable()
            tx.addSteering(k1, mark: NFT.mark1, timeoutMs: 60_000)
            tx.addQoS(mark: NFT.mark1, classid: 0x0001_0001, timeoutMs: 60_000)
            let result = try socket.commit(tx, allowSplit: false)
            #expect(result.transactions == 1)
            #expect(try socket.verifyAIPagingSchema() == .intact)
            #expect(try socket.listSteering(family: .ipv4).map(\.key) == [k1])

            // Recreating also works when there is no table, and creating twice is EEXIST.
            let del = NFTTransaction()
            del.deleteAIPagingTable()
            try socket.commit(del)
            #expect(try socket.verifyAIPagingSchema() == .absent)
            let noop = NFTTransaction()
            noop.deleteAIPagingTableIfExists()
            try socket.commit(noop)
            let again = NFTTransaction()
            again.recreateAIPagingTable()
            try socket.commit(again)
            #expect(try socket.verifyAIPagingSchema() == .intact)
            let twice = NFTTransaction()
            twice.createAIPagingTable()
            let error = try #require(throws: NFTTransactionError.self) { try socket.commit(twice) }
            #expect(error.first.operation == "NFT_MSG_NEWTABLE aipaging" && error.first.errno == EEXIST)
        }
    }

    @Test(.enabled(if: Shell.isRoot))
    func tableOutlivesTheSocket() throws {
        let ns = try TestNamespace(prefix: "failstatic")
        defer { ns.destroy() }
        do {
            let socket = try NFTablesSocket(namespace: .named(ns.name))
            let tx = NFTTransaction()
            tx.createAIPagingTable()
            tx.addSteering(k1, mark: NFT.mark1, timeoutMs: 60_000)
            try socket.commit(tx)
        }
        // The first socket is closed: a non-owner table and its elements remain.
        let other = try NFTablesSocket(namespace: .named(ns.name))
        #expect(try other.verifyAIPagingSchema() == .intact)
        #expect(try other.listSteering(family: .ipv4).count == 1)
    }
}

import Crypto
import Foundation
import Testing
@testable import AIPagingCore

/// The evidence log's hash chain and signatures: an intact chain verifies; an edited, deleted,
/// reordered, cut or foreign record is found and named.
@Suite struct EvidenceChainTests {
    let key = Curve25519.Signing.PrivateKey()

    /// `n` records; every `signEvery`-th and the last is signed (1: all, as in the tests below).
    func chain(_ n: Int, tag: String = "a", signEvery: Int = 1) throws -> [[UInt8]] {
        var prev = EvidenceChain.genesisHash
        var lines: [[UInt8]] = []
        let kid = EvidenceChain.keyID(key.publicKey)
        for i in 1...n {
            let r = EVIRecord(kind: .window, event: nil, aisi: "aisi-\(tag)\(i % 3)", leaseID: "L\(i)", enforcementPoint: "ep",
                              anchor: Anchor(id: "edge-1", address: IPAddress("198.18.2.2")!, port: 7000),
                              qos: QoSBinding(rateKbit: 1000, ceilKbit: 2000, priority: 1, latencyMs: 5),
                              relatedLease: nil, time: WallTime(nanosecondsSinceEpoch: 1_795_000_000_000_000_000 + Int64(i) * 1_000_000_000),
                              monotonicNs: UInt64(i),
                              fields: JSON.Object(["probes": ["sent": .int(100), "received": .int(99)],
                                                   "note": .string("quote \" and \\ and ,\"sig\":\" inside")]))
            let signs = i == n || i % signEvery == 0
            let (line, h) = try EvidenceChain.seal(body: r.body, seq: UInt64(i), prev: prev, key: signs ? key : nil, keyID: kid)
            lines.append(line)
            prev = h
        }
        return lines
    }

    func verify(_ lines: [[UInt8]], head: (UInt64, [UInt8])? = nil, key k: Curve25519.Signing.PublicKey? = nil) -> [EvidenceChain.Finding] {
        var v = EvidenceChain.Verifier(key: k ?? key.publicKey)
        for (i, l) in lines.enumerated() { v.feed(line: l, location: "log:\(i + 1)") }
        v.finish(headSeq: head?.0, headHash: head?.1)
        return v.findings
    }

    @Test func intactChainVerifies() throws {
        let lines = try chain(20)
        #expect(verify(lines).isEmpty)
        let parsed = try EvidenceChain.parse(line: lines[4])
        #expect(parsed.seq == 5)
        #expect(parsed.object["lease_id"]?.stringValue == "L5")
        #expect(parsed.object.keys.prefix(4) == ["v", "seq", "prev", "kid"])
        #expect(parsed.object.keys.last == "sig")
        #expect(parsed.prev == (try EvidenceChain.parse(line: lines[3])).hash)
        #expect(verify(lines, head: (20, parsed.hash)).count == 1)   // wrong head hash for 20
        #expect(verify(lines, head: (20, try EvidenceChain.parse(line: lines[19]).hash)).isEmpty)
    }

    @Test func anEditedRecordIsNamed() throws {
        var lines = try chain(10)
        // Change one digit of record 6 ("received":99 -> 98).
        let text = String(decoding: lines[5], as: UTF8.self).replacingFirst("\"received\":99", with: "\"received\":98")
        lines[5] = Array(text.utf8)
        let f = verify(lines)
        #expect(f.count == 1)
        #expect(f.first?.kind == .badSignature && f.first?.seq == 6 && f.first?.location == "log:6")
        #expect(f.first?.message.contains("record 6 was modified") == true)
    }

    @Test func aDeletedRecordIsNamed() throws {
        var lines = try chain(10)
        lines.remove(at: 3)   // record 4
        let f = verify(lines)
        #expect(f.map(\.kind) == [.missing])
        #expect(f.first?.message == "record 4 is missing between record 3 and record 5")
        var more = try chain(10)
        more.removeSubrange(2...5)   // records 3...6
        #expect(verify(more).first?.message == "records 3...6 are missing between record 2 and record 7")
    }

    @Test func aCutEndIsFoundAgainstTheHead() throws {
        var lines = try chain(10)
        let headHash = try EvidenceChain.parse(line: lines[9]).hash
        lines.removeLast(2)
        let f = verify(lines, head: (10, headHash))
        #expect(f.map(\.kind) == [.truncated])
        #expect(f.first?.message.contains("records 9...10 are missing at the end") == true)
        // Without a head the chain alone cannot know its end.
        #expect(verify(lines).isEmpty)
    }

    @Test func aReplacedOrMovedRecordBreaksTheLink() throws {
        let a = try chain(6)
        let b = try chain(6, tag: "b")   // another chain, same key: valid signatures, other hashes
        var mixed = a
        mixed[3] = b[3]
        let f = verify(mixed)
        #expect(f.map(\.kind) == [.brokenLink, .brokenLink])
        #expect(f.first?.seq == 4)
        var swapped = a
        swapped.swapAt(2, 3)
        #expect(verify(swapped).contains { $0.kind == .outOfOrder })
    }

    @Test func foreignKeyAndGarbage() throws {
        var lines = try chain(5)
        #expect(verify(lines, key: Curve25519.Signing.PrivateKey().publicKey).allSatisfy { $0.kind == .unknownKey })
        lines[2] = Array(lines[2].prefix(40))
        let f = verify(lines)
        #expect(f.map(\.kind) == [.malformed, .missing])
        // A line whose signature was stripped.
        var noSig = try chain(2)
        let t = String(decoding: noSig[1], as: UTF8.self)
        noSig[1] = Array((String(t[..<t.range(of: ",\"sig\":\"")!.lowerBound]) + "}").utf8)
        #expect(verify(noSig).map(\.kind) == [.unsigned])
    }

    /// The writer signs the last record of each write: the hash links carry that signature back
    /// over the unsigned records before it, so editing any of them is found, and records after
    /// the last signature are reported as not covered.
    @Test func oneSignatureCoversTheRecordsBeforeIt() throws {
        let lines = try chain(12, signEvery: 5)
        #expect(try lines.map { try EvidenceChain.parse(line: $0).isSigned } == (1...12).map { $0 % 5 == 0 || $0 == 12 })
        #expect(verify(lines).isEmpty)

        // An unsigned record edited: the next record's link no longer matches.
        var edited = lines
        edited[6] = Array(String(decoding: lines[6], as: UTF8.self).replacingFirst("\"received\":99", with: "\"received\":98").utf8)
        #expect(verify(edited).map(\.kind) == [.brokenLink])
        #expect(verify(edited).first?.seq == 8)

        // Edited, with every later unsigned link recomputed: the signed record 10 then differs.
        var relinked = edited
        var prev = try EvidenceChain.parse(line: relinked[6]).hash
        for i in 7...8 {
            let p = try EvidenceChain.parse(line: relinked[i])
            var body = p.object
            for k in ["v", "seq", "prev", "kid"] { body[k] = nil }
            (relinked[i], prev) = try EvidenceChain.seal(body: body, seq: p.seq, prev: prev, key: nil, keyID: p.keyID)
        }
        #expect(verify(relinked).map(\.kind) == [.brokenLink])
        #expect(verify(relinked).first?.seq == 10)

        // A tail without its signed record: not covered.
        let cut = Array(lines.prefix(8))
        let f = verify(cut)
        #expect(f.map(\.kind) == [.unsigned])
        #expect(f.first?.message.hasPrefix("records 6...8 are not covered by any signature") == true)
    }

    @Test func hexRoundTrip() {
        let b: [UInt8] = [0, 1, 0xab, 0xff]
        #expect(EvidenceChain.hex(b) == "0001abff")
        #expect(EvidenceChain.unhex("0001ABff") == b)
        #expect(EvidenceChain.unhex("0g") == nil)
    }
}

extension String {
    func replacingFirst(_ a: String, with b: String) -> String {
        guard let r = range(of: a) else { return self }
        return replacingCharacters(in: r, with: b)
    }
}

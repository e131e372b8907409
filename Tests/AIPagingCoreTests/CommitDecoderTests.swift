import Testing
@testable import AIPagingCore

@Suite struct CommitDecoderTests {
    @Test func decodesTheContractExample() throws {
        let text = """
        {
          "lease_id": "c-5f1d2a",
          "aisi": "aisi-summarize-7f3a",
          "aist": "tok-91bc",
          "ttl_ms": 30000,
          "classifier": { "client": "198.18.1.2", "service": "198.18.100.10", "protocol": "udp", "port": 7000 },
          "anchor": { "id": "edge-1", "address": "198.18.2.2", "port": 7000 },
          "qos": { "rate_kbit": 20000, "ceil_kbit": 50000, "priority": 1 },
          "relocates": null,
          "drain_ms": 2000
        }
        """
        let r = try CommitDecoder.decode(Array(text.utf8))
        #expect(r.leaseID == "c-5f1d2a")
        #expect(r.aisi == "aisi-summarize-7f3a")
        #expect(r.lifetime == .ttl(milliseconds: 30000))
        #expect(r.classifier == Classifier(client: IPAddress("198.18.1.2")!, service: IPAddress("198.18.100.10")!, proto: .udp, port: 7000))
        #expect(r.anchor == Anchor(id: "edge-1", address: IPAddress("198.18.2.2")!, port: 7000))
        #expect(r.qos == QoSBinding(rateKbit: 20000, ceilKbit: 50000, priority: 1))
        #expect(r.relocates == nil)
        #expect(r.drainMs == 2000)
        #expect(r.generation == 0)
        // The canonical form decodes to the same request.
        #expect(try CommitDecoder.decode(r.json) == r)
    }

    @Test func decodesIPv6AndExpiresAt() throws {
        let b = Fixture.body(["ttl_ms": nil, "expires_at": "2026-11-23T12:00:30Z", "generation": 3, "x-trace": "abc"],
                             classifier: ["client": "2001:db8:1::2", "service": "2001:db8:100::10", "protocol": "tcp"],
                             anchor: ["address": "2001:db8:2::2"], qos: ["latency_ms": 12.5])
        let r = try CommitDecoder.decode(b)
        #expect(r.lifetime == .expiresAt(WallTime(rfc3339: "2026-11-23T12:00:30Z")!))
        #expect(r.classifier.family == .ipv6)
        #expect(r.classifier.proto == .tcp)
        #expect(r.generation == 3)
        #expect(r.qos.latencyMs == 12.5)
    }

    /// Every reject cause of the decoder, with the field it blames.
    @Test(arguments: [
        (Fixture.body(["lease_id": nil]), RejectCause.missingField, "lease_id"),
        (Fixture.body(["lease_id": "has space"]), .invalidLeaseId, "lease_id"),
        (Fixture.body(["lease_id": 7]), .invalidLeaseId, "lease_id"),
        (Fixture.body(["aisi": ""]), .invalidAISI, "aisi"),
        (Fixture.body(["aist": ""]), .invalidAIST, "aist"),
        (Fixture.body(["ttl_ms": nil]), .missingField, "ttl_ms"),
        (Fixture.body(["ttl_ms": 0]), .invalidTTL, "ttl_ms"),
        (Fixture.body(["ttl_ms": -5]), .invalidTTL, "ttl_ms"),
        (Fixture.body(["ttl_ms": 1.5]), .invalidTTL, "ttl_ms"),
        (Fixture.body(["ttl_ms": "30000"]), .invalidTTL, "ttl_ms"),
        (Fixture.body(["expires_at": "tomorrow"]), .invalidField, "expires_at"),
        (Fixture.body(["ttl_ms": nil, "expires_at": "tomorrow"]), .invalidTTL, "expires_at"),
        (Fixture.body(["surprise": true]), .unknownField, "surprise"),
        (Fixture.body([:], classifier: ["vlan": 5]), .unknownField, "classifier.vlan"),
        (Fixture.body([:], qos: ["burst": 5]), .unknownField, "qos.burst"),
        (Fixture.body(["classifier": "x"]), .invalidField, "classifier"),
        (Fixture.body([:], classifier: ["client": "198.18.1.300"]), .invalidAddress, "classifier.client"),
        (Fixture.body([:], classifier: ["client": "0.0.0.0"]), .invalidAddress, "classifier.client"),
        (Fixture.body([:], classifier: ["service": "224.0.0.1"]), .invalidAddress, "classifier.service"),
        (Fixture.body([:], classifier: ["service": "198.18.1.2"]), .invalidAddress, "classifier.service"),
        (Fixture.body([:], classifier: ["service": "2001:db8::10"]), .familyMismatch, "classifier.service"),
        (Fixture.body([:], anchor: ["address": "2001:db8::2"]), .familyMismatch, "anchor.address"),
        (Fixture.body([:], anchor: ["address": "::1"]), .invalidAddress, "anchor.address"),
        (Fixture.body([:], classifier: ["protocol": "icmp"]), .invalidProtocol, "classifier.protocol"),
        (Fixture.body([:], classifier: ["protocol": "UDP"]), .invalidProtocol, "classifier.protocol"),
        (Fixture.body([:], classifier: ["port": 0]), .invalidPort, "classifier.port"),
        (Fixture.body([:], classifier: ["port": 65536]), .invalidPort, "classifier.port"),
        (Fixture.body([:], anchor: ["port": -1]), .invalidPort, "anchor.port"),
        (Fixture.body([:], anchor: ["id": "bad id"]), .invalidField, "anchor.id"),
        (Fixture.body([:], qos: ["rate_kbit": 60000]), .rateExceedsCeil, "qos.rate_kbit"),
        (Fixture.body([:], qos: ["rate_kbit": 0]), .invalidRate, "qos.rate_kbit"),
        (Fixture.body([:], qos: ["ceil_kbit": 200_000_000]), .invalidRate, "qos.ceil_kbit"),
        (Fixture.body([:], qos: ["priority": 8]), .priorityOutOfRange, "qos.priority"),
        (Fixture.body([:], qos: ["priority": -1]), .priorityOutOfRange, "qos.priority"),
        (Fixture.body([:], qos: ["latency_ms": 0]), .invalidField, "qos.latency_ms"),
        (Fixture.body(["relocates": "c-5f1d2a"]), .invalidField, "relocates"),
        (Fixture.body(["relocates": 5]), .invalidField, "relocates"),
        (Fixture.body(["drain_ms": -1]), .invalidDrain, "drain_ms"),
        (Fixture.body(["generation": "one"]), .invalidField, "generation"),
        (Fixture.body(["enforcement_point": "a b"]), .invalidField, "enforcement_point"),
    ] as [(JSON, RejectCause, String)])
    func rejects(_ body: JSON, _ cause: RejectCause, _ field: String) {
        #expect {
            _ = try CommitDecoder.decode(body)
        } throws: { error in
            guard let e = error as? LeaseError else { return false }
            return e.cause == cause && e.field == field && !e.message.isEmpty
        }
    }

    @Test func rejectsNonJSONAndNonObjects() {
        for text in ["", "not json", "[1]", "{\"lease_id\": \"a\", \"lease_id\": \"b\"}"] {
            #expect {
                _ = try CommitDecoder.decode(Array(text.utf8))
            } throws: { ($0 as? LeaseError)?.cause == .malformedJSON }
        }
    }

    @Test func everyCauseHasAnHTTPStatus() {
        for c in RejectCause.allCases {
            #expect([400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 503].contains(c.status))
        }
        #expect(RejectCause.insufficientCapacity.status == 503)
        #expect(RejectCause.classifierConflict.status == 409)
        #expect(RejectCause.malformedJSON.status == 400)
        #expect(RejectCause.unauthorizedPeer.status == 403)
        #expect(RejectCause.leaseNotFound.status == 404)
    }

    @Test func errorBodyMatchesContract() throws {
        let e = LeaseError(.insufficientCapacity, "no room")
        let body = e.body
        #expect(body["error"]?["cause"]?.stringValue == "insufficient_capacity")
        #expect(body["error"]?["message"]?.stringValue == "no room")
    }
}

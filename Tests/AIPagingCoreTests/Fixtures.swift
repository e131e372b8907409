@testable import AIPagingCore

enum Fixture {
    static let now = ClockReading(boot: BootInstant(nanoseconds: 5_000_000_000_000),
                                  wall: WallTime(rfc3339: "2026-11-23T12:00:00Z")!)

    static func body(_ overrides: [String: JSON?] = [:], classifier: [String: JSON?] = [:], anchor: [String: JSON?] = [:],
                     qos: [String: JSON?] = [:]) -> JSON {
        func apply(_ base: JSON.Object, _ o: [String: JSON?]) -> JSON.Object {
            var b = base
            for (k, v) in o { b[k] = v ?? nil }
            return b
        }
        let c = apply(JSON.Object(["client": "198.18.1.2", "service": "198.18.100.10", "protocol": "udp", "port": 7000]), classifier)
        let a = apply(JSON.Object(["id": "edge-1", "address": "198.18.2.2", "port": 7000]), anchor)
        let q = apply(JSON.Object(["rate_kbit": 20000, "ceil_kbit": 50000, "priority": 1]), qos)
        var root = JSON.Object(["lease_id": "c-5f1d2a", "aisi": "aisi-summarize-7f3a", "aist": "tok-91bc", "ttl_ms": 30000])
        root["classifier"] = .object(c)
        root["anchor"] = .object(a)
        root["qos"] = .object(q)
        root["relocates"] = .null
        root["drain_ms"] = 2000
        return .object(apply(root, overrides))
    }

    static func request(id: String = "L1", aisi: String = "aisi-1", client: String = "198.18.1.2",
                        service: String = "198.18.100.10", port: UInt16 = 7000, proto: L4Protocol = .udp,
                        anchorID: String = "edge-1", anchor: String = "198.18.2.2", ttlMs: UInt64 = 30_000,
                        rate: UInt64 = 1000, ceil: UInt64 = 2000, prio: UInt8 = 1, relocates: String? = nil,
                        drainMs: UInt64? = nil, generation: UInt64 = 0, point: String? = nil) -> CommitRequest {
        CommitRequest(leaseID: id, aisi: aisi, aist: "tok", lifetime: .ttl(milliseconds: ttlMs),
                      classifier: Classifier(client: IPAddress(client)!, service: IPAddress(service)!, proto: proto, port: port),
                      anchor: Anchor(id: anchorID, address: IPAddress(anchor)!, port: port),
                      qos: QoSBinding(rateKbit: rate, ceilKbit: ceil, priority: prio),
                      relocates: relocates, drainMs: drainMs, generation: generation, enforcementPoint: point)
    }

    static func context(now: ClockReading = Fixture.now, policy: Policy = .lab, capacity: UInt64 = 100_000,
                        iface: String = "veth-a") -> AdmissionContext {
        AdmissionContext(now: now, policy: policy, capacityKbit: ["ep": capacity], defaultPoint: "ep", anchorInterface: iface)
    }
}

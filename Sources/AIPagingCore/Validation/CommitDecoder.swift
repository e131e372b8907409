/// Decodes and validates the COMMIT body of `PUT /v1/leases/{id}` (CONTRACT.md).
///
/// Validation is strict and total: every field is checked, the first problem found is reported
/// with its own cause and the JSON path of the field, and nothing is defaulted silently except
/// what the contract marks optional. Unknown fields are refused (`unknown_field`) because a field
/// the agent ignores could change what the controller meant; keys starting with `x-` or `x_` are
/// extension fields the agent ignores by design.
public enum CommitDecoder {
    /// Upper bound on a rate: 100 Gbit/s.
    public static let maxRateKbit: UInt64 = 100_000_000

    public static func decode(_ bytes: some Collection<UInt8>) throws(LeaseError) -> CommitRequest {
        let value: JSON
        do { value = try JSON.parse(bytes) } catch {
            throw LeaseError(.malformedJSON, "the body is not valid JSON (\(error.description))")
        }
        return try decode(value)
    }

    public static func decode(_ value: JSON) throws(LeaseError) -> CommitRequest {
        guard let root = value.objectValue else {
            throw LeaseError(.malformedJSON, "the body must be a JSON object")
        }
        let r = Reader(object: root, path: "")
        try r.allowOnly(["lease_id", "aisi", "aist", "ttl_ms", "expires_at", "classifier", "anchor", "qos",
                         "relocates", "drain_ms", "generation", "enforcement_point"])

        let leaseID = try r.identifier("lease_id", cause: .invalidLeaseId)
        let aisi = try r.identifier("aisi", cause: .invalidAISI)
        let aist = try r.string("aist")
        guard !aist.isEmpty, aist.utf8.count <= 1024, aist.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7f }) else {
            throw LeaseError(.invalidAIST, "aist must be 1..1024 printable characters", field: "aist")
        }

        let lifetime: LeaseLifetime
        switch (root["ttl_ms"], root["expires_at"]) {
        case (nil, nil), (.some(.null), nil), (nil, .some(.null)), (.some(.null), .some(.null)):
            throw LeaseError(.missingField, "one of ttl_ms or expires_at is required", field: "ttl_ms")
        case (.some(let t), nil), (.some(let t), .some(.null)):
            guard let ms = t.int64Value else {
                throw LeaseError(.invalidTTL, "ttl_ms must be an integer number of milliseconds", field: "ttl_ms")
            }
            guard ms > 0 else { throw LeaseError(.invalidTTL, "ttl_ms must be > 0 (got \(ms))", field: "ttl_ms") }
            lifetime = .ttl(milliseconds: UInt64(ms))
        case (nil, .some(let e)), (.some(.null), .some(let e)):
            guard let s = e.stringValue, let t = WallTime(rfc3339: s) else {
                throw LeaseError(.invalidTTL, "expires_at must be an RFC 3339 timestamp such as 2026-01-02T03:04:05Z",
                                 field: "expires_at")
            }
            lifetime = .expiresAt(t)
        case (.some, .some):
            throw LeaseError(.invalidField, "give ttl_ms or expires_at, not both", field: "expires_at")
        }

        let c = try r.object("classifier")
        try c.allowOnly(["client", "service", "protocol", "port"])
        let client = try c.address("client")
        let service = try c.address("service")
        guard client.family == service.family else {
            throw LeaseError(.familyMismatch, "classifier.client (\(client.family.rawValue)) and classifier.service (\(service.family.rawValue)) must be the same address family", field: "classifier.service")
        }
        guard client != service else {
            throw LeaseError(.invalidAddress, "classifier.client and classifier.service must differ", field: "classifier.service")
        }
        let protoText = try c.string("protocol")
        guard let proto = L4Protocol(rawValue: protoText) else {
            throw LeaseError(.invalidProtocol, "classifier.protocol must be \"udp\" or \"tcp\" (got \"\(protoText)\")", field: "classifier.protocol")
        }
        let port = try c.port("port")

        let a = try r.object("anchor")
        try a.allowOnly(["id", "address", "port"])
        let anchorID = try a.identifier("id", cause: .invalidField)
        let anchorAddress = try a.address("address")
        guard anchorAddress.family == client.family else {
            throw LeaseError(.familyMismatch, "anchor.address is \(anchorAddress.family.rawValue) but the classifier is \(client.family.rawValue); the agent does not translate between families", field: "anchor.address")
        }
        let anchorPort = try a.port("port")

        let q = try r.object("qos")
        try q.allowOnly(["rate_kbit", "ceil_kbit", "priority", "latency_ms"])
        let rate = try q.unsigned("rate_kbit", cause: .invalidRate)
        let ceil = try q.unsigned("ceil_kbit", cause: .invalidRate)
        guard rate >= 1 else { throw LeaseError(.invalidRate, "qos.rate_kbit must be >= 1", field: "qos.rate_kbit") }
        guard rate <= maxRateKbit, ceil <= maxRateKbit else {
            throw LeaseError(.invalidRate, "rates are limited to \(maxRateKbit) kbit/s", field: "qos.ceil_kbit")
        }
        guard ceil >= rate else {
            throw LeaseError(.rateExceedsCeil, "qos.rate_kbit (\(rate)) exceeds qos.ceil_kbit (\(ceil))", field: "qos.rate_kbit")
        }
        let prio = try q.unsigned("priority", cause: .priorityOutOfRange)
        guard prio <= 7 else {
            throw LeaseError(.priorityOutOfRange, "qos.priority must be 0 (highest) .. 7 (got \(prio))", field: "qos.priority")
        }
        var latency: Double?
        if let l = q.optional("latency_ms") {
            guard let d = l.doubleValue, d > 0, d.isFinite else {
                throw LeaseError(.invalidField, "qos.latency_ms must be a positive number", field: "qos.latency_ms")
            }
            latency = d
        }

        var relocates: LeaseID?
        if let rel = r.optional("relocates") {
            guard let s = rel.stringValue, Identifier.isValid(s) else {
                throw LeaseError(.invalidField, "relocates must be null or a lease id", field: "relocates")
            }
            guard s != leaseID else {
                throw LeaseError(.invalidField, "a lease cannot relocate itself", field: "relocates")
            }
            relocates = s
        }
        var drain: UInt64?
        if r.optional("drain_ms") != nil { drain = try r.unsigned("drain_ms", cause: .invalidDrain) }
        var generation: UInt64 = 0
        if r.optional("generation") != nil { generation = try r.unsigned("generation", cause: .invalidField) }
        var ep: String?
        if r.optional("enforcement_point") != nil { ep = try r.identifier("enforcement_point", cause: .invalidField) }

        return CommitRequest(
            leaseID: leaseID, aisi: aisi, aist: aist, lifetime: lifetime,
            classifier: Classifier(client: client, service: service, proto: proto, port: port),
            anchor: Anchor(id: anchorID, address: anchorAddress, port: anchorPort),
            qos: QoSBinding(rateKbit: rate, ceilKbit: ceil, priority: UInt8(prio), latencyMs: latency),
            relocates: relocates, drainMs: drain, generation: generation, enforcementPoint: ep)
    }

    /// Addresses a flow may be steered from/to: not unspecified, multicast, broadcast or loopback.
    public static func isUsableUnicast(_ a: IPAddress) -> Bool {
        switch a {
        case .v4(let v):
            let first = v >> 24
            return v != 0 && v != 0xffff_ffff && first != 127 && !(224...239).contains(first) && first != 0
        case .v6(let hi, let lo):
            if hi == 0 && (lo == 0 || lo == 1) { return false }          // :: and ::1
            if hi >> 56 == 0xff { return false }                        // ff00::/8 multicast
            return true
        }
    }
}

/// Typed access to one JSON object with field paths for error messages.
struct Reader {
    let object: JSON.Object
    let path: String

    func fieldPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func allowOnly(_ keys: Set<String>) throws(LeaseError) {
        for k in object.keys where !keys.contains(k) && !k.hasPrefix("x-") && !k.hasPrefix("x_") {
            throw LeaseError(.unknownField, "unknown field \"\(fieldPath(k))\"; fields the agent does not understand are refused because they could change the lease's meaning (prefix extensions with x-)", field: fieldPath(k))
        }
    }

    func optional(_ key: String) -> JSON? {
        guard let v = object[key], !v.isNull else { return nil }
        return v
    }

    func required(_ key: String) throws(LeaseError) -> JSON {
        guard let v = optional(key) else {
            throw LeaseError(.missingField, "\(fieldPath(key)) is required", field: fieldPath(key))
        }
        return v
    }

    func string(_ key: String) throws(LeaseError) -> String {
        guard let s = try required(key).stringValue else {
            throw LeaseError(.invalidField, "\(fieldPath(key)) must be a string", field: fieldPath(key))
        }
        return s
    }

    func identifier(_ key: String, cause: RejectCause) throws(LeaseError) -> String {
        let v = try required(key)
        guard let s = v.stringValue, Identifier.isValid(s) else {
            throw LeaseError(cause, "\(fieldPath(key)) must be 1..128 characters of A-Z a-z 0-9 . _ : -", field: fieldPath(key))
        }
        return s
    }

    func object(_ key: String) throws(LeaseError) -> Reader {
        guard let o = try required(key).objectValue else {
            throw LeaseError(.invalidField, "\(fieldPath(key)) must be an object", field: fieldPath(key))
        }
        return Reader(object: o, path: fieldPath(key))
    }

    func unsigned(_ key: String, cause: RejectCause) throws(LeaseError) -> UInt64 {
        let v = try required(key)
        guard let i = v.int64Value, i >= 0 else {
            throw LeaseError(cause, "\(fieldPath(key)) must be a non-negative integer", field: fieldPath(key))
        }
        return UInt64(i)
    }

    func address(_ key: String) throws(LeaseError) -> IPAddress {
        let s = try string(key)
        guard let a = IPAddress(s) else {
            throw LeaseError(.invalidAddress, "\(fieldPath(key)) is not an IPv4 or IPv6 address: \"\(s)\"", field: fieldPath(key))
        }
        guard CommitDecoder.isUsableUnicast(a) else {
            throw LeaseError(.invalidAddress, "\(fieldPath(key)) \(a) is not a unicast address a flow can use (unspecified, loopback, multicast or broadcast)", field: fieldPath(key))
        }
        return a
    }

    func port(_ key: String) throws(LeaseError) -> UInt16 {
        let v = try required(key)
        guard let i = v.int64Value, (1...65535).contains(i) else {
            throw LeaseError(.invalidPort, "\(fieldPath(key)) must be an integer port 1..65535", field: fieldPath(key))
        }
        return UInt16(i)
    }
}

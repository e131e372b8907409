/// Identifiers the controller chooses: 1..128 characters of `[A-Za-z0-9._:-]`, so they are safe
/// in URLs, logs and file names.
public enum Identifier {
    public static func isValid(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 128 else { return false }
        return s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: ":") || c == UInt8(ascii: "-")
        }
    }
}

/// The COMMIT's identity (`lease_id`).
public typealias LeaseID = String
/// AI service identity: the stable, client-visible handle that survives relocation.
public typealias AISI = String

/// Transport protocol of a classifier.
public enum L4Protocol: String, Sendable, Hashable, Codable, CaseIterable {
    case tcp, udp
    /// IANA protocol number (`meta l4proto`).
    public var number: UInt8 { self == .tcp ? 6 : 17 }
}

/// The AISI flow: traffic from `client` to the stable service address `service` on
/// `protocol`/`port`. It is the key of the steering state.
public struct Classifier: Hashable, Sendable, CustomStringConvertible {
    public var client: IPAddress
    public var service: IPAddress
    public var proto: L4Protocol
    public var port: UInt16

    public init(client: IPAddress, service: IPAddress, proto: L4Protocol, port: UInt16) {
        self.client = client
        self.service = service
        self.proto = proto
        self.port = port
    }

    public var family: IPAddress.Family { client.family }
    public var description: String { "\(client) -> \(service) \(proto.rawValue)/\(port)" }

    public var json: JSON {
        ["client": .string(client.description), "service": .string(service.description),
         "protocol": .string(proto.rawValue), "port": .int(port)]
    }
}

/// The execution anchor (AEXF) a lease steers its flow to.
public struct Anchor: Hashable, Sendable, CustomStringConvertible {
    public var id: String
    public var address: IPAddress
    public var port: UInt16

    public init(id: String, address: IPAddress, port: UInt16) {
        self.id = id
        self.address = address
        self.port = port
    }

    public var description: String {
        address.family == .ipv6 ? "\(id) [\(address)]:\(port)" : "\(id) \(address):\(port)"
    }
    public var json: JSON { ["id": .string(id), "address": .string(address.description), "port": .int(port)] }
}

/// The QoS binding derived from the ASP: guaranteed rate, ceiling and priority (0 highest .. 7),
/// and optionally the latency target evidence is judged against.
public struct QoSBinding: Hashable, Sendable {
    public var rateKbit: UInt64
    public var ceilKbit: UInt64
    public var priority: UInt8
    public var latencyMs: Double?

    public init(rateKbit: UInt64, ceilKbit: UInt64, priority: UInt8, latencyMs: Double? = nil) {
        self.rateKbit = rateKbit
        self.ceilKbit = ceilKbit
        self.priority = priority
        self.latencyMs = latencyMs
    }

    /// True when the kernel class must change (rates or priority), as opposed to only the lease's life.
    public func shapingDiffers(from other: QoSBinding) -> Bool {
        rateKbit != other.rateKbit || ceilKbit != other.ceilKbit || priority != other.priority
    }

    public var json: JSON {
        var o = JSON.Object()
        o["rate_kbit"] = .int(rateKbit)
        o["ceil_kbit"] = .int(ceilKbit)
        o["priority"] = .int(priority)
        if let latencyMs { o["latency_ms"] = .double(latencyMs) }
        return .object(o)
    }
}

/// How long a COMMIT lives, as the controller expressed it.
public enum LeaseLifetime: Hashable, Sendable {
    case ttl(milliseconds: UInt64)
    case expiresAt(WallTime)
}

/// A COMMIT lease as the controller sent it, fully validated (see `CommitDecoder`).
public struct CommitRequest: Hashable, Sendable {
    public var leaseID: LeaseID
    public var aisi: AISI
    /// AIST: the scoped session token the lease was issued under (opaque to the agent).
    public var aist: String
    public var lifetime: LeaseLifetime
    public var classifier: Classifier
    public var anchor: Anchor
    public var qos: QoSBinding
    /// The lease this one replaces (a relocation) and how long the replaced one drains.
    public var relocates: LeaseID? {
        get { relocation?.value.relocates }
        set { relocation.modify(empty: Relocation()) { $0.relocates = newValue } }
    }
    public var drainMs: UInt64? {
        get { relocation?.value.drainMs }
        set { relocation.modify(empty: Relocation()) { $0.drainMs = newValue } }
    }
    /// `relocates` and `drainMs`, out of line: most leases are no relocation.
    private var relocation: OutOfLine<Relocation>?
    private struct Relocation: Hashable, Sendable {
        var relocates: LeaseID?
        var drainMs: UInt64?
    }
    /// Monotonic per lease id; a replay with an older generation is refused.
    public var generation: UInt64
    /// Which enforcement point (by name) installs it; nil = the agent's default one.
    public var enforcementPoint: String?

    public init(leaseID: LeaseID, aisi: AISI, aist: String, lifetime: LeaseLifetime, classifier: Classifier,
                anchor: Anchor, qos: QoSBinding, relocates: LeaseID? = nil, drainMs: UInt64? = nil,
                generation: UInt64 = 0, enforcementPoint: String? = nil) {
        self.leaseID = leaseID
        self.aisi = aisi
        self.aist = aist
        self.lifetime = lifetime
        self.classifier = classifier
        self.anchor = anchor
        self.qos = qos
        self.generation = generation
        self.enforcementPoint = enforcementPoint
        self.relocates = relocates
        self.drainMs = drainMs
    }

    /// The canonical JSON form of the request (what the journal stores and `show` prints).
    public var json: JSON {
        var o = JSON.Object()
        o["lease_id"] = .string(leaseID)
        o["aisi"] = .string(aisi)
        o["aist"] = .string(aist)
        switch lifetime {
        case .ttl(let ms): o["ttl_ms"] = .int(ms)
        case .expiresAt(let t): o["expires_at"] = .string(t.rfc3339)
        }
        o["classifier"] = classifier.json
        o["anchor"] = anchor.json
        o["qos"] = qos.json
        o["relocates"] = .optional(relocates)
        if let drainMs { o["drain_ms"] = .int(drainMs) }
        o["generation"] = .int(generation)
        if let enforcementPoint { o["enforcement_point"] = .string(enforcementPoint) }
        return .object(o)
    }
}

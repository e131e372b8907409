/// An evidence (EVI) record: what was observed or what happened, bound to the AISI, the lease
/// that authorized steering and the anchor that served. Lifecycle records come from lease events;
/// measurement records (per window) carry counters and delay/loss statistics.
public struct EVIRecord: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case event
        case window
    }

    public var seq: UInt64
    public var kind: Kind
    /// For `event`: admitted, switched, renewed, drained, expired, revoked.
    public var event: String?
    public var aisi: AISI
    public var leaseID: LeaseID
    public var enforcementPoint: String
    public var anchor: Anchor
    public var qos: QoSBinding
    public var relatedLease: LeaseID?
    public var time: WallTime
    public var monotonicNs: UInt64
    /// Measurement fields (window records) or event details.
    public var fields: JSON.Object

    public init(seq: UInt64, kind: Kind, event: String?, aisi: AISI, leaseID: LeaseID, enforcementPoint: String,
                anchor: Anchor, qos: QoSBinding, relatedLease: LeaseID?, time: WallTime, monotonicNs: UInt64,
                fields: JSON.Object = JSON.Object()) {
        self.seq = seq
        self.kind = kind
        self.event = event
        self.aisi = aisi
        self.leaseID = leaseID
        self.enforcementPoint = enforcementPoint
        self.anchor = anchor
        self.qos = qos
        self.relatedLease = relatedLease
        self.time = time
        self.monotonicNs = monotonicNs
        self.fields = fields
    }

    public var json: JSON {
        var o = JSON.Object()
        o["seq"] = .int(seq)
        o["kind"] = .string(kind.rawValue)
        if let event { o["event"] = .string(event) }
        o["aisi"] = .string(aisi)
        o["lease_id"] = .string(leaseID)
        o["enforcement_point"] = .string(enforcementPoint)
        o["anchor"] = anchor.json
        o["qos"] = qos.json
        if let relatedLease { o["related_lease_id"] = .string(relatedLease) }
        o["time"] = .string(time.rfc3339)
        o["monotonic_ns"] = .int(monotonicNs)
        for (k, v) in fields.pairs { o[k] = v }
        return .object(o)
    }
}

/// Filters of `GET /v1/evidence`.
public struct EvidenceQuery: Sendable {
    public var aisi: AISI?
    public var leaseID: LeaseID?
    public var since: WallTime?
    public var until: WallTime?
    public var kind: String?
    public var limit: Int?
    public init() {}

    public func matches(_ r: EVIRecord) -> Bool {
        if let aisi, r.aisi != aisi { return false }
        if let leaseID, r.leaseID != leaseID && r.relatedLease != leaseID { return false }
        if let since, r.time < since { return false }
        if let until, r.time > until { return false }
        if let kind, r.kind.rawValue != kind && r.event != kind { return false }
        return true
    }
}

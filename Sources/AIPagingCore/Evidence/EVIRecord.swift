/// An evidence (EVI) record: what was observed or what happened, bound to the AISI, the lease
/// that authorized steering and the anchor that served. Lifecycle records come from lease events;
/// window records carry a measurement window's counters and delay/loss statistics; agent records
/// mark the agent starting and stopping (and the key that signs).
///
/// This is a record's content. The evidence log (`EvidenceChain`) puts `v`, `seq`, `prev` and
/// `kid` before it and the signature `sig` after it.
public struct EVIRecord: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case event
        case window
        case agent
    }

    public var kind: Kind
    /// For `event`: admitted, switched, renewed, drained, expired, revoked, repaired.
    /// For `window`: nil, or `final` for a lease's last (partial) window. For `agent`: started, stopped.
    public var event: String?
    public var aisi: AISI?
    public var leaseID: LeaseID?
    public var enforcementPoint: String?
    public var anchor: Anchor?
    public var qos: QoSBinding?
    public var relatedLease: LeaseID?
    public var time: WallTime
    public var monotonicNs: UInt64
    /// Measurement fields (window records) or event details, after the fields above.
    public var fields: JSON.Object

    public init(kind: Kind, event: String?, aisi: AISI?, leaseID: LeaseID?, enforcementPoint: String?,
                anchor: Anchor?, qos: QoSBinding?, relatedLease: LeaseID?, time: WallTime, monotonicNs: UInt64,
                fields: JSON.Object = JSON.Object()) {
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

    /// The record's members in their canonical order.
    public var body: JSON.Object {
        var o = JSON.Object()
        o["kind"] = .string(kind.rawValue)
        if let event { o["event"] = .string(event) }
        o["time"] = .string(time.rfc3339)
        o["monotonic_ns"] = .int(monotonicNs)
        if let aisi { o["aisi"] = .string(aisi) }
        if let leaseID { o["lease_id"] = .string(leaseID) }
        if let enforcementPoint { o["enforcement_point"] = .string(enforcementPoint) }
        if let anchor { o["anchor"] = anchor.json }
        if let qos { o["qos"] = qos.json }
        if let relatedLease { o["related_lease_id"] = .string(relatedLease) }
        for (k, v) in fields.pairs { o[k] = v }
        return o
    }

    public var json: JSON { .object(body) }
}

/// Filters of `GET /v1/evidence` and `GET /v1/evidence/audit`.
public struct EvidenceQuery: Sendable {
    public var aisi: AISI?
    /// Records of this lease, and records that name it as the related lease (a switch from it).
    public var leaseID: LeaseID?
    public var since: WallTime?
    public var until: WallTime?
    /// A record kind (`event`, `window`, `agent`) or an event name (`admitted`, ...).
    public var kind: String?
    /// Only records with a larger sequence number (paging).
    public var afterSeq: UInt64?
    public var limit: Int?
    public init() {}

    /// Whether a stored record (as parsed from its line) matches. Time filters apply to the
    /// record's `time`, the end of its window for window records.
    public func matches(_ r: JSON.Object) -> Bool {
        if let aisi, r["aisi"]?.stringValue != aisi { return false }
        if let leaseID, r["lease_id"]?.stringValue != leaseID, r["related_lease_id"]?.stringValue != leaseID { return false }
        if let afterSeq, let seq = r["seq"]?.int64Value, UInt64(seq) <= afterSeq { return false }
        if since != nil || until != nil {
            guard let t = r["time"]?.stringValue.flatMap(WallTime.init(rfc3339:)) else { return false }
            if let since, t < since { return false }
            if let until, t > until { return false }
        }
        if let kind, r["kind"]?.stringValue != kind, r["event"]?.stringValue != kind { return false }
        return true
    }

    /// Cheap pre-filter on a raw line before it is parsed: false only if it cannot match.
    public func mayMatch(line: [UInt8]) -> Bool {
        if let aisi, !EvidenceQuery.contains(line, Array("\"aisi\":\"\(aisi)\"".utf8)) { return false }
        if let leaseID, !EvidenceQuery.contains(line, Array(":\"\(leaseID)\"".utf8)) { return false }
        return true
    }

    static func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, hay.count >= needle.count else { return needle.isEmpty }
        let first = needle[0]
        var i = 0
        let last = hay.count - needle.count
        while i <= last {
            if hay[i] == first {
                var j = 1
                while j < needle.count && hay[i + j] == needle[j] { j += 1 }
                if j == needle.count { return true }
            }
            i += 1
        }
        return false
    }
}

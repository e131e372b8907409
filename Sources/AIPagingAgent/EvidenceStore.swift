import AIPagingCore

/// Append-only store of EVI records. Lifecycle events become records as they are published.
public actor EvidenceStore {
    private var records: Ring<EVIRecord>
    private var nextSeq: UInt64 = 1
    public let limit: Int

    public init(limit: Int = 1_000_000) {
        self.limit = limit
        records = Ring(capacity: limit)
    }

    public func append(_ make: (UInt64) -> EVIRecord) {
        records.append(make(nextSeq))
        nextSeq += 1
    }

    /// Records the lifecycle event as an EVI record.
    public func record(_ e: LifecycleEvent) {
        append { seq in
            EVIRecord(seq: seq, kind: .event, event: e.kind.rawValue, aisi: e.aisi, leaseID: e.leaseID,
                      enforcementPoint: e.enforcementPoint, anchor: e.anchor, qos: e.qos, relatedLease: e.relatedLease,
                      time: e.wall, monotonicNs: e.boot.nanoseconds, fields: e.detail)
        }
    }

    public func query(_ q: EvidenceQuery) -> [EVIRecord] {
        var out: [EVIRecord] = []
        for r in records where q.matches(r) {
            out.append(r)
            if let limit = q.limit, out.count >= limit { break }
        }
        return out
    }

    public var count: Int { records.count }

    /// Follows the event bus until it finishes (run in the agent's task group).
    public func follow(_ bus: EventBus) async {
        for await e in bus.subscribe(after: 0) { record(e) }
    }
}

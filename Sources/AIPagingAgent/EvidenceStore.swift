import AIPagingCore
import Synchronization

/// The agent's evidence as the control API sees it: the durable log (`EvidenceLog`), the
/// measurement exporter, lifecycle records, queries, the tail audit and the public key.
/// The log and exporter are attached when the runtime starts; before that queries are empty.
public final class EvidenceStore: Sendable {
    struct Parts: Sendable {
        var log: EvidenceLog?
        var exporter: EvidenceExporter?
    }
    let parts = Mutex(Parts())

    public init() {}

    public var log: EvidenceLog? { parts.withLock { $0.log } }
    public var exporter: EvidenceExporter? { parts.withLock { $0.exporter } }

    func attach(log: EvidenceLog, exporter: EvidenceExporter?) {
        parts.withLock { $0.log = log; $0.exporter = exporter }
    }

    /// Writes the lifecycle record of `e` (called for every event, on the lease service's thread;
    /// only queues). The record binds the event to the lease's kernel state: mark, class, deadline.
    public func record(_ e: LifecycleEvent, lease: Lease) {
        guard let log else { return }
        var f = e.detail
        if let ra = e.relatedAnchor { f["related_anchor"] = ra.json }
        f["generation"] = .int(lease.request.generation)
        f["expires_at"] = .string(lease.expiresAt.rfc3339)
        f["kernel"] = ["mark": .string("0x" + String(lease.mark, radix: 16)), "class": .string(lease.qosClass.description),
                       "interface": .string(lease.qosClass.interface)]
        f["event_seq"] = .int(e.seq)
        log.append(EVIRecord(kind: .event, event: e.kind.rawValue, aisi: e.aisi, leaseID: e.leaseID,
                             enforcementPoint: e.enforcementPoint, anchor: e.anchor, qos: e.qos, relatedLease: e.relatedLease,
                             time: e.wall, monotonicNs: e.boot.nanoseconds, fields: f))
    }

    /// Records matching `q` in sequence order (at most `limit`), and whether more matched.
    public func query(_ q: EvidenceQuery, limit: Int = 10_000) async -> (records: [JSON.Object], truncated: Bool) {
        guard let log else { return ([], false) }
        return await log.query(q, limit: q.limit.map { min($0, limit) } ?? limit)
    }

    /// The raw log lines after `afterSeq` (NDJSON, byte for byte as signed).
    public func rawLines(afterSeq: UInt64, limit: Int) async -> [UInt8] {
        guard let log else { return [] }
        return await log.rawLines(afterSeq: afterSeq, limit: limit)
    }

    /// `{"alg", "kid", "public_key", "head": {...}}`.
    public var keyInfo: JSON {
        guard let log else { return ["alg": "EdDSA", "public_key": .null] }
        let st = log.status
        return ["alg": "EdDSA", "kid": .string(log.key.keyID), "public_key": .string(log.key.publicKeyBase64URL),
                "head": ["seq": .int(st.headSeq), "hash": .string(EvidenceChain.hex(st.headHash)), "durable_seq": .int(st.durableSeq)]]
    }

    /// Tail audit of an AISI's two-way delay over its window records in `q`'s range: p99 and p99.9
    /// with confidence intervals (empirical or peaks-over-threshold) and a verdict against the
    /// latency target — `targetMs` if given, else the leases' `qos.latency_ms`.
    public func audit(_ q: EvidenceQuery, targetQuantile: Double, confidence: Double, targetMs: Double?) async -> JSON {
        var wq = q
        wq.kind = "window"
        wq.limit = nil
        let (records, truncated) = await query(wq, limit: 5_000_000)
        return await onThread {
            var hist = DelayHistogram()
            var windows = 0
            var sent = 0, received = 0, lostF = 0, lostB = 0, lostU = 0
            var leases: [String: (anchor: String, windows: Int, latency: Double?, first: String, last: String)] = [:]
            var order: [String] = []
            var latestTarget: Double?
            var targets = Set<Double>()
            for r in records {
                windows += 1
                if let h = r["delay_hist"].flatMap(DelayHistogram.init(json:)) { hist.merge(h) }
                if let p = r["probes"]?.objectValue {
                    sent += Int(p["sent"]?.int64Value ?? 0)
                    received += Int(p["received"]?.int64Value ?? 0)
                    lostF += Int(p["lost_forward"]?.int64Value ?? 0)
                    lostB += Int(p["lost_backward"]?.int64Value ?? 0)
                    lostU += Int(p["lost_unknown"]?.int64Value ?? 0)
                }
                let id = r["lease_id"]?.stringValue ?? "?"
                let lat = r["qos"]?["latency_ms"]?.doubleValue
                if let lat { latestTarget = lat; targets.insert(lat) }
                let t = r["time"]?.stringValue ?? ""
                if var l = leases[id] {
                    l.windows += 1
                    l.last = t
                    leases[id] = l
                } else {
                    order.append(id)
                    leases[id] = (r["anchor"]?["id"]?.stringValue ?? "?", 1, lat, t, t)
                }
            }
            let target = targetMs ?? latestTarget
            let audit = TailAudit(weighted: hist.weightedMilliseconds, target: target, targetQuantile: targetQuantile,
                                  confidence: confidence)
            var o = JSON.Object()
            o["aisi"] = q.aisi.map { .string($0) } ?? .null
            o["since"] = q.since.map { .string($0.rfc3339) } ?? .null
            o["until"] = q.until.map { .string($0.rfc3339) } ?? .null
            o["windows"] = .int(windows)
            if truncated { o["truncated"] = true }
            o["leases"] = .array(order.map { id in
                let l = leases[id]!
                return ["lease_id": .string(id), "anchor": .string(l.anchor), "windows": .int(l.windows),
                        "latency_ms": l.latency.map { .double($0) } ?? .null, "first": .string(l.first), "last": .string(l.last)]
            })
            o["target_source"] = targetMs != nil ? "query" : (latestTarget != nil ? "lease qos.latency_ms" : .null)
            if targets.count > 1 { o["lease_targets_ms"] = .array(targets.sorted().map { .double($0) }) }
            func ratio(_ a: Int, _ b: Int) -> JSON { b > 0 ? .double((Double(a) / Double(b) * 1e6).rounded() / 1e6) : .null }
            o["probes"] = ["sent": .int(sent), "received": .int(received), "lost_forward": .int(lostF),
                           "lost_backward": .int(lostB), "lost_unknown": .int(lostU)]
            o["loss"] = ["ratio": ratio(sent - received, sent), "forward": ratio(lostF, sent), "backward": ratio(lostB, received + lostB)]
            o["delay"] = audit.json
            o["verdict"] = .string(audit.verdict.rawValue)
            o["resolution"] = "delays come from the records' histograms: 1 us below 64 us, else 1/64 of a power of two (<= 0.8 % error)"
            return .object(o)
        }
    }
}

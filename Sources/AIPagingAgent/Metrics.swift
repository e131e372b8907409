import AIPagingCore

/// Renders `GET /metrics` in the Prometheus text exposition format (version 0.0.4).
public struct MetricsRenderer: Sendable {
    public let service: LeaseService
    public let evidence: EvidenceStore

    public init(service: LeaseService, evidence: EvidenceStore) {
        self.service = service
        self.evidence = evidence
    }

    public func render() async -> String {
        let s = await service.snapshot()
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Double)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, v) in samples {
                let value = v.rounded() == v && abs(v) < 1e15 ? String(Int64(v)) : String(v)
                out += labels.isEmpty ? "\(name) \(value)\n" : "\(name){\(labels)} \(value)\n"
            }
        }
        metric("aipaging_leases", "gauge", "Live leases by state.",
               LeaseState.allCases.filter(\.isLive).map { ("state=\"\($0.rawValue)\"", Double(s.byState[$0] ?? 0)) })
        metric("aipaging_lease_events_total", "counter", "Lease lifecycle transitions by event.", [
            ("event=\"admitted\"", Double(s.stats.admitted)), ("event=\"renewed\"", Double(s.stats.renewed)),
            ("event=\"relocated\"", Double(s.stats.relocated)), ("event=\"revoked\"", Double(s.stats.revoked)),
            ("event=\"expired\"", Double(s.stats.expired)), ("event=\"drained\"", Double(s.stats.drained)),
        ])
        metric("aipaging_rejections_total", "counter", "Refused requests by cause.",
               service.rejectionCounts.sorted { $0.key.rawValue < $1.key.rawValue }.map { ("cause=\"\($0.key.rawValue)\"", Double($0.value)) })
        metric("aipaging_resyncs_total", "counter", "Full reconciles of an enforcement point with the kernel.", [("", Double(s.stats.resyncs))])
        metric("aipaging_repairs_total", "counter", "Kernel changes made by reconciles to repair drift.", [("", Double(s.stats.repairs))])
        metric("aipaging_kernel_drift_total", "counter", "Reports of changes to the agent's kernel state by other processes (each repaired by a resync).", [("", Double(s.stats.driftReports))])
        metric("aipaging_batches_total", "counter", "Batches of changes applied.", [("", Double(s.stats.batches))])
        for p in s.points {
            let l = "point=\"\(p.config.name)\""
            out += "# TYPE aipaging_capacity_kbit gauge\naipaging_capacity_kbit{\(l)} \(p.config.capacityKbit)\n"
            out += "# TYPE aipaging_guaranteed_kbit gauge\naipaging_guaranteed_kbit{\(l)} \(p.guaranteedKbit)\n"
            out += "# TYPE aipaging_in_sync gauge\naipaging_in_sync{\(l)} \(p.needsResync ? 0 : 1)\n"
        }
        histogram(&out, "aipaging_install_latency_seconds", "Admission to kernel state installed.", s.stats.installLatencies)
        histogram(&out, "aipaging_expiry_lateness_seconds", "Deadline to the agent ending the lease.", s.stats.expiryLateness)
        metric("aipaging_evidence_records", "gauge", "EVI records held.", [("", Double(await evidence.count))])
        return out
    }

    func histogram(_ out: inout String, _ name: String, _ help: String, _ h: LatencyHistogram) {
        out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        var acc: UInt64 = 0
        for (i, c) in h.buckets.enumerated() where i <= 40 {
            acc += c
            let le = Double(UInt64(1) << UInt64(i)) / 1e9
            if i >= 10 { out += "\(name)_bucket{le=\"\(le)\"} \(acc)\n" }
        }
        out += "\(name)_bucket{le=\"+Inf\"} \(h.count)\n"
        out += "\(name)_sum \(Double(h.sumNs) / 1e9)\n\(name)_count \(h.count)\n"
    }
}

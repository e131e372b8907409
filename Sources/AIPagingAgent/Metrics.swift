import AIPagingCore
import CoreMetrics
import Prometheus
import Synchronization

/// The agent's metrics, instrumented with swift-metrics and exposed by swift-prometheus
/// (`GET /metrics`, Prometheus text format 0.0.4).
///
/// Each runtime has its own registry (several agents can live in one test process; nothing is
/// bootstrapped globally). Events are counted where they happen (the lease service records
/// admissions and latencies; the exporter records each window's delay and loss);
/// levels (leases by state, capacity) are set from a snapshot when the endpoint is scraped.
///
/// **Bounded cardinality**: per-AISI delay/loss series exist for at most `maxAISI` AISIs at a time
/// (config `metrics_max_aisi`, default 64), first come first served; an AISI's series are removed
/// when its last lease ends, which frees its slot. AISIs beyond the limit are counted in
/// `aipaging_aisi_unexported` and remain fully visible in the evidence records.
public final class AgentMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory
    public let maxAISI: Int

    let installLatency: CoreMetrics.Timer
    let expiryLateness: CoreMetrics.Timer
    let admissions: [String: CoreMetrics.Counter]
    let events: [String: CoreMetrics.Counter]
    let gauges = Mutex<[String: Meter]>([:])
    let deltas = Mutex<[String: (CoreMetrics.Counter, UInt64)]>([:])

    struct AISISeries: Sendable {
        var meters: [String: Meter]
    }
    struct AISIState: Sendable {
        var series: [AISI: AISISeries] = [:]
        var unexported = CompactDictionary<AISI, Void>()
    }
    let aisi = Mutex(AISIState())

    public init(maxAISI: Int = 64) {
        registry = PrometheusCollectorRegistry()
        var f = PrometheusMetricsFactory(registry: registry)
        let latencyBuckets: [Duration] = [.microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
                                          .microseconds(2500), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                          .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(5)]
        f.durationHistogramBuckets["aipaging_install_latency_seconds"] = latencyBuckets
        f.durationHistogramBuckets["aipaging_expiry_lateness_seconds"] = latencyBuckets
        factory = f
        self.maxAISI = max(0, maxAISI)
        installLatency = Timer(label: "aipaging_install_latency_seconds", dimensions: [], factory: f)
        expiryLateness = Timer(label: "aipaging_expiry_lateness_seconds", dimensions: [], factory: f)
        var a: [String: CoreMetrics.Counter] = [:]
        for k in ["new", "renewal", "relocation"] {
            a[k] = Counter(label: "aipaging_admissions_total", dimensions: [("kind", k)], factory: f)
        }
        admissions = a
        var e: [String: CoreMetrics.Counter] = [:]
        for k in LifecycleEvent.Kind.allCases {
            e[k.rawValue] = Counter(label: "aipaging_lease_events_total", dimensions: [("event", k.rawValue)], factory: f)
        }
        events = e
    }

    // MARK: recorded where they happen

    /// A COMMIT was admitted (installed) after `latencyNs` from admission to kernel state.
    public func admitted(_ kind: Admission.Kind, latencyNs: UInt64) {
        switch kind {
        case .new: admissions["new"]?.increment()
        case .renewal: admissions["renewal"]?.increment()
        case .relocation: admissions["relocation"]?.increment()
        }
        installLatency.recordNanoseconds(Int64(clamping: latencyNs))
    }

    public func expiryLate(nanoseconds ns: UInt64) { expiryLateness.recordNanoseconds(Int64(clamping: ns)) }

    public func event(_ kind: LifecycleEvent.Kind) { events[kind.rawValue]?.increment() }

    /// One measurement window of a lease of `aisi`: sets that AISI's delay, jitter and loss gauges
    /// (if it has, or gets, one of the `maxAISI` slots).
    public func observeWindow(aisi name: AISI, stats: ProbeLedger.WindowStats, summary: DelaySummary?, stateful: Bool) {
        let series: AISISeries? = aisi.withLock { st in
            if let s = st.series[name] { return s }
            guard st.series.count < maxAISI else {
                st.unexported[name] = ()
                return nil
            }
            var m: [String: Meter] = [:]
            for q in ["0.5", "0.99", "0.999", "max"] {
                m["delay_\(q)"] = Meter(label: "aipaging_aisi_delay_seconds", dimensions: [("aisi", name), ("quantile", q)], factory: factory)
            }
            for d in ["round_trip", "forward", "backward"] {
                m["loss_\(d)"] = Meter(label: "aipaging_aisi_loss_ratio", dimensions: [("aisi", name), ("direction", d)], factory: factory)
            }
            m["jitter"] = Meter(label: "aipaging_aisi_jitter_seconds", dimensions: [("aisi", name)], factory: factory)
            let s = AISISeries(meters: m)
            st.series[name] = s
            st.unexported[name] = nil
            return s
        }
        guard let series else { return }
        if let summary {
            series.meters["delay_0.5"]?.set(Double(summary.p50Ns) / 1e9)
            series.meters["delay_0.99"]?.set(Double(summary.p99Ns) / 1e9)
            series.meters["delay_0.999"]?.set(Double(summary.p999Ns) / 1e9)
            series.meters["delay_max"]?.set(Double(summary.maxNs) / 1e9)
        }
        if stats.sent > 0 {
            series.meters["loss_round_trip"]?.set(Double(stats.sent - stats.received) / Double(stats.sent))
            if stateful {
                series.meters["loss_forward"]?.set(Double(stats.lostForward) / Double(stats.sent))
                let reflected = stats.received + stats.lostBackward
                if reflected > 0 { series.meters["loss_backward"]?.set(Double(stats.lostBackward) / Double(reflected)) }
            }
        }
        if let j = stats.jitterNs { series.meters["jitter"]?.set(j / 1e9) }
    }

    /// The AISI has no live lease any more: its series go away and its slot is free.
    public func releaseAISI(_ name: AISI) {
        let s = aisi.withLock { st -> AISISeries? in
            st.unexported[name] = nil
            return st.series.removeValue(forKey: name)
        }
        for m in s?.meters.values ?? [:].values { m.destroy() }
    }

    // MARK: levels, set at scrape time

    func gauge(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        let m = gauges.withLock { g -> Meter in
            if let m = g[key] { return m }
            let m = Meter(label: name, dimensions: labels, factory: factory)
            g[key] = m
            return m
        }
        m.set(value)
    }

    /// A counter that follows a monotonic total kept elsewhere (incremented by the difference).
    func total(_ name: String, _ labels: [(String, String)] = [], _ value: UInt64) {
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        let (c, inc) = deltas.withLock { d -> (CoreMetrics.Counter, UInt64) in
            if let (c, last) = d[key] {
                d[key] = (c, max(last, value))
                return (c, value > last ? value - last : 0)
            }
            let c = Counter(label: name, dimensions: labels, factory: factory)
            d[key] = (c, value)
            return (c, value)
        }
        if inc > 0 { c.increment(by: inc) }
    }

    /// Renders `GET /metrics`: levels from the service, the evidence log and the exporter, then
    /// the registry.
    public func render(service: LeaseService, evidence: EvidenceStore) async -> String {
        let s = await service.snapshot()
        for st in LeaseState.allCases where st.isLive { gauge("aipaging_leases", [("state", st.rawValue)], Double(s.byState[st] ?? 0)) }
        total("aipaging_resyncs_total", [], UInt64(s.stats.resyncs))
        total("aipaging_repairs_total", [], UInt64(s.stats.repairs))
        total("aipaging_batches_total", [], UInt64(s.stats.batches))
        total("aipaging_kernel_drift_total", [], UInt64(s.stats.driftReports))
        total("aipaging_journal_compaction_failures_total", [], UInt64(s.stats.journalCompactionFailures))
        // Refused requests by cause, wherever they were refused (the API's decoding or the service).
        for (cause, n) in service.rejectionCounts { total("aipaging_rejections_total", [("cause", cause.rawValue)], UInt64(n)) }
        for p in s.points {
            gauge("aipaging_capacity_kbit", [("point", p.config.name)], Double(p.config.capacityKbit))
            gauge("aipaging_guaranteed_kbit", [("point", p.config.name)], Double(p.guaranteedKbit))
            gauge("aipaging_in_sync", [("point", p.config.name)], p.needsResync ? 0 : 1)
        }
        if let log = evidence.log {
            let ls = log.status
            gauge("aipaging_evidence_head_seq", [], Double(ls.headSeq))
            gauge("aipaging_evidence_durable_seq", [], Double(ls.durableSeq))
            total("aipaging_evidence_records_total", [], ls.recordsWritten)
            total("aipaging_evidence_bytes_total", [], ls.bytesWritten)
            total("aipaging_evidence_syncs_total", [], ls.syncs)
            total("aipaging_evidence_write_errors_total", [], ls.writeErrors)
        }
        if let ex = evidence.exporter?.currentStats {
            gauge("aipaging_probe_sessions", [], Double(ex.probing))
            total("aipaging_probes_sent_total", [], ex.probesSent)
            total("aipaging_probes_received_total", [], ex.probesReceived)
            total("aipaging_counter_reads_total", [], ex.counterReads)
        }
        gauge("aipaging_aisi_unexported", [], Double(aisi.withLock { $0.unexported.count }))
        return registry.emitToString()
    }
}

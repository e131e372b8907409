import AIPagingCore

/// Evidence and measurement settings (config file keys in parentheses).
public struct EvidenceSettings: Sendable, Equatable {
    /// Length of a measurement window (`evidence_window_ms`, 1 000 .. 60 000). Windows are aligned
    /// to multiples of this on the wall clock; a lease's first and last windows are partial.
    public var windowMs = 10_000
    /// Probe interval per lease (`probe_interval_ms`; 0 turns probing off; default 100 = 10 Hz).
    public var probeIntervalMs = 100
    /// Most probes per second the exporter sends in all (`max_probe_rate`; 0: no limit). When the
    /// probing leases at `probeIntervalMs` would exceed it, each lease probes every k-th interval
    /// (the smallest k that fits), spread evenly, and the agent logs k: many leases cost bounded
    /// CPU and probe traffic instead of starving the agent.
    public var maxProbeRate = 10_000
    /// A probe with no reply this long after its window ended counts as lost (`probe_timeout_ms`).
    public var probeTimeoutMs = 1000
    /// UDP port of the anchors' STAMP reflectors (`probe_port`, default 862, RFC 8762's).
    public var probePort: UInt16 = 862
    /// What the anchors' reflectors are (`probe_reflector`: `stateful` as `aipaging-reflector`
    /// runs by default, which gives loss in each direction, or `stateless`).
    public var reflectorMode: ProbeLedger.ReflectorMode = .stateful
    /// How often the per-lease nftables counters are read in one dump (`counter_interval_ms`);
    /// also at every window boundary and shortly before each lease's deadline.
    public var counterIntervalMs = 1000
    /// Longest time between writing a record and `fdatasync` (`evidence_sync_ms`).
    public var syncIntervalMs = 1000
    /// Size at which the log starts a new segment file (`evidence_segment_bytes`).
    public var segmentBytes = 64 << 20
    /// Most AISIs with their own delay/loss series in `/metrics` (`metrics_max_aisi`).
    public var metricsMaxAISI = 64

    public init() {}

    public var json: JSON {
        ["window_ms": .int(windowMs), "probe_interval_ms": .int(probeIntervalMs), "max_probe_rate": .int(maxProbeRate), "probe_timeout_ms": .int(probeTimeoutMs),
         "probe_port": .int(probePort), "probe_reflector": .string(reflectorMode.rawValue),
         "counter_interval_ms": .int(counterIntervalMs), "sync_ms": .int(syncIntervalMs)]
    }
}

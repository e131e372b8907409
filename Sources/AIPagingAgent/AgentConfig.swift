import AIPagingCore
#if canImport(Glibc)
import Glibc
#endif

/// The agent's configuration: a JSON file (`--config`) with flags on top (flags win).
public struct AgentConfig: Sendable, Equatable {
    public var socketPath = "/run/aipaging/agent.sock"
    /// Socket file mode; 0660 when a group is set, else 0600.
    public var socketMode: UInt32?
    /// Group (name or numeric id) that owns the socket file.
    public var socketGroup: String?
    public var stateDir = "/var/lib/aipaging"
    public var policyPath: String?
    public var flushOnExit = false
    public var groupSize = Layout.defaultGroupSize
    public var enforcementPoints: [EnforcementPointConfig] = []
    public var maxBodyBytes = 64 * 1024
    public var maxBatchBodyBytes = 8 * 1024 * 1024
    public var requestTimeoutMs = 10_000
    public var logLevel = "info"
    /// Interval of the background reconcile: due leases, failed reconciles (ms).
    public var reconcileIntervalMs = 1000
    /// Evidence: measurement windows, probing, the log's sync policy, metric cardinality.
    public var evidence = EvidenceSettings()
    /// Watch the enforcement namespaces for nftables/tc changes by other processes and repair
    /// them at once (`drift_repair`).
    public var driftRepair = true
    /// The control API's HTTP and JSON work on a thread of its own (`http_thread`, default off):
    /// parsing and encoding then overlap with the lease service's kernel work, at the price of
    /// two thread switches per request. Off, both share one thread. On the 2-vCPU bench node
    /// the shared thread is faster for single PUTs (3 050 vs 2 410 leases/s at 10 000 active)
    /// and the separate one for batches (6 000 vs 4 800 leases/s); see docs/performance.md.
    public var httpThread = false
    /// Nice value of the threads controllers wait on: the lease service's, the expiry timer's and
    /// the journal's (`lease_thread_nice`, -20...19, default -10). See `ThreadScheduling`.
    public var leaseThreadNice = -10

    public static let defaultCapacityKbit: UInt64 = 1_000_000

    public init() {}

    public struct LoadError: Error, Sendable, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// Parses a config file; unknown keys are errors.
    public static func parse(_ bytes: some Collection<UInt8>) throws(LoadError) -> AgentConfig {
        func fail(_ m: String) -> LoadError { LoadError(description: "config: \(m)") }
        let root: JSON.Object
        do {
            guard let o = try JSON.parse(bytes).objectValue else { throw fail("must be a JSON object") }
            root = o
        } catch let e as JSON.ParseError {
            throw fail(e.description)
        } catch let e as LoadError {
            throw e
        } catch { throw fail("\(error)") }
        var c = AgentConfig()
        let known: Set<String> = ["socket", "socket_mode", "socket_group", "state_dir", "policy", "flush_on_exit", "group_size",
                                  "enforcement_points", "max_body_bytes", "max_batch_body_bytes", "request_timeout_ms", "log_level",
                                  "reconcile_interval_ms", "drift_repair", "http_thread", "lease_thread_nice", "comment",
                                  "evidence_window_ms", "probe_interval_ms", "max_probe_rate", "probe_timeout_ms", "probe_port", "probe_reflector",
                                  "counter_interval_ms", "evidence_sync_ms", "evidence_segment_bytes", "metrics_max_aisi"]
        for k in root.keys where !known.contains(k) && !k.hasPrefix("x-") { throw fail("unknown key \"\(k)\"") }
        if let v = root["socket"] { guard let s = v.stringValue else { throw fail("socket must be a path") }; c.socketPath = s }
        if let v = root["socket_mode"] {
            guard let s = v.stringValue, let m = UInt32(s, radix: 8), m <= 0o777 else { throw fail("socket_mode must be an octal string like \"0660\"") }
            c.socketMode = m
        }
        if let v = root["socket_group"] { c.socketGroup = v.stringValue ?? v.int64Value.map { String($0) } }
        if let v = root["state_dir"] { guard let s = v.stringValue else { throw fail("state_dir must be a path") }; c.stateDir = s }
        if let v = root["policy"] { c.policyPath = v.stringValue }
        if let v = root["flush_on_exit"] { guard let b = v.boolValue else { throw fail("flush_on_exit must be a boolean") }; c.flushOnExit = b }
        if let v = root["http_thread"] { guard let b = v.boolValue else { throw fail("http_thread must be a boolean") }; c.httpThread = b }
        if let v = root["group_size"] {
            guard let n = v.int64Value, (1...4096).contains(n) else { throw fail("group_size must be 1..4096") }
            c.groupSize = Int(n)
        }
        if let v = root["max_body_bytes"] {
            guard let n = v.int64Value, (256...16_777_216).contains(n) else { throw fail("max_body_bytes must be 256..16777216") }
            c.maxBodyBytes = Int(n)
        }
        if let v = root["max_batch_body_bytes"] {
            guard let n = v.int64Value, (1024...1_073_741_824).contains(n) else { throw fail("max_batch_body_bytes must be 1024..1073741824") }
            c.maxBatchBodyBytes = Int(n)
        }
        if let v = root["request_timeout_ms"] {
            guard let n = v.int64Value, (10...600_000).contains(n) else { throw fail("request_timeout_ms must be 10..600000") }
            c.requestTimeoutMs = Int(n)
        }
        if let v = root["reconcile_interval_ms"] {
            guard let n = v.int64Value, (0...3_600_000).contains(n) else { throw fail("reconcile_interval_ms must be 0..3600000") }
            c.reconcileIntervalMs = Int(n)
        }
        if let v = root["drift_repair"] { guard let b = v.boolValue else { throw fail("drift_repair must be a boolean") }; c.driftRepair = b }
        if let v = root["log_level"] { c.logLevel = v.stringValue ?? "info" }
        func int(_ key: String, _ range: ClosedRange<Int64>) throws(LoadError) -> Int? {
            guard let v = root[key] else { return nil }
            guard let n = v.int64Value, range.contains(n) else { throw fail("\(key) must be an integer in \(range.lowerBound)...\(range.upperBound)") }
            return Int(n)
        }
        if let n = try int("lease_thread_nice", -20...19) { c.leaseThreadNice = n }
        if let n = try int("evidence_window_ms", 1000...60_000) { c.evidence.windowMs = n }
        if let n = try int("probe_interval_ms", 0...60_000) { c.evidence.probeIntervalMs = n }
        if let n = try int("max_probe_rate", 0...10_000_000) { c.evidence.maxProbeRate = n }
        if let n = try int("probe_timeout_ms", 10...60_000) { c.evidence.probeTimeoutMs = n }
        if let n = try int("probe_port", 1...65_535) { c.evidence.probePort = UInt16(n) }
        if let n = try int("counter_interval_ms", 100...60_000) { c.evidence.counterIntervalMs = n }
        if let n = try int("evidence_sync_ms", 0...60_000) { c.evidence.syncIntervalMs = n }
        if let n = try int("evidence_segment_bytes", 4096...(1 << 40)) { c.evidence.segmentBytes = n }
        if let n = try int("metrics_max_aisi", 0...100_000) { c.evidence.metricsMaxAISI = n }
        if let v = root["probe_reflector"] {
            guard let m = v.stringValue.flatMap(ProbeLedger.ReflectorMode.init(rawValue:)) else {
                throw fail("probe_reflector must be \"stateful\" (aipaging-reflector's default: loss per direction) or \"stateless\"")
            }
            c.evidence.reflectorMode = m
        }
        if c.evidence.probeIntervalMs > 0 && c.evidence.probeTimeoutMs >= c.evidence.windowMs {
            throw fail("probe_timeout_ms (\(c.evidence.probeTimeoutMs)) must be shorter than evidence_window_ms (\(c.evidence.windowMs))")
        }
        if let v = root["enforcement_points"] {
            guard let arr = v.arrayValue else { throw fail("enforcement_points must be an array") }
            var names = Set<String>()
            for (i, item) in arr.enumerated() {
                guard let o = item.objectValue else { throw fail("enforcement_points[\(i)] must be an object") }
                for k in o.keys where !["name", "netns", "capacity_kbit", "comment"].contains(k) {
                    throw fail("enforcement_points[\(i)]: unknown key \"\(k)\"")
                }
                let netns = o["netns"]?.stringValue
                guard let name = o["name"]?.stringValue ?? netns, Identifier.isValid(name) else {
                    throw fail("enforcement_points[\(i)] needs a name (identifier)")
                }
                guard names.insert(name).inserted else { throw fail("enforcement point \(name) appears twice") }
                var cap = defaultCapacityKbit
                if let cv = o["capacity_kbit"] {
                    guard let n = cv.int64Value, n > 0 else { throw fail("enforcement_points[\(i)].capacity_kbit must be > 0") }
                    cap = UInt64(n)
                }
                c.enforcementPoints.append(EnforcementPointConfig(name: name, netns: netns, capacityKbit: cap))
            }
            do { try c.checkPointNamespaces() } catch { throw fail(error.description) }
        }
        return c
    }

    /// Applies the flags of CONTRACT.md on top of the file: `--netns` and `--capacity-kbit`
    /// configure the first (default) enforcement point, creating it if the file has none.
    public mutating func applyFlags(socket: String?, netns: String?, stateDir: String?, capacityKbit: UInt64?,
                                    policy: String?, flushOnExit: Bool?) {
        if let socket { socketPath = socket }
        if let stateDir { self.stateDir = stateDir }
        if let policy { policyPath = policy }
        if let flushOnExit { self.flushOnExit = flushOnExit }
        if enforcementPoints.isEmpty {
            enforcementPoints.append(EnforcementPointConfig(name: netns ?? "default", netns: netns,
                                                            capacityKbit: capacityKbit ?? AgentConfig.defaultCapacityKbit))
        } else {
            if let netns { enforcementPoints[0].netns = netns }
            if let capacityKbit { enforcementPoints[0].capacityKbit = capacityKbit }
        }
    }

    /// One point per namespace: the agent owns the namespace's `inet aipaging` table, its HTB
    /// roots and its conntrack marks. Checked on the file and again after the flags (`--netns`
    /// sets the first point's namespace). Throws naming the second point.
    public func checkPointNamespaces() throws(LoadError) {
        var seen = Set<String?>()
        for p in enforcementPoints where !seen.insert(p.netns).inserted {
            throw LoadError(description: "enforcement point \(p.name) uses \(p.netns.map { "namespace \($0)" } ?? "the agent's own namespace"), as an earlier point does; each point needs its own")
        }
    }

    /// Capacity per point: the policy's value where it names the point, else the config's.
    /// An explicit `--capacity-kbit` flag has already been written into the first point and wins.
    public func effectivePoints(policy: Policy, capacityFlag: UInt64?) -> [EnforcementPointConfig] {
        enforcementPoints.enumerated().map { i, p in
            var q = p
            if !(i == 0 && capacityFlag != nil), let cap = policy.capacityKbit[p.name] { q.capacityKbit = cap }
            return q
        }
    }
}

import AIPagingAgent
import AIPagingCore
import Testing

/// The config file: known keys set their fields, anything unknown or mistyped is refused with
/// the key named (an ignored key could change what the operator meant).
@Suite struct AgentConfigTests {
    func parse(_ text: String) throws(AgentConfig.LoadError) -> AgentConfig {
        try AgentConfig.parse(Array(text.utf8))
    }

    @Test func knownKeysSetTheirFields() throws {
        let c = try parse("""
        {"socket": "/run/x.sock", "state_dir": "/var/lib/x", "flush_on_exit": true, "group_size": 128,
         "http_thread": true, "drift_repair": false, "reconcile_interval_ms": 0,
         "evidence_window_ms": 2000, "probe_interval_ms": 0, "max_probe_rate": 500, "lease_thread_nice": -5, "x-note": "ignored"}
        """)
        #expect(c.leaseThreadNice == -5)
        #expect(c.socketPath == "/run/x.sock" && c.stateDir == "/var/lib/x" && c.flushOnExit && c.groupSize == 128)
        #expect(c.httpThread && !c.driftRepair && c.reconcileIntervalMs == 0)
        #expect(c.evidence.windowMs == 2000 && c.evidence.probeIntervalMs == 0 && c.evidence.maxProbeRate == 500)
        let d = try parse("{}")
        #expect(!d.httpThread && d.driftRepair && d.groupSize == Layout.defaultGroupSize && d.leaseThreadNice == -10)
    }

    @Test func unknownOrMistypedKeysAreRefused() {
        for (text, says) in [("{\"http_threads\": true}", "unknown key \"http_threads\""),
                             ("{\"http_thread\": 1}", "http_thread must be a boolean"),
                             ("{\"group_size\": 0}", "group_size must be 1..4096"),
                             ("{\"enforcement_points\": [{\"name\": \"a\", \"netns\": \"ns1\"}, {\"name\": \"b\", \"netns\": \"ns1\"}]}",
                              "enforcement point b uses namespace ns1, as an earlier point does"),
                             ("{\"enforcement_points\": [{\"name\": \"a\"}, {\"name\": \"b\"}]}",
                              "enforcement point b uses the agent's own namespace, as an earlier point does"),
                             ("{\"lease_thread_nice\": -21}", "lease_thread_nice must be an integer in -20...19"),
                             ("{\"probe_interval_ms\": 100, \"probe_timeout_ms\": 20000, \"evidence_window_ms\": 10000}",
                              "probe_timeout_ms (20000) must be shorter than evidence_window_ms (10000)")] {
            #expect { try parse(text) } throws: { ($0 as? AgentConfig.LoadError)?.description.contains(says) == true }
        }
    }

    @Test func theNetnsFlagCannotPutTwoPointsInOneNamespace() throws {
        var c = try parse("{\"enforcement_points\": [{\"name\": \"a\", \"netns\": \"ns1\"}, {\"name\": \"b\", \"netns\": \"ns2\"}]}")
        try c.checkPointNamespaces()
        c.applyFlags(socket: nil, netns: "ns2", stateDir: nil, capacityKbit: nil, policy: nil, flushOnExit: nil)
        #expect { try c.checkPointNamespaces() } throws: {
            ($0 as? AgentConfig.LoadError)?.description.contains("enforcement point b uses namespace ns2, as an earlier point does") == true
        }
    }
}

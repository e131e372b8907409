import AIPagingAgent
import AIPagingClient
import AIPagingCore
import AIPagingTestSupport
import Foundation
import Testing

/// The agent against the real kernel: a namespace lab, real packets, state read back with
/// nft/tc/conntrack. Root only (CI runs as root).
@Suite(.serialized, .enabled(if: Shell.isRoot)) struct EnforcementLiveTests {
    @Test(arguments: [(false, "udp"), (false, "tcp"), (true, "udp"), (true, "tcp")])
    func steeringExistsOnlyWhileTheLeaseIsValid(v6: Bool, proto: String) async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        let tcp = proto == "tcp"
        #expect(lab.probe(vip(v6), count: 2, tcp: tcp) == ["-", "-"] || lab.probe(vip(v6), count: 2, tcp: tcp).allSatisfy { $0 != "edge-1" })

        let (s, body) = try await agent.call("PUT", "/v1/leases/L1", json: labLease("L1", v6: v6, proto: proto))
        #expect(s == 201, "\(body)")
        let answers = lab.probe(vip(v6), count: 3, tcp: tcp)
        if answers != ["edge-1", "edge-1", "edge-1"] {
            let diag = [try? lab.exec("enforce", ["conntrack", "-L", "-f", v6 ? "ipv6" : "ipv4"]), lab.nftTable(),
                        try? lab.exec("enforce", ["tc", "-s", "class", "show", "dev", "r-edge"]),
                        try? lab.exec("edge", ["ss", "-tan"]), try? lab.exec("client", ["ss", "-tan"]),
                        try? lab.exec("edge", ["ip", "-6", "neigh"]), try? lab.exec("enforce", ["ip", "-6", "neigh"])]
            Issue.record("probe answers \(answers); retry \(lab.probe(vip(v6), count: 3, tcp: tcp, timeout: 2))\n\(diag.map { $0 ?? "?" }.joined(separator: "\n"))")
        }
        #expect(lab.nftElementCount() == 4)   // steering, anchor, qos original + reply
        #expect(lab.tcClasses("r-edge").contains { $0.contains("class htb 100:2") })
        // The lease's packets are counted in its class.
        #expect((lab.tcSentPackets("r-edge")["100:2"] ?? 0) >= 3)

        let (rs, _) = try await agent.call("DELETE", "/v1/leases/L1")
        #expect(rs == 200)
        #expect(lab.nftElementCount() == 0)
        #expect(lab.tcClasses("r-edge").isEmpty)
        #expect(lab.leaseConntrackEntries().isEmpty)
        #expect(!lab.probe(vip(v6), count: 2, tcp: tcp).contains("edge-1"))
        await agent.stop()
        #expect(lab.nftTable().isEmpty)   // --flush-on-exit
    }

    /// A flow that was established and still sending when the lease ended gets no further packet
    /// to the anchor — UDP (same socket) and TCP (same connection), on expiry and on revoke.
    @Test(arguments: [("udp", "expiry"), ("tcp", "expiry"), ("udp", "revoke"), ("tcp", "revoke")])
    func establishedFlowsEndWithTheLease(proto: String, end: String) async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        let (s, body) = try await agent.call("PUT", "/v1/leases/L1", json: labLease("L1", proto: proto, ttlMs: 1500))
        #expect(s == 201)
        let stream = try StreamProcess(lab: lab, addr: vip(false), seconds: 2.6, intervalMs: 10, tcp: proto == "tcp")
        var endMs = epochMs(body["expires_at"]?.stringValue)!
        if end == "revoke" {
            try await Task.sleep(for: .milliseconds(700))
            let (rs, rb) = try await agent.call("DELETE", "/v1/leases/L1")
            #expect(rs == 200)
            endMs = epochMs(rb["ended_at"]?.stringValue)!
        }
        let samples = stream.finish()
        let before = samples.filter { $0.0 < endMs - 100 }
        let after = samples.filter { $0.0 > endMs + 5 }
        // While the lease lives the flow is served (a reply slower than the 10 ms request
        // interval under load counts as "-"; the point is what happens after the end).
        #expect(before.count > 20 && before.filter { $0.1 == "edge-1" }.count * 10 >= before.count * 3
                && before.allSatisfy { $0.1 == "edge-1" || $0.1 == "-" }, "before: \(before.map(\.1))")
        #expect(after.count > 20)
        #expect(after.allSatisfy { $0.1 != "edge-1" }, "answered after the end: \(after.filter { $0.1 == "edge-1" }.map(\.0))")
        try await Task.sleep(for: .milliseconds(50))
        #expect(lab.nftElementCount() == 0)
        #expect(lab.tcClasses("r-edge").isEmpty)
        #expect(lab.leaseConntrackEntries().isEmpty, "\(lab.leaseConntrackEntries())")
    }

    /// A UDP flow that was already sending before its lease existed (conntrack entry without a
    /// lease mark) is steered shortly after the commit: the agent's deferred sweep removes its
    /// stale conntrack entry so the next packet is classified.
    @Test func aFlowThatBeganBeforeItsLeaseIsSteeredSoonAfter() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        let stream = try StreamProcess(lab: lab, addr: vip(false), seconds: 3.5, intervalMs: 20)
        try await Task.sleep(for: .milliseconds(600))
        let (s, body) = try await agent.call("PUT", "/v1/leases/P", json: labLease("P", ttlMs: 20_000))
        #expect(s == 201)
        let committed = epochMs(body["admitted_at"]?.stringValue)!
        let samples = stream.finish()
        #expect(samples.filter { $0.0 < committed }.allSatisfy { $0.1 == "-" })
        let later = samples.filter { $0.0 > committed + 1600 }
        #expect(later.count > 20 && later.allSatisfy { $0.1 == "edge-1" }, "\(later.map(\.1))")
    }

    /// With the agent killed, the kernel timeouts still end steering at the deadline.
    @Test func killedAgentStillStopsSteeringAtTheDeadline() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let dir = NSTemporaryDirectory() + "aipaging-kill-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let agentPath = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("aipaging-agent").path
        guard FileManager.default.isExecutableFile(atPath: agentPath) else {
            Issue.record("aipaging-agent not built next to the test bundle (\(agentPath))")
            return
        }
        let agent = Process()
        agent.executableURL = URL(fileURLWithPath: agentPath)
        agent.arguments = ["--netns", lab.ns("enforce"), "--socket", dir + "/agent.sock", "--state-dir", dir, "--log-level", "warning"]
        agent.standardError = agentStderr(dir + "/agent.stderr")
        try agent.run()
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: dir + "/agent.sock") { try await Task.sleep(for: .milliseconds(50)) }
        let client = UnixHTTPClient(path: dir + "/agent.sock")
        let r = try await offPool { try client.request("PUT", "/v1/leases/K1", body: Array(labLease("K1", ttlMs: 2000).serialized().utf8)) }
        #expect(r.status == 201)
        let deadline = epochMs(try JSON.parse(r.body)["expires_at"]?.stringValue)!
        let stream = try StreamProcess(lab: lab, addr: vip(false), seconds: 3.0, intervalMs: 10)
        try await Task.sleep(for: .milliseconds(300))
        killAgent(agent, stderrPath: dir + "/agent.stderr")
        let samples = stream.finish()
        let before = samples.filter { $0.0 < deadline - 100 }
        let after = samples.filter { $0.0 > deadline + 5 }
        #expect(before.count > 50 && before.filter { $0.1 == "edge-1" }.count * 10 >= before.count * 3 && before.allSatisfy { $0.1 == "edge-1" || $0.1 == "-" })
        #expect(after.count > 30 && after.allSatisfy { $0.1 != "edge-1" }, "steered after the deadline with the agent dead")
        // The elements are gone by kernel timeout; nobody removed them.
        #expect(lab.nftElementCount() == 0)
    }

    /// A transaction the kernel took late (the agent's thread descheduled between its clock
    /// reading and the commit; injected here) does not leave its elements outliving the lease:
    /// they are re-timed at once, so the kernel's timeouts alone (agent dead) end them by the
    /// deadline. Steering goes on meanwhile.
    /// (Second case: the re-timing transaction is slow as well, though less than its margin, which
    /// is capped at 15 ms: its margin covers it.)
    @Test(arguments: [[80_000_000], [80_000_000, 10_000_000]] as [[UInt64]])
    func aSlowTransactionsElementsAreRetimedToEndByTheDeadline(delays: [UInt64]) async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab, backendSetup: { $0.injectedCommitDelaysNs = delays })
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/S", json: labLease("S", ttlMs: 5000)).0 == 201)
        let deadline = try #require(await agent.service.lease("S")).deadline
        let readAt = SystemClock.boot()
        // (`nft -j` gives whole seconds; the text form gives milliseconds: "expires 4s912ms".)
        let text = lab.nftTable()
        let expires = text.matches(of: /expires ((?:\d+[dhms]+)+)/).map { Self.durationMs(String($0.1)) }
        #expect(expires.count == 4, "steering, anchor and two qos elements: \(text)")
        for e in expires {
            // The kernel's ms and its 4 ms tick: 5 ms of slack; unre-timed they would end 79 ms late.
            let end = readAt.adding(milliseconds: UInt64(e))
            #expect(end.nanoseconds <= deadline.nanoseconds + 5_000_000,
                    "an element ends \((Int64(end.nanoseconds) - Int64(deadline.nanoseconds)) / 1_000_000) ms after the lease's deadline")
            // Early by at most the re-timing's margin (15 ms at most) and the read.
            #expect(end.nanoseconds + 100_000_000 >= deadline.nanoseconds, "an element ends far before the deadline")
        }
        #expect(lab.probe(vip(false), count: 2) == ["edge-1", "edge-1"])
    }

    /// Milliseconds of an nft duration such as `1m4s912ms`.
    static func durationMs(_ s: String) -> Int64 {
        var total: Int64 = 0
        for m in s.matches(of: /(\d+)(ms|d|h|m|s)/) {
            let n = Int64(m.1)!
            switch m.2 {
            case "ms": total += n
            case "s": total += n * 1000
            case "m": total += n * 60_000
            case "h": total += n * 3_600_000
            default: total += n * 86_400_000
            }
        }
        return total
    }

    /// A lease whose kernel install fails is refused with a cause and leaves nothing behind;
    /// the leases already there keep working.
    @Test func failedInstallLeavesNoPartialState() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/A", json: labLease("A")).0 == 201)
        let before = lab.nftTable().replacingOccurrences(of: #"expires [0-9a-z]+"#, with: "", options: .regularExpression)
        // Someone else's root qdisc on the cloud interface: the agent must not take it over.
        try lab.exec("enforce", ["tc", "qdisc", "add", "dev", "r-cloud", "root", "handle", "1:", "tbf", "rate", "10mbit", "burst", "10kb", "latency", "50ms"])
        let (s, b) = try await agent.call("PUT", "/v1/leases/B", json: labLease("B", client: 2, anchor: "cloud-1"))
        #expect(s == 503)
        #expect(b["error"]?["cause"]?.stringValue == "enforcement_failed")
        let message = b["error"]?["message"]?.stringValue ?? ""
        #expect(message.contains("non-aipaging root qdisc"))
        let after = lab.nftTable().replacingOccurrences(of: #"expires [0-9a-z]+"#, with: "", options: .regularExpression)
        #expect(after == before)
        #expect(try lab.exec("enforce", ["tc", "qdisc", "show", "dev", "r-cloud"]).contains("qdisc tbf 1: root"))
        #expect(!lab.tcClasses("r-cloud").contains { $0.contains("htb") })
        #expect(await agent.service.lease("B") == nil)
        #expect(lab.probe(vip(false), count: 2) == ["edge-1", "edge-1"])
        #expect(lab.probe(from: "client2", vip(false), count: 2).allSatisfy { $0 != "cloud-1" })
    }

    /// Two leases for different clients of one service: each steered to its own anchor and class.
    @Test func twoClientsTheirOwnAnchorsAndClasses() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/A", json: labLease("A", aisi: "s", client: 1, anchor: "edge-1")).0 == 201)
        #expect(try await agent.call("PUT", "/v1/leases/B", json: labLease("B", aisi: "s", client: 2, anchor: "cloud-1")).0 == 201)
        #expect(lab.probe(from: "client", vip(false), count: 3) == ["edge-1", "edge-1", "edge-1"])
        #expect(lab.probe(from: "client2", vip(false), count: 3) == ["cloud-1", "cloud-1", "cloud-1"])
        let edge = lab.tcSentPackets("r-edge"), cloud = lab.tcSentPackets("r-cloud")
        #expect((edge["100:2"] ?? 0) >= 3 && (cloud["100:2"] ?? 0) >= 3)
        let a = try await agent.call("GET", "/v1/leases/A").1, b = try await agent.call("GET", "/v1/leases/B").1
        #expect(a["kernel"]?["interface"]?.stringValue == "r-edge")
        #expect(b["kernel"]?["interface"]?.stringValue == "r-cloud")
        #expect(a["kernel"]?["mark"] != b["kernel"]?["mark"])
    }

    /// The lease's class shapes: a flow offered at 3x its ceiling is delivered near the ceiling.
    @Test func theLeaseClassShapesItsFlow() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/S", json: labLease("S", ttlMs: 20_000, rate: 1000, ceil: 4000)).0 == 201)
        let delivered = try lab.blast(vip(false), mbit: 12, seconds: 3)
        #expect(delivered > 4.0 * 0.8 && delivered < 4.0 * 1.15, "delivered \(delivered) Mbit/s for a 4 Mbit/s ceil")
        let sent = lab.tcSentPackets("r-edge")
        #expect((sent["100:2"] ?? 0) > 500)
        #expect((sent["a1:2"] ?? 0) < 50)
    }

    /// Fail-static: the agent stops without flushing, the lease keeps steering; a new agent with
    /// no leases of its own (nothing journaled) makes the kernel match: empty table, no classes.
    @Test func startReconcilesTheKernelWithTheLeaseTable() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let first = try await LiveAgent(lab: lab, flushOnExit: false)
        #expect(try await first.call("PUT", "/v1/leases/F", json: labLease("F", ttlMs: 30_000)).0 == 201)
        await first.stop()
        #expect(lab.probe(vip(false), count: 2) == ["edge-1", "edge-1"])
        #expect(lab.nftElementCount() == 4)
        // Foreign steering added to the agent's table without a lease is removed too.
        try lab.exec("enforce", ["nft", "add", "element", "inet", "aipaging", "lease4",
                                 "{ 198.18.4.2 . 198.18.100.10 . udp . 7000 timeout 60s : 0xa1000777 }"])
        let second = try await LiveAgent(lab: lab)
        defer { Task { await second.stop() } }
        #expect(lab.nftElementCount() == 0)
        #expect(lab.tcClasses("r-edge").isEmpty)
        #expect(lab.nftTable().contains("chain gate"))
        #expect(!lab.probe(vip(false), count: 2).contains("edge-1"))
    }
}

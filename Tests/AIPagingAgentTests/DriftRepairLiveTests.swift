import AIPagingAgent
import AIPagingCore
import AIPagingTestSupport
import Foundation
import Testing

/// Drift repair against the real kernel: someone else (nft(8), tc(8)) deletes, alters or adds
/// state in the agent's table and classes; the agent notices through its netlink monitor and
/// puts the kernel back within a second. Root only.
@Suite(.serialized, .enabled(if: Shell.isRoot)) struct DriftRepairLiveTests {
    static let steeringKey = "{ 198.18.1.2 . 198.18.100.10 . udp . 7000 }"

    /// Polls `condition` (off the cooperative pool) every 10 ms; returns the seconds it took to
    /// hold, or nil after `timeout`.
    func secondsUntil(timeout: Double = 3, _ condition: @escaping @Sendable () -> Bool) async throws -> Double? {
        try await offPool {
            let start = Date()
            while Date().timeIntervalSince(start) < timeout {
                if condition() { return Date().timeIntervalSince(start) }
                Thread.sleep(forTimeInterval: 0.01)
            }
            return nil
        }
    }

    func steeringElements(_ lab: ScriptLab) -> String {
        (try? lab.exec("enforce", ["nft", "list", "map", "inet", "aipaging", "lease4"])) ?? ""
    }

    @Test func anExternallyDeletedElementIsPutBack() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/D1", json: labLease("D1", ttlMs: 30_000)).0 == 201)
        #expect(steeringElements(lab).contains("198.18.1.2 . 198.18.100.10 . udp . 7000"))

        _ = try await offPool { try lab.exec("enforce", ["nft", "delete", "element", "inet", "aipaging", "lease4", Self.steeringKey]) }
        let took = try await secondsUntil { self.steeringElements(lab).contains("198.18.1.2 . 198.18.100.10 . udp . 7000") }
        #expect(took != nil && took! < 1.0, "steering element not repaired within 1 s (\(String(describing: took)))")
        print("drift repair: nft delete element repaired in \(Int((took ?? -1) * 1000)) ms")
        // Repaired with the lease's remaining life, and it steers again.
        #expect(steeringElements(lab).contains("timeout 2"))
        #expect(lab.probe(vip(false), count: 2) == ["edge-1", "edge-1"])
        let stats = await agent.service.stats
        #expect(stats.driftReports >= 1 && stats.repairs >= 1)
    }

    @Test func anExternallyDeletedClassIsPutBack() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/C1", json: labLease("C1", ttlMs: 30_000, rate: 2000, ceil: 4000)).0 == 201)
        #expect(lab.tcClasses("r-edge").contains { $0.hasPrefix("class htb 100:2 ") })

        _ = try await offPool { try lab.exec("enforce", ["tc", "class", "del", "dev", "r-edge", "classid", "100:2"]) }
        let took = try await secondsUntil { lab.tcClasses("r-edge").contains { $0.hasPrefix("class htb 100:2 ") } }
        #expect(took != nil && took! < 1.0, "class not repaired within 1 s (\(String(describing: took)))")
        print("drift repair: tc class del repaired in \(Int((took ?? -1) * 1000)) ms")
        let line = lab.tcClasses("r-edge").first { $0.hasPrefix("class htb 100:2 ") } ?? ""
        #expect(line.contains("rate 2Mbit ceil 4Mbit"), "\(line)")
        #expect(lab.probe(vip(false), count: 2) == ["edge-1", "edge-1"])
        #expect((lab.tcSentPackets("r-edge")["100:2"] ?? 0) >= 2)
    }

    /// Someone deletes the eBPF classifier on the agent's root: it is put back and the lease's
    /// packets are classified into its class again.
    @Test func aDeletedClassifierIsPutBack() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/F1", json: labLease("F1", ttlMs: 30_000)).0 == 201)
        @Sendable func filters() -> String { (try? lab.exec("enforce", ["tc", "filter", "show", "dev", "r-edge", "parent", "a1:"])) ?? "" }
        #expect(filters().contains("aip_prio2grp"))
        _ = try await offPool { try lab.exec("enforce", ["tc", "filter", "del", "dev", "r-edge", "parent", "a1:"]) }
        let took = try await secondsUntil { filters().contains("aip_prio2grp") }
        #expect(took != nil && took! < 1.0, "classifier not repaired within 1 s (\(String(describing: took)))")
        print("drift repair: tc filter del repaired in \(Int((took ?? -1) * 1000)) ms")
        let before = lab.tcSentPackets("r-edge")["100:2"] ?? 0
        #expect(lab.probe(vip(false), count: 3) == ["edge-1", "edge-1", "edge-1"])
        #expect((lab.tcSentPackets("r-edge")["100:2"] ?? 0) >= before + 3)
    }

    @Test func steeringAddedWithoutALeaseIsRemoved() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/A1", json: labLease("A1", ttlMs: 30_000)).0 == 201)

        // client2's flow, with a mark no lease owns, and a DNAT target for it.
        _ = try await offPool {
            try lab.exec("enforce", ["nft", "add", "element", "inet", "aipaging", "lease4",
                                     "{ 198.18.4.2 . 198.18.100.10 . udp . 7000 timeout 60s : 0xa1000777 }"])
        }
        let took = try await secondsUntil { !self.steeringElements(lab).contains("198.18.4.2") }
        #expect(took != nil && took! < 1.0, "foreign element not removed within 1 s (\(String(describing: took)))")
        print("drift repair: foreign element removed in \(Int((took ?? -1) * 1000)) ms")
        // The lease's own element is untouched.
        #expect(steeringElements(lab).contains("198.18.1.2 . 198.18.100.10 . udp . 7000"))
        #expect(!lab.probe(from: "client2", vip(false), count: 2).contains("edge-1"))
    }

    /// Someone deletes the whole table: the agent rebuilds it and puts the leases' elements back.
    @Test func aDeletedTableIsRebuilt() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/T1", json: labLease("T1", ttlMs: 30_000)).0 == 201)
        _ = try await offPool { try lab.exec("enforce", ["nft", "delete", "table", "inet", "aipaging"]) }
        let took = try await secondsUntil { lab.nftElementCount() == 4 && lab.nftTable().contains("chain gate") }
        #expect(took != nil && took! < 1.0, "table not rebuilt within 1 s (\(String(describing: took)))")
        print("drift repair: deleted table rebuilt in \(Int((took ?? -1) * 1000)) ms")
        #expect(lab.probe(vip(false), count: 2) == ["edge-1", "edge-1"])
    }

    /// The agent's own commits, renewals, relocations and revokes never look like drift.
    @Test func theAgentsOwnChangesAreNotDrift() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        let before = await agent.service.stats
        for i in 0..<5 {
            // Distinct classifiers: both clients, IPv4 and IPv6, UDP and TCP.
            let lease = labLease("O\(i)", aisi: "own-\(i)", v6: i == 2 || i == 3, client: 1 + i % 2, proto: i == 4 ? "tcp" : "udp", ttlMs: 20_000)
            #expect(try await agent.call("PUT", "/v1/leases/O\(i)", json: lease).0 == 201)
        }
        #expect(try await agent.call("PUT", "/v1/leases/O0", json: labLease("O0", aisi: "own-0", ttlMs: 25_000)).0 == 200)
        #expect(try await agent.call("PUT", "/v1/leases/R0", json: labLease("R0", aisi: "own-0", anchor: "cloud-1", ttlMs: 20_000,
                                                                            relocates: "O0", drainMs: 100)).0 == 201)
        for i in 1..<5 { #expect(try await agent.call("DELETE", "/v1/leases/O\(i)").0 == 200) }
        try await Task.sleep(for: .milliseconds(400))   // the drain ends, the monitor's window passes
        let after = await agent.service.stats
        #expect(after.driftReports == before.driftReports)
        #expect(after.resyncs == before.resyncs)
    }
}

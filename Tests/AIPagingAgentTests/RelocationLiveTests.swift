import AIPagingAgent
import AIPagingClient
import AIPagingCore
import AIPagingTestSupport
import Foundation
import Synchronization
import Testing

/// Make-before-break relocation against the real kernel: a 1 kHz sequence-numbered UDP stream
/// and TCP connections while the AISI moves edge -> cloud -> edge -> cloud.
@Suite(.serialized, .enabled(if: Shell.isRoot)) struct RelocationLiveTests {
    /// Receivers of the sequence-numbered stream on both anchors (UDP port 7100).
    final class Sinks: Sendable {
        let lab: ScriptLab
        let dir: String
        init(lab: ScriptLab) throws {
            self.lab = lab
            dir = NSTemporaryDirectory() + "aipaging-sinks-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for anchor in ["edge", "cloud"] {
                _ = try Shell.sh("ip netns exec \(lab.ns(anchor)) python3 \(ScriptLab.repoRoot)/scripts/udp-sink.py 7100 \(dir)/\(anchor).log >/dev/null 2>&1 &")
            }
            Thread.sleep(forTimeInterval: 0.3)
        }
        /// (receive time µs, seq, anchor) of everything received.
        func received() -> [(Int64, Int, String)] {
            var out: [(Int64, Int, String)] = []
            for anchor in ["edge", "cloud"] {
                let text = (try? String(contentsOfFile: "\(dir)/\(anchor).log", encoding: .utf8)) ?? ""
                for line in text.split(separator: "\n") {
                    let p = line.split(separator: " ")
                    if p.count >= 2, let t = Int64(p[0]), let s = Int(p[1]) { out.append((t, s, anchor)) }
                }
            }
            return out.sorted { $0.0 < $1.0 }
        }
        func destroy() {
            // The lab's teardown ends every process in its namespaces; this also covers a sink
            // that outlived its namespace.
            _ = try? Shell.run(["pkill", "-KILL", "-f", "udp-sink.py 7100 \(dir)/"])   // SIGKILL: test children inherit a blocked SIGTERM
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    func lease(_ id: String, proto: String, port: Int64, anchor: String, relocates: String? = nil, drainMs: Int64 = 1000) -> JSON {
        var o = labLease(id, aisi: "aisi-move", anchor: anchor, proto: proto, ttlMs: 60_000, relocates: relocates, drainMs: drainMs).objectValue!
        o["classifier"] = ["client": "198.18.1.2", "service": "198.18.100.10", "protocol": .string(proto), "port": .int(port)]
        o["anchor"] = ["id": .string(anchor), "address": .string(anchor == "edge-1" ? "198.18.2.2" : "198.18.3.2"), "port": .int(port)]
        return .object(o)
    }

    struct Move {
        var udpLease: String
        var tcpLease: String
        var anchor: String
        var switchedMs: Int64
        var drainEndMs: Int64     // of the lease it replaced: when the agent reported it ended
        var scheduledDrainEndMs: Int64 = 0
        var mark: UInt32
    }

    @Test func relocationsLoseNoPacketAndEndOldFlowsExactlyAtDrainEnd() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let sinks = try Sinks(lab: lab)
        defer { sinks.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }

        let (s0, b0) = try await agent.call("PUT", "/v1/leases/u0", json: lease("u0", proto: "udp", port: 7100, anchor: "edge-1"))
        let (t0s, _) = try await agent.call("PUT", "/v1/leases/t0", json: lease("t0", proto: "tcp", port: 7000, anchor: "edge-1"))
        #expect(s0 == 201 && t0s == 201)
        let firstMark = UInt32(b0["kernel"]?["mark"]?.stringValue?.dropFirst(2) ?? "", radix: 16) ?? 0

        // Sampler: the marks of the anchor elements (steering targets) over time.
        let samples = Mutex<[(Int64, Set<UInt32>)]>([])
        let stop = Atomic<Bool>(false)
        let sampler = Thread {
            while !stop.load(ordering: .relaxed) {
                let t = Int64(Date().timeIntervalSince1970 * 1000)
                if let text = try? lab.exec("enforce", ["nft", "-j", "list", "map", "inet", "aipaging", "anchor4"]),
                   let v = try? JSON.parse(text), let items = v["nftables"]?.arrayValue {
                    var marks = Set<UInt32>()
                    for item in items {
                        for e in item["map"]?["elem"]?.arrayValue ?? [] {
                            let k = e.arrayValue?.first
                            if let m = (k?["elem"]?["val"] ?? k)?.int64Value { marks.insert(UInt32(truncatingIfNeeded: m)) }
                        }
                    }
                    samples.withLock { $0.append((t, marks)) }
                }
                Thread.sleep(forTimeInterval: 0.02)
            }
        }
        sampler.start()

        let udp = try StreamProcessSeq(lab: lab, seconds: 7.0, rate: 1000)
        let tcpBefore = try StreamProcess(lab: lab, addr: vip(false), seconds: 3.0, intervalMs: 20, tcp: true)
        try await Task.sleep(for: .milliseconds(1000))

        var moves: [Move] = []
        var prev = ("u0", "t0")
        var tcpAfter: StreamProcess?
        for (k, anchor) in ["cloud-1", "edge-1", "cloud-1"].enumerated() {
            let u = "u\(k + 1)", t = "t\(k + 1)"
            let (su, bu) = try await agent.call("PUT", "/v1/leases/\(u)", json: lease(u, proto: "udp", port: 7100, anchor: anchor, relocates: prev.0))
            let (st, _) = try await agent.call("PUT", "/v1/leases/\(t)", json: lease(t, proto: "tcp", port: 7000, anchor: anchor, relocates: prev.1))
            #expect(su == 201 && st == 201, "\(bu)")
            #expect(bu["result"]?.stringValue == "relocated")
            moves.append(Move(udpLease: u, tcpLease: t, anchor: anchor, switchedMs: epochMs(bu["switched_at"]?.stringValue) ?? 0,
                              drainEndMs: epochMs(bu["drain_ends_at"]?.stringValue) ?? 0,
                              mark: UInt32(bu["kernel"]?["mark"]?.stringValue?.dropFirst(2) ?? "", radix: 16) ?? 0))
            if k == 0 {
                // A TCP flow that starts after the first switch: it must land on cloud-1.
                try await Task.sleep(for: .milliseconds(150))
                tcpAfter = try StreamProcess(lab: lab, addr: vip(false), seconds: 0.6, intervalMs: 20, tcp: true)
            }
            prev = (u, t)
            try await Task.sleep(for: .milliseconds(k == 2 ? 500 : 2000))
        }
        let after = tcpAfter!.finish()
        let before = tcpBefore.finish()
        let sentLine = udp.finish()
        try await Task.sleep(for: .milliseconds(300))
        stop.store(true, ordering: .relaxed)

        // When the agent actually ended each drain (its "drained" events): the flows must move
        // (UDP) or be cut (TCP) exactly then. How late that was after the scheduled drain end is
        // the agent's expiry lateness (printed; the kernel's own backstop is 250 ms later).
        let eventsText = try await agent.call("GET", "/v1/events?follow=false").1
        _ = eventsText
        let events = try await offPool { try agent.client.request("GET", "/v1/events?follow=false") }
        var drainedAt: [String: Int64] = [:]
        for line in String(decoding: events.body, as: UTF8.self).split(separator: "\n") {
            if let e = try? JSON.parse(String(line)), e["event"]?.stringValue == "drained", let id = e["lease_id"]?.stringValue {
                drainedAt[id] = epochMs(e["time"]?.stringValue)
            }
        }
        for (i, m) in moves.enumerated() {
            let old = i == 0 ? "u0" : moves[i - 1].udpLease
            if let d = drainedAt[old] {
                print("relocation \(i + 1): drain of \(old) ended \(d - m.drainEndMs) ms after its scheduled end")
                moves[i].scheduledDrainEndMs = m.drainEndMs
                moves[i].drainEndMs = d
            } else {
                Issue.record("no drained event for \(old)")
            }
        }

        // UDP: every packet arrived exactly once, on the anchor of the lease its flow was bound to:
        // the first anchor until the first drain ended, then each new anchor from its predecessor's
        // drain end on (a connectionless flow moves when its old lease is released).
        let got = sinks.received()
        let seqs = got.map(\.1)
        #expect(sentLine > 6000)
        let missing = Set(0..<sentLine).subtracting(seqs)
        #expect(missing.isEmpty, "\(missing.count) of \(sentLine) datagrams lost: \(missing.sorted().prefix(20))")
        if !missing.isEmpty {
            let m = missing.min()!
            let around = got.filter { abs($0.1 - m) < 8 }.map { "seq \($0.1) @\($0.0 / 1000) \($0.2)" }
            print("DIAG moves: \(moves.map { "\($0.udpLease) switched \($0.switchedMs) old drain end \($0.drainEndMs)" }); around \(m): \(around)")
            let marks = samples.withLock { $0 }.filter { abs($0.0 - (got.first { $0.1 == m - 1 }?.0 ?? 0) / 1000) < 200 }
            var runs: [String] = []
            var cur: (String, Int, Int, Int64, Int64)?
            for (t, q, a) in got.sorted(by: { $0.1 < $1.1 }) {
                if let c = cur, c.0 == a, q == c.2 + 1 { cur = (a, c.1, q, c.3, t / 1000) } else {
                    if let c = cur { runs.append("\(c.0) \(c.1)-\(c.2) @\(c.3)-\(c.4)") }
                    cur = (a, q, q, t / 1000, t / 1000)
                }
            }
            if let c = cur { runs.append("\(c.0) \(c.1)-\(c.2) @\(c.3)-\(c.4)") }
            print("DIAG runs: \(runs)")
            print("DIAG samples: \(marks.map { "\($0.0) \($0.1.map { String($0, radix: 16) }.sorted())" })")
        }
        #expect(Set(seqs).count == seqs.count, "duplicates")
        var wrong: [String] = []
        for (tUs, seq, anchor) in got {
            let t = tUs / 1000
            var expected = "edge"
            for m in moves where t > m.drainEndMs + 5 { expected = m.anchor == "edge-1" ? "edge" : "cloud" }
            // The flows move during the pass that ends the drain: from its scheduled end (the
            // timer) to the "drained" event, which is stamped when the pass's kernel work is done.
            let nearBoundary = moves.contains { t >= min($0.scheduledDrainEndMs == 0 ? $0.drainEndMs : $0.scheduledDrainEndMs, $0.drainEndMs) - 5 && t <= $0.drainEndMs + 5 }
            if anchor != expected && !nearBoundary { wrong.append("seq \(seq) at \(t) on \(anchor), expected \(expected)") }
        }
        #expect(wrong.isEmpty, "\(wrong.prefix(5))")
        var gap: Int64 = 0
        for i in 1..<got.count { gap = max(gap, got[i].0 - got[i - 1].0) }
        print("relocation: \(sentLine) datagrams, none lost; largest receive gap \(Double(gap) / 1000) ms")

        // TCP established before the first switch: served by edge-1 until t0's drain ended, cut then.
        let d1 = drainedAt["t0"] ?? moves[0].drainEndMs
        #expect(before.filter { $0.0 < moves[0].switchedMs }.allSatisfy { $0.1 == "edge-1" || $0.1 == "-" })
        #expect(before.filter { $0.0 > moves[0].switchedMs && $0.0 < d1 - 20 }.contains { $0.1 == "edge-1" },
                "the old connection was not served during the drain")
        let lateAnswers = before.filter { $0.0 > d1 + 25 && $0.1 == "edge-1" }
        #expect(lateAnswers.isEmpty, "the old connection outlived its drain end \(d1): \(before.filter { abs($0.0 - d1) < 80 }.map { "\($0.0 - d1):\($0.1)" })")
        // TCP started after the switch: the new anchor.
        #expect(!after.isEmpty && after.filter { $0.1 != "-" }.allSatisfy { $0.1 == "cloud-1" })
        #expect(after.contains { $0.1 == "cloud-1" })

        // No sampled instant shows an anchor element of a lease that was no longer valid: the
        // replaced lease's mark disappears by its drain end.
        let marks = [firstMark] + moves.map(\.mark)
        let samplesNow = samples.withLock { $0 }
        for (i, m) in moves.enumerated() {
            let oldMark = marks[i]
            let late = samplesNow.filter { $0.0 > m.drainEndMs + 30 && $0.1.contains(oldMark) }
            #expect(late.isEmpty, "mark \(String(oldMark, radix: 16)) still steered \(late.first.map { $0.0 - m.drainEndMs } ?? 0) ms after its drain end")
        }
        #expect(samplesNow.count > 50)
    }

    /// A relocation whose new anchor cannot be installed is refused; the old path is untouched
    /// and the stream on it loses nothing.
    @Test func aFailedRelocationLeavesTheOldPathIntact() async throws {
        let lab = try ScriptLab()
        defer { lab.destroy() }
        let sinks = try Sinks(lab: lab)
        defer { sinks.destroy() }
        let agent = try await LiveAgent(lab: lab)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/u0", json: lease("u0", proto: "udp", port: 7100, anchor: "edge-1")).0 == 201)
        let udp = try StreamProcessSeq(lab: lab, seconds: 2.0, rate: 1000)
        try await Task.sleep(for: .milliseconds(500))
        try lab.exec("enforce", ["tc", "qdisc", "add", "dev", "r-cloud", "root", "handle", "1:", "tbf", "rate", "10mbit", "burst", "10kb", "latency", "50ms"])
        let (s, b) = try await agent.call("PUT", "/v1/leases/u1", json: lease("u1", proto: "udp", port: 7100, anchor: "cloud-1", relocates: "u0"))
        #expect(s == 503 && b["error"]?["cause"]?.stringValue == "enforcement_failed")
        let old = try await agent.call("GET", "/v1/leases/u0").1
        #expect(old["state"]?.stringValue == "active")
        #expect(try await agent.call("GET", "/v1/leases/u1").0 == 404)
        let sent = udp.finish()
        try await Task.sleep(for: .milliseconds(200))
        let got = sinks.received()
        #expect(Set(got.map(\.1)) == Set(0..<sent), "lost \(sent - Set(got.map(\.1)).count) datagrams")
        #expect(got.allSatisfy { $0.2 == "edge" })
    }
}

/// `flow.py seqstream` in the lab client: one UDP flow of "seq N" datagrams at `rate` Hz.
final class StreamProcessSeq: Sendable {
    let process: Process
    let output: Pipe
    init(lab: ScriptLab, seconds: Double, rate: Int) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip", "netns", "exec", lab.ns("client"), "python3", ScriptLab.repoRoot + "/scripts/flow.py", "seqstream",
                             vip(false), "7100", "--rate", String(rate), "--seconds", String(seconds)]
        output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
    }
    /// Datagrams sent.
    func finish() -> Int {
        let d = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: d, as: UTF8.self)
        return Int(text.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
    }
}

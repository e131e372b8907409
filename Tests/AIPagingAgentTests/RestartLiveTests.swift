import AIPagingAgent
import AIPagingClient
import AIPagingCore
import AIPagingTestSupport
import Foundation
import Synchronization
import Testing

/// The agent as a real process, killed with SIGKILL in the middle of a stream of commits,
/// revokes and relocations, then restarted on the same state directory.
@Suite(.serialized, .enabled(if: Shell.isRoot)) struct RestartLiveTests {
    struct Sent: Sendable {
        var id: String
        var classifierClient: String
        var sentMs: Int64
        var answeredMs: Int64?
        var status: Int?
        var mark: UInt32?
        var expiresMs: Int64?
        var revokedAckMs: Int64?
        var revokeSentMs: Int64?
        var relocatedFrom: String?
        var ttlMs: Int64 = 0
    }

    static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    static func agentPath() -> String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("aipaging-agent").path
    }

    static func startAgent(_ lab: ScriptLab, dir: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: agentPath())
        p.arguments = ["--netns", lab.ns("enforce"), "--socket", dir + "/agent.sock", "--state-dir", dir, "--log-level", "warning"]
        p.standardError = agentStderr(dir + "/agent.stderr")
        try p.run()
        for _ in 0..<200 {
            if (try? UnixHTTPClient(path: dir + "/agent.sock").request("GET", "/v1/status").status) == 200 { return p }
            Thread.sleep(forTimeInterval: 0.02)
        }
        throw Shell.Failure(command: ["aipaging-agent"], status: -1, stderr: "did not start")
    }

    @Test func killDashNineUnderLoadLosesNoAcknowledgedLeaseAndNeverSteersWithoutOne() async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.agentPath()) else {
            Issue.record("aipaging-agent not built next to the test bundle")
            return
        }
        let lab = try ScriptLab(services: false)
        defer { lab.destroy() }
        let dir = NSTemporaryDirectory() + "aipaging-restart-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let agent = Mutex<Process?>(try Self.startAgent(lab, dir: dir))
        defer { agent.withLock { p in if let p, p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } } }
        let sent = Mutex<[Sent]>([])
        let samples = Mutex<[(Int64, Int64, [String: UInt32])]>([])   // read began, read ended, classifier client -> mark
        let stop = Atomic<Bool>(false)
        let paused = Atomic<Bool>(false)   // no new requests while the agent is dead (one may be in flight at the kill)
        let socket = dir + "/agent.sock"

        // The stream: commits (fresh classifiers), relocations of live leases, revokes.
        let driver = Thread {
            let client = UnixHTTPClient(path: socket)
            var n = 0
            var rng = SystemRandomNumberGenerator()
            while !stop.load(ordering: .relaxed) {
                n += 1
                if paused.load(ordering: .relaxed) { Thread.sleep(forTimeInterval: 0.01); continue }
                // Revokes and relocations pick short leases: the long ones are left alone so
                // that the test always has acknowledged leases that outlive the outage.
                let live = sent.withLock {
                    $0.filter { $0.status == 201 && $0.revokedAckMs == nil && $0.ttlMs < 12000 && ($0.expiresMs ?? 0) > Self.nowMs() + 500 }
                }
                let roll = Int.random(in: 0..<10, using: &rng)
                if roll < 2, let victim = live.randomElement(using: &rng) {
                    let sentAt = Self.nowMs()
                    sent.withLock { s in
                        if let i = s.firstIndex(where: { $0.id == victim.id }) { s[i].revokeSentMs = sentAt }
                    }
                    if let r = try? client.request("DELETE", "/v1/leases/\(victim.id)"), r.status == 200 {
                        let t = Self.nowMs()
                        sent.withLock { s in
                            if let i = s.firstIndex(where: { $0.id == victim.id }) { s[i].revokedAckMs = t }
                        }
                    }
                    continue
                }
                var entry = Sent(id: "r\(n)", classifierClient: "198.18.9.\(n % 250 + 1)", sentMs: Self.nowMs())
                var relocates: String?
                if roll < 4, let old = live.randomElement(using: &rng) {
                    entry.classifierClient = old.classifierClient
                    relocates = old.id
                    entry.relocatedFrom = old.id
                } else if sent.withLock({ s in s.contains { $0.classifierClient == entry.classifierClient && $0.status != 0 } }) {
                    continue   // keep one lineage per classifier
                }
                let anchor = Bool.random(using: &rng) ? ("edge-1", "198.18.2.2") : ("cloud-1", "198.18.3.2")
                // Mostly short leases (they expire during the test, some while the agent is dead);
                // one in four long enough to outlive the outage and a slow restart under load.
                entry.ttlMs = Int.random(in: 0..<4, using: &rng) == 0
                    ? Int64.random(in: 12000...16000, using: &rng) : Int64.random(in: 3000...9000, using: &rng)
                let body = labLease(entry.id, aisi: "aisi-\(entry.classifierClient)", anchor: anchor.0, ttlMs: entry.ttlMs,
                                    relocates: relocates, drainMs: 300)
                var bodyObj = body.objectValue!
                bodyObj["classifier"] = ["client": .string(entry.classifierClient), "service": "198.18.100.10", "protocol": "udp", "port": 7000]
                bodyObj["anchor"] = ["id": .string(anchor.0), "address": .string(anchor.1), "port": 7000]
                sent.withLock { $0.append(entry) }
                let r = try? client.request("PUT", "/v1/leases/\(entry.id)", body: Array(JSON.object(bodyObj).serialized().utf8))
                let t = Self.nowMs()
                let json = r.flatMap { try? JSON.parse($0.body) }
                sent.withLock { s in
                    guard let i = s.firstIndex(where: { $0.id == entry.id }) else { return }
                    s[i].answeredMs = t
                    s[i].status = r?.status ?? 0
                    s[i].mark = json?["kernel"]?["mark"]?.stringValue.flatMap { UInt32($0.dropFirst(2), radix: 16) }
                    s[i].expiresMs = epochMs(json?["expires_at"]?.stringValue)
                }
                Thread.sleep(forTimeInterval: 0.02)
            }
        }
        // The sampler: the kernel's steering elements, independently of the agent.
        let sampler = Thread {
            while !stop.load(ordering: .relaxed) {
                // The state read existed at some instant between t0 and t1 (the read takes a few ms).
                let t0 = Self.nowMs()
                if let text = try? lab.exec("enforce", ["nft", "-j", "list", "map", "inet", "aipaging", "lease4"]) {
                    let t1 = Self.nowMs()
                    samples.withLock { $0.append((t0, t1, RestartLiveTests.steering(text))) }
                }
                Thread.sleep(forTimeInterval: 0.03)
            }
        }
        driver.start()
        sampler.start()
        // The timeline runs on a thread of its own: in a full test run the cooperative pool's
        // two threads can be held for seconds by other suites' blocking calls, and sleeps on it
        // then stretch until every lease has expired.
        struct Timeline: Sendable {
            var killedAt: Int64 = 0, restartedAt: Int64 = 0, readyAt: Int64 = 0, now: Int64 = 0
            var listBefore: Int64 = 0, listAfter: Int64 = 0
            var kernelNow: [String: UInt32] = [:]
            var listed: UnixHTTPClient.Response? = nil
        }
        let tl = try await offPool { () throws -> Timeline in
            var tl = Timeline()
            Thread.sleep(forTimeInterval: 2)
            // Kill only once the stream has acknowledged enough leases that outlive the outage.
            for _ in 0..<200 {
                let (acked, outliving) = sent.withLock { s in
                    let a = s.filter { $0.status == 201 && ($0.expiresMs ?? 0) > Self.nowMs() + 2000 }
                    let superseded = Set(s.compactMap(\.relocatedFrom))
                    return (a.count, a.filter {
                        ($0.expiresMs ?? 0) > Self.nowMs() + 9000 && $0.revokeSentMs == nil && !superseded.contains($0.id)
                    }.count)
                }
                if acked >= 10 && outliving >= 3 { break }
                Thread.sleep(forTimeInterval: 0.1)
            }
            paused.store(true, ordering: .relaxed)
            tl.killedAt = Self.nowMs()
            agent.withLock { p in killAgent(p!, stderrPath: dir + "/agent.stderr") }
            Thread.sleep(forTimeInterval: 1.5)
            tl.restartedAt = Self.nowMs()
            let second = try RestartLiveTests.startAgent(lab, dir: dir)
            agent.withLock { $0 = second }
            paused.store(false, ordering: .relaxed)
            tl.readyAt = Self.nowMs()
            Thread.sleep(forTimeInterval: 1.5)
            stop.store(true, ordering: .relaxed)
            Thread.sleep(forTimeInterval: 0.2)
            tl.kernelNow = RestartLiveTests.steering(try lab.exec("enforce", ["nft", "-j", "list", "map", "inet", "aipaging", "lease4"]))
            tl.now = Self.nowMs()
            tl.listBefore = Self.nowMs()
            tl.listed = try UnixHTTPClient(path: socket).request("GET", "/v1/leases")
            tl.listAfter = Self.nowMs()
            return tl
        }
        let (killedAt, restartedAt, readyAt, now) = (tl.killedAt, tl.restartedAt, tl.readyAt, tl.now)
        let (listBefore, listAfter, kernelNow) = (tl.listBefore, tl.listAfter, tl.kernelNow)
        let listed = tl.listed!
        let all = sent.withLock { $0 }
        // 1. Every lease acknowledged before the kill that is still valid is back, in the agent
        //    and in the kernel, with its remaining time.
        let leases = (try JSON.parse(listed.body))["leases"]?.arrayValue ?? []
        let byID = Dictionary(uniqueKeysWithValues: leases.compactMap { l in l["lease_id"]?.stringValue.map { ($0, l) } })
        let superseded = Set(all.compactMap(\.relocatedFrom))
        let expectedBack = all.filter {
            ($0.status == 201 || $0.status == 200) && ($0.answeredMs ?? .max) < killedAt && $0.revokedAckMs == nil
                && $0.revokeSentMs == nil
                && ($0.expiresMs ?? 0) > now + 1000 && !superseded.contains($0.id)
        }
        #expect(!expectedBack.isEmpty, "the stream acknowledged nothing that outlives the test")
        for s in expectedBack {
            let l = byID[s.id]
            #expect(l != nil, "acknowledged lease \(s.id) lost across the restart")
            if let l, let remaining = l["remaining_ms"]?.int64Value, let exp = s.expiresMs {
                // The agent computed `remaining` at some instant of the GET.
                #expect(remaining >= exp - listAfter - 50 && remaining <= exp - listBefore + 50,
                        "\(s.id): remaining \(remaining) ms, expected \(exp - listAfter)...\(exp - listBefore)")
            }
            if kernelNow[s.classifierClient] != s.mark {
                let table = (try? lab.exec("enforce", ["nft", "list", "map", "inet", "aipaging", "lease4"])) ?? ""
                let related = all.filter { $0.classifierClient == s.classifierClient || $0.relocatedFrom == s.id }
                Issue.record("\(s.id) (mark \(String(s.mark ?? 0, radix: 16))) not steered by the kernel after the restart; agent: \(l?.serialized() ?? "-"); related: \(related); lease4: \(table.filter { !$0.isNewline }.prefix(3000))")
            }
        }
        // 2. Nothing refused or revoked is back. A PUT in flight when the agent was killed is
        //    "in doubt" (its answer was lost): it is back exactly if it had become durable.
        for s in all where byID[s.id] != nil {
            #expect([200, 201, 0].contains(s.status ?? -1), "\(s.id) is back although it was refused (\(s.status ?? -1))")
            #expect(s.revokedAckMs == nil, "revoked lease \(s.id) is back")
        }
        // 3. At no sampled instant was a classifier steered without a valid lease: each sampled
        //    element belongs to a lease that was requested before the sample and neither expired
        //    nor revoked (acknowledged) by then — also while the agent was dead and restarting.
        let samplesNow = samples.withLock { $0 }
        #expect(samplesNow.contains { $0.0 > killedAt && $0.1 < restartedAt }, "no sample during the outage")
        var violations: [String] = []
        // An element seen in a read that began at t and ended at tEnd existed at some instant in
        // between: it outlived its lease only if t is past the end; it may belong to a request
        // sent up to tEnd.
        for (t, tEnd, elems) in samplesNow {
            for (client, mark) in elems {
                let owner = all.first { $0.mark == mark && $0.classifierClient == client }
                if let o = owner {
                    if let exp = o.expiresMs, t > exp + 20 { violations.append("t=\(t) \(o.id) steered \(t - exp) ms after its expiry") }
                    if let rv = o.revokedAckMs, t > rv + 20 { violations.append("t=\(t) \(o.id) steered after its revoke was acknowledged") }
                } else {
                    // Not acknowledged (yet): a PUT in flight at t for that classifier, or one in
                    // doubt (in flight at the kill) within its ttl.
                    let inFlight = all.contains {
                        $0.classifierClient == client && $0.sentMs <= tEnd
                            && (($0.answeredMs ?? .max) >= t - 20 || ($0.status == 0 && t <= $0.sentMs + $0.ttlMs + 50))
                    }
                    if !inFlight { violations.append("t=\(t) \(client) steered with mark \(String(mark, radix: 16)) by no requested lease") }
                }
            }
        }
        if !violations.isEmpty {
            let clients = Set(violations.compactMap { $0.split(separator: " ").dropFirst().first.map(String.init) })
            let related = all.filter { clients.contains($0.classifierClient) }
            Issue.record("\(violations.prefix(3)) … killed at \(killedAt), restarted \(restartedAt), ready \(readyAt); requests for those classifiers: \(related)")
        }
        _ = readyAt
    }

    /// Classifier client -> mark of the `lease4` map in `nft -j list map` output.
    static func steering(_ json: String) -> [String: UInt32] {
        guard let v = try? JSON.parse(json), let items = v["nftables"]?.arrayValue else { return [:] }
        var out: [String: UInt32] = [:]
        for item in items {
            guard let elems = item["map"]?["elem"]?.arrayValue else { continue }
            for e in elems {
                // [ {"elem": {"val": {"concat": [client, service, proto, port]}, ...}} or {"concat": [...]}, mark ]
                guard let pair = e.arrayValue, pair.count == 2 else { continue }
                let key = pair[0]["elem"]?["val"]?["concat"] ?? pair[0]["concat"]
                guard let client = key?.arrayValue?.first?.stringValue, let mark = pair[1].int64Value else { continue }
                out[client] = UInt32(truncatingIfNeeded: mark)
            }
        }
        return out
    }
}

import AIPagingAgent
import AIPagingClient
import AIPagingCore
import AIPagingTestSupport
import Foundation
import Logging
import Testing

/// The real agent (kernel backend, real clocks and timer) on the enforcement namespace of a
/// `ScriptLab`, serving on a temporary socket.
final class LiveAgent: Sendable {
    let lab: ScriptLab
    let dir: String
    let socketPath: String
    let runtime: AgentRuntime
    let task: Task<Void, any Error>

    var service: LeaseService { runtime.service }
    var client: UnixHTTPClient { UnixHTTPClient(path: socketPath) }

    /// Keeps `dir` (the state dir, with the evidence log) when the agent stops.
    let keepDir: Bool

    /// `stateDir`: reuse a state dir (a restart); otherwise a fresh temporary one.
    init(lab: ScriptLab, policy: Policy = .lab, capacityKbit: UInt64 = 100_000, flushOnExit: Bool = true,
         stateDir: String? = nil, keepDir: Bool = false, configure: (inout AgentConfig) -> Void = { _ in },
         backendSetup: (KernelBackend) -> Void = { _ in }) async throws {
        self.lab = lab
        self.keepDir = keepDir
        if let stateDir {
            dir = stateDir
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } else {
            dir = try AgentTempDirs.make("aipaging-live-")
        }
        socketPath = dir + "/agent.sock"
        var cfg = AgentConfig()
        cfg.socketPath = socketPath
        cfg.stateDir = dir
        cfg.flushOnExit = flushOnExit
        configure(&cfg)
        let point = EnforcementPointConfig(name: "ep", netns: lab.ns("enforce"), capacityKbit: capacityKbit)
        var logger = Logger(label: "live")
        logger.logLevel = .warning
        let backend = try KernelBackend(point: point, logger: logger)
        backendSetup(backend)
        runtime = AgentRuntime(config: cfg, policy: policy, points: [point], backends: ["ep": backend], logger: logger)
        let socket = try ListeningSocket.bind(path: socketPath)
        let (ready, readyCont) = AsyncStream<Void>.makeStream()
        let rt = runtime
        task = Task {
            defer { readyCont.finish() }
            try await rt.run(socket: socket) { readyCont.yield() }
        }
        var isReady = false
        for await _ in ready { isReady = true; break }
        if !isReady {
            try await task.value   // rethrows why the agent did not start
            throw AgentDidNotStart()
        }
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
        if !keepDir { AgentTempDirs.remove(dir) }
    }

    @discardableResult
    func call(_ method: String, _ path: String, json body: JSON? = nil) async throws -> (Int, JSON) {
        let client = self.client
        let bytes = body.map { Array($0.serialized().utf8) }
        let r = try await offPool { try client.request(method, path, body: bytes) }
        return (r.status, (try? JSON.parse(r.body)) ?? .string(String(decoding: r.body, as: UTF8.self)))
    }
}

/// A lease body for the lab: `client` -> VIP on `proto`/7000 steered to edge-1 or cloud-1.
func labLease(_ id: String, aisi: String = "aisi-lab", v6: Bool = false, client: Int = 1, anchor: String = "edge-1",
              proto: String = "udp", ttlMs: Int64 = 10_000, rate: Int64 = 2000, ceil: Int64 = 4000,
              relocates: String? = nil, drainMs: Int64? = nil) -> JSON {
    let clientAddr = v6 ? (client == 1 ? "2001:db8:1::2" : "2001:db8:4::2") : (client == 1 ? "198.18.1.2" : "198.18.4.2")
    let anchorAddr = anchor == "edge-1" ? (v6 ? "2001:db8:2::2" : "198.18.2.2") : (v6 ? "2001:db8:3::2" : "198.18.3.2")
    var o = JSON.Object()
    o["lease_id"] = .string(id)
    o["aisi"] = .string(aisi)
    o["aist"] = "tok-lab"
    o["ttl_ms"] = .int(ttlMs)
    o["classifier"] = ["client": .string(clientAddr), "service": .string(v6 ? "2001:db8:100::10" : "198.18.100.10"),
                       "protocol": .string(proto), "port": 7000]
    o["anchor"] = ["id": .string(anchor), "address": .string(anchorAddr), "port": 7000]
    o["qos"] = ["rate_kbit": .int(rate), "ceil_kbit": .int(ceil), "priority": 1]
    o["relocates"] = .optional(relocates)
    if let drainMs { o["drain_ms"] = .int(drainMs) }
    return .object(o)
}

func vip(_ v6: Bool) -> String { v6 ? "2001:db8:100::10" : "198.18.100.10" }

/// Parses `flow.py stream` output: (epoch ms, answer) per request.
func parseStream(_ text: String) -> [(Int64, String)] {
    text.split(separator: "\n").compactMap { line in
        let p = line.split(separator: " ")
        guard p.count == 2, let t = Int64(p[0]) else { return nil }
        return (t, String(p[1]))
    }
}

/// Starts `flow.py stream` in a lab namespace as a child process.
final class StreamProcess: Sendable {
    let process: Process
    let output: Pipe

    init(lab: ScriptLab, role: String = "client", addr: String, seconds: Double, intervalMs: Int = 10, tcp: Bool = false) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        var args = ["ip", "netns", "exec", lab.ns(role), "python3", ScriptLab.repoRoot + "/scripts/flow.py", "stream", addr, "7000",
                    "--seconds", String(seconds), "--interval-ms", String(intervalMs)]
        if tcp { args.append("--tcp") }
        process.arguments = args
        output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    func finish() -> [(Int64, String)] {
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return parseStream(String(decoding: data, as: UTF8.self))
    }
}

func epochMs(_ rfc3339: String?) -> Int64? {
    rfc3339.flatMap { WallTime(rfc3339: $0) }.map { $0.nanosecondsSinceEpoch / 1_000_000 }
}

/// A file for an agent process's stderr (appended to, so a restarted agent adds to it).
func agentStderr(_ path: String) -> FileHandle {
    if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
    let h = FileHandle(forWritingAtPath: path)!
    h.seekToEndOfFile()
    return h
}

/// Kills an agent process with SIGKILL and checks that this kill is what ended it: an agent that
/// had died on its own (a crash) would otherwise pass for a killed one.
func killAgent(_ p: Process, stderrPath: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let wasRunning = p.isRunning
    kill(p.processIdentifier, SIGKILL)
    p.waitUntilExit()
    let log = (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? ""
    #expect(wasRunning && p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGKILL,
            "the agent ended before the kill (status \(p.terminationStatus)); its stderr: \(log.suffix(3000))",
            sourceLocation: sourceLocation)
}

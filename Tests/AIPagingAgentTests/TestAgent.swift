import AIPagingAgent
import AIPagingClient
import AIPagingCore
import AIPagingTestSupport
import Foundation
import Logging
import Synchronization

/// The real agent runtime and control server on a temporary socket, with the in-memory kernel.
final class TestAgent: Sendable {
    let dir: String
    let socketPath: String
    let runtime: AgentRuntime
    let clock: ManualClock
    let task: Task<Void, any Error>

    var service: LeaseService { runtime.service }
    var client: UnixHTTPClient { UnixHTTPClient(path: socketPath) }

    /// `journal`: keep a lease journal in the state directory (otherwise none).
    init(policy: Policy = .lab, capacityKbit: UInt64 = 1_000_000, socketMode: mode_t = 0o600, journal: Bool = false,
         configure: (inout AgentConfig) -> Void = { _ in }) async throws {
        dir = try AgentTempDirs.make("aipaging-test-")
        socketPath = dir + "/agent.sock"
        var cfg = AgentConfig()
        cfg.socketPath = socketPath
        cfg.stateDir = dir
        cfg.reconcileIntervalMs = 0
        configure(&cfg)
        let clock = ManualClock()
        self.clock = clock
        let point = EnforcementPointConfig(name: "ep", netns: nil, capacityKbit: capacityKbit)
        let backend = InMemoryBackend(location: "memory") { clock.now().boot }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        runtime = AgentRuntime(config: cfg, policy: policy, points: [point], backends: ["ep": backend], clock: clock, logger: logger,
                               journal: journal ? try LeaseJournal(stateDir: dir) : nil)
        let socket = try ListeningSocket.bind(path: socketPath, mode: socketMode)
        let (ready, readyCont) = AsyncStream<Void>.makeStream()
        let rt = runtime
        task = Task {
            defer { readyCont.finish() }
            try await rt.run(socket: socket, useTimer: false) { readyCont.yield() }
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
        AgentTempDirs.remove(dir)
    }

    @discardableResult
    /// The lease journal's size on disk (0 without one).
    func journalBytes() -> Int {
        (try? FileManager.default.attributesOfItem(atPath: dir + "/leases.journal")[.size] as? Int) ?? 0
    }

    func call(_ method: String, _ path: String, json body: JSON? = nil) async throws -> (Int, JSON) {
        try await request(method, path, body: body.map { Array($0.serialized().utf8) })
    }

    func raw(_ method: String, _ path: String, body: [UInt8], contentType: String = "application/json") async throws -> (Int, JSON) {
        try await request(method, path, body: body, contentType: contentType)
    }

    func request(_ method: String, _ path: String, body: [UInt8]? = nil, contentType: String = "application/json") async throws -> (Int, JSON) {
        let client = self.client
        let r = try await offPool { try client.request(method, path, body: body, contentType: contentType) }
        return (r.status, (try? JSON.parse(r.body)) ?? .string(String(decoding: r.body, as: UTF8.self)))
    }

    func text(_ path: String) async throws -> String {
        let client = self.client
        let r = try await offPool { try client.request("GET", path) }
        return String(decoding: r.body, as: UTF8.self)
    }

    /// Sends bytes as they are and reads the response (malformed HTTP, partial requests).
    func rawSocket(_ bytes: [UInt8], readTimeoutMs: Int = 5000) async throws -> String {
        let client = self.client
        return try await offPool { try TestAgent.rawExchange(client, bytes, readTimeoutMs: readTimeoutMs) }
    }

    static func rawExchange(_ client: UnixHTTPClient, _ bytes: [UInt8], readTimeoutMs: Int) throws -> String {
        let fd = try client.connect()
        defer { close(fd) }
        try client.writeAll(fd, bytes)
        var tv = timeval(tv_sec: readTimeoutMs / 1000, tv_usec: Int((readTimeoutMs % 1000) * 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buf, 4096)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    func kernel() async throws -> KernelState { try await service.observeKernel("ep") }
}

func lease(_ id: String = "L1", aisi: String = "aisi-1", client: String = "198.18.1.2", service: String = "198.18.100.10",
           port: Int64 = 7000, anchorID: String = "edge-1", anchor: String = "198.18.2.2", ttlMs: Int64 = 30_000,
           rate: Int64 = 1000, ceil: Int64 = 2000, relocates: String? = nil, drainMs: Int64? = nil,
           generation: Int64? = nil) -> JSON {
    var o = JSON.Object()
    o["lease_id"] = .string(id)
    o["aisi"] = .string(aisi)
    o["aist"] = "tok"
    o["ttl_ms"] = .int(ttlMs)
    o["classifier"] = ["client": .string(client), "service": .string(service), "protocol": "udp", "port": .int(port)]
    o["anchor"] = ["id": .string(anchorID), "address": .string(anchor), "port": .int(port)]
    o["qos"] = ["rate_kbit": .int(rate), "ceil_kbit": .int(ceil), "priority": 1]
    o["relocates"] = .optional(relocates)
    if let drainMs { o["drain_ms"] = .int(drainMs) }
    if let generation { o["generation"] = .int(generation) }
    return .object(o)
}

struct AgentDidNotStart: Error {}

/// The test agents' state directories. Tests stop their agent in a deferred task, which may not
/// have run when the test process exits: what is left then is removed at exit.
enum AgentTempDirs {
    static let live = Mutex<Set<String>>([])
    private static let removeAtExit: Void = {
        atexit { for d in AgentTempDirs.live.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: d) } }
    }()

    /// A new directory under the temporary directory, named `prefix` and 8 random hex digits.
    static func make(_ prefix: String) throws -> String {
        _ = removeAtExit
        let d = NSTemporaryDirectory() + prefix + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        live.withLock { _ = $0.insert(d) }
        return d
    }

    static func remove(_ d: String) {
        try? FileManager.default.removeItem(atPath: d)
        live.withLock { _ = $0.remove(d) }
    }
}

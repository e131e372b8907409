// scripts/bench-enforce: the agent's enforcement path under load, against the real kernel.
//
// For each level of N active leases it measures, through the control socket, the latency of a
// single install (request until the reply, which comes only after the kernel state exists), a
// single revoke, batched admission throughput with 64 concurrent clients, expiry lateness
// (deadline to state gone, from the agent's `expired` events; quiet, while 64 clients are being
// admitted, and paced: one by one while one client admits and revokes), the agent's RSS (after
// the churn and after 2 s idle); and in the same run the same install/removal done the naive way
// (one `nft` and one `tc` process per lease; each through `ip netns exec`, and spawned from inside
// the namespace), as ratios. It also checks with real packets that nothing is steered after a
// lease's deadline.
import AIPagingClient
import AIPagingCore
import CAIPagingShim
import Foundation
import Synchronization

struct Options {
    var agent = ""
    var repo = "."
    var levels = [1, 1000, 10_000, 100_000]
    var samples = 1000
    var clients = 64
    var naiveMax = 10_000
    /// An agent config file (`--config`), e.g. to change the evidence settings.
    var agentConfig: String?
    /// After the last level, keep the agent running this long (seconds) and print its memory
    /// every 10 s: the evidence exporter reaches every lease only over time (probes are rate-limited).
    var hold = 0
}

func parseOptions() -> Options {
    var opt = Options()
    var args = CommandLine.arguments.dropFirst()
    while let a = args.popFirst() {
        switch a {
        case "--agent": opt.agent = args.popFirst()!
        case "--repo": opt.repo = args.popFirst()!
        case "--levels": opt.levels = args.popFirst()!.split(separator: ",").compactMap { Int($0) }
        case "--samples": opt.samples = Int(args.popFirst()!)!
        case "--clients": opt.clients = Int(args.popFirst()!)!
        case "--naive-max": opt.naiveMax = Int(args.popFirst()!)!
        case "--agent-config": opt.agentConfig = args.popFirst()!
        case "--hold": opt.hold = Int(args.popFirst()!)!
        default:
            FileHandle.standardError.write(Data("""
                unknown option \(a)
                usage: EnforceBench --agent PATH [--repo DIR] [--levels N,N,...] [--samples N] [--clients N]
                                    [--naive-max N] [--agent-config FILE] [--hold SECONDS]
                environment: AIP_BENCH_AGENT_LOG=FILE keeps the agent's stderr;
                             AIP_BENCH_SAMPLES=FILE appends every install/revoke sample (level, start, ms)

                """.utf8))
            exit(2)
        }
    }
    return opt
}
let opt = parseOptions()

/// Prints a line at once (stdout may be a pipe).
func say(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }

@discardableResult
func sh(_ args: [String], check: Bool = true) -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    let tmp = NSTemporaryDirectory() + "bench-\(UUID().uuidString)"
    _ = FileManager.default.createFile(atPath: tmp, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: tmp) }
    let out = FileHandle(forWritingAtPath: tmp)!
    p.standardOutput = out
    p.standardError = out
    try! p.run()
    p.waitUntilExit()
    try? out.close()
    let text = (try? String(contentsOfFile: tmp, encoding: .utf8)) ?? ""
    if check && p.terminationStatus != 0 { fatalError("\(args.joined(separator: " ")) failed: \(text)") }
    return text
}

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// posix_spawn + waitpid: what a shell does to run one command, without Foundation.Process's
/// overhead (which would make the naive baseline look slower than it is).
@discardableResult
func spawnWait(_ args: [String]) -> Int32 {
    var pid: pid_t = 0
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    defer { posix_spawn_file_actions_destroy(&actions) }
    var cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
    defer { for a in cargs { free(a) } }
    guard posix_spawnp(&pid, args[0], &actions, nil, &cargs, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status
}
func pct(_ xs: [Double], _ q: Double) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s[min(s.count - 1, max(0, Int((Double(s.count) * q).rounded(.up)) - 1))]
}
func f(_ v: Double, _ d: Int = 2) -> String { String(format: "%.\(d)f", v) }

// MARK: lab and agent

let prefix = "aipb\(getpid() % 10000)"
let ns = "\(prefix)-enforce"
let dir = NSTemporaryDirectory() + "aipaging-bench-\(getpid())"
try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
let socketPath = dir + "/agent.sock"
say("lab \(prefix): scripts/lab.sh up (anchor services on)")
sh([opt.repo + "/scripts/lab.sh", "up", prefix, "--services"])
// Plenty of conntrack room for the stream checks; the bench itself sends little traffic.
let agentProc = Process()
agentProc.executableURL = URL(fileURLWithPath: opt.agent)
agentProc.arguments = ["--netns", ns, "--socket", socketPath, "--state-dir", dir, "--capacity-kbit", "1000000000",
                       "--flush-on-exit", "--log-level", "warning"] + (opt.agentConfig.map { ["--config", $0] } ?? [])
// AIP_BENCH_AGENT_LOG=FILE keeps the agent's log (stderr) for a look afterwards.
if let path = ProcessInfo.processInfo.environment["AIP_BENCH_AGENT_LOG"] {
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    agentProc.standardError = FileHandle(forWritingAtPath: path)
} else {
    agentProc.standardError = FileHandle(forWritingAtPath: "/dev/null")
}
try agentProc.run()
func cleanup() {
    if agentProc.isRunning {
        kill(agentProc.processIdentifier, SIGTERM)
        agentProc.waitUntilExit()
    }
    naiveTeardown()
    sh([opt.repo + "/scripts/lab.sh", "down", prefix], check: false)
    try? FileManager.default.removeItem(atPath: dir)
}
signal(SIGINT) { _ in exit(130) }
atexit { }
for _ in 0..<100 where !FileManager.default.fileExists(atPath: socketPath) { usleep(50_000) }
let client = UnixHTTPClient(path: socketPath)

func leaseBody(_ i: Int, ttlMs: Int = 3_600_000) -> [UInt8] {
    // Distinct clients from 198.19.0.0/16 (plus ports beyond 64 000 clients): one classifier each.
    let host = i % 64_000, port = 7000 + i / 64_000
    let c = "198.19.\(host / 250).\(host % 250 + 1)"
    let body = "{\"lease_id\":\"b\(i)\",\"aisi\":\"aisi-b\(i)\",\"aist\":\"t\",\"ttl_ms\":\(ttlMs),"
        + "\"classifier\":{\"client\":\"\(c)\",\"service\":\"198.18.100.10\",\"protocol\":\"udp\",\"port\":\(port)},"
        + "\"anchor\":{\"id\":\"edge-1\",\"address\":\"198.18.2.2\",\"port\":\(port)},"
        + "\"qos\":{\"rate_kbit\":100,\"ceil_kbit\":1000,\"priority\":\(i % 4)}}"
    return Array(body.utf8)
}

func put(_ i: Int, ttlMs: Int = 3_600_000) -> Int {
    (try? client.request("PUT", "/v1/leases/b\(i)", body: leaseBody(i, ttlMs: ttlMs)).status) ?? -1
}

/// Runs the requests of `range` from `clients` threads, each on its own kept-alive connection
/// (as a controller would); returns (elapsed s, failures).
func concurrentKeepAlive(_ range: Range<Int>, clients: Int, _ body: @escaping @Sendable (UnixHTTPClient.Connection, Int) -> Bool) -> (Double, Int) {
    let nextIndex = Atomic<Int>(range.lowerBound)
    let failures = Atomic<Int>(0)
    let group = DispatchGroup()
    let t0 = now()
    for _ in 0..<clients {
        group.enter()
        Thread.detachNewThread {
            let conn = try! UnixHTTPClient.Connection(client)
            while true {
                let i = nextIndex.wrappingAdd(1, ordering: .relaxed).oldValue
                if i >= range.upperBound { break }
                if !body(conn, i) { failures.add(1, ordering: .relaxed) }
            }
            group.leave()
        }
    }
    group.wait()
    return (Double(now() - t0) / 1e9, failures.load(ordering: .relaxed))
}

/// `POST /v1/leases` with leases `range` (all must be admitted).
func postBatch(_ c: UnixHTTPClient.Connection, _ range: Range<Int>) -> Bool {
    var body: [UInt8] = Array("{\"leases\":[".utf8)
    for i in range {
        if i != range.lowerBound { body.append(UInt8(ascii: ",")) }
        body += leaseBody(i)
    }
    body += Array("]}".utf8)
    guard let r = try? c.request("POST", "/v1/leases", body: body), r.status == 200,
          let results = (try? JSON.parse(r.body))?["results"]?.arrayValue else { return false }
    return results.count == range.count && results.allSatisfy { $0["status"]?.int64Value == 201 }
}

/// Admits `range` through `POST /v1/leases` in batches of `batch` from `clients` connections.
func batchedAdmission(_ range: Range<Int>, clients: Int, batch: Int = 100) -> (Double, Int) {
    let batches = (range.count + batch - 1) / batch
    return concurrentKeepAlive(0..<batches, clients: clients) { c, b in
        let lo = range.lowerBound + b * batch
        return postBatch(c, lo..<min(range.upperBound, lo + batch))
    }
}

let reported = Atomic<Int>(0)
func putOn(_ c: UnixHTTPClient.Connection, _ i: Int, ttlMs: Int = 3_600_000) -> Bool {
    do {
        let r = try c.request("PUT", "/v1/leases/b\(i)", body: leaseBody(i, ttlMs: ttlMs))
        if r.status != 201 && reported.add(1, ordering: .relaxed).oldValue < 5 {
            say("PUT b\(i): \(r.status) \(String(decoding: r.body, as: UTF8.self))")
        }
        return r.status == 201
    } catch {
        if reported.add(1, ordering: .relaxed).oldValue < 5 { say("PUT b\(i): \(error)") }
        return false
    }
}

/// Runs `count` requests from `clients` threads; returns (elapsed s, failures).
func concurrent(_ range: Range<Int>, clients: Int, _ body: @escaping @Sendable (Int) -> Bool) -> (Double, Int) {
    let nextIndex = Atomic<Int>(range.lowerBound)
    let failures = Atomic<Int>(0)
    let group = DispatchGroup()
    let t0 = now()
    for _ in 0..<clients {
        group.enter()
        Thread.detachNewThread {
            while true {
                let i = nextIndex.wrappingAdd(1, ordering: .relaxed).oldValue
                if i >= range.upperBound { break }
                if !body(i) { failures.add(1, ordering: .relaxed) }
            }
            group.leave()
        }
    }
    group.wait()
    return (Double(now() - t0) / 1e9, failures.load(ordering: .relaxed))
}

func rssMB(_ pid: Int32) -> Double {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Double(line.split(separator: " ")[1]).map { $0 / 1024 } ?? .nan
    }
    return .nan
}

func status() -> JSON {
    (try? JSON.parse(client.request("GET", "/v1/status").body)) ?? .null
}

/// The lateness (ms) of the `expired` events of `ids` after event `seq`, once all of them are in
/// (waits up to 10 s; empty from an agent whose events do not carry `late_us`).
func expiryLateness(ids: Set<String>, after seq: Int64) -> [Double] {
    var late: [String: Double] = [:]
    for _ in 0..<200 {
        let body = (try? client.request("GET", "/v1/events?follow=false&since=\(seq)").body) ?? []
        for line in body.split(separator: 0x0A) {
            guard let e = try? JSON.parse(Array(line)), e["event"]?.stringValue == "expired",
                  let id = e["lease_id"]?.stringValue, ids.contains(id) else { continue }
            guard let us = e["late_us"]?.doubleValue else { return [] }
            late[id] = us / 1000
        }
        if late.count == ids.count { break }
        usleep(50_000)
    }
    precondition(late.count == ids.count, "only \(late.count) of \(ids.count) leases expired")
    return Array(late.values)
}

// MARK: the naive way: one nft and one tc process per lease

func naiveSetup(active: Int) {
    sh(["ip", "netns", "exec", ns, "nft", "-f", "-"], check: false)
    let table = """
    table inet naive {
      map lease4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service : mark; flags timeout; }
      map anchor4 { type mark : ipv4_addr . inet_service; flags timeout; }
      map qos { type mark . ct_dir : classid; flags timeout; }
    }
    """
    let path = dir + "/naive.nft"
    try! table.write(toFile: path, atomically: true, encoding: .utf8)
    sh(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "naive"], check: false)
    sh(["ip", "netns", "exec", ns, "nft", "-f", path])
    sh(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "r-cloud", "root"], check: false)
    sh(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "r-cloud", "root", "handle", "1:", "htb", "default", "2"])
    sh(["ip", "netns", "exec", ns, "tc", "class", "add", "dev", "r-cloud", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit", "quantum", "60000"])
    guard active > 0 else { return }
    // Bulk fill (not timed): elements in one nft file, classes in one tc batch.
    var nft = "add element inet naive lease4 { "
    var tcb = ""
    for i in 0..<active {
        nft += (i > 0 ? ", " : "") + "198.20.\(i / 250).\(i % 250 + 1) . 198.18.100.10 . udp . 7000 timeout 1h : \(0xa200_0000 + i)"
        tcb += "class add dev r-cloud parent 1:1 classid 1:\(String(i + 16, radix: 16)) htb rate 100kbit ceil 1mbit quantum 1600\n"
    }
    nft += " }\n"
    try! nft.write(toFile: path, atomically: true, encoding: .utf8)
    try! tcb.write(toFile: dir + "/naive.tc", atomically: true, encoding: .utf8)
    sh(["ip", "netns", "exec", ns, "nft", "-f", path])
    sh(["ip", "netns", "exec", ns, "tc", "-b", dir + "/naive.tc"])
}

func naiveTeardown() {
    sh(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "naive"], check: false)
    sh(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "r-cloud", "root"], check: false)
}

/// One naive install (nft + tc process) and removal (nft + tc process); times in ms. `wrapper`
/// is what enters the namespace for each process (`ip netns exec NS`, as a program outside it
/// such as the agent must), or nothing when the caller's thread is already inside it.
func naiveOnce(_ k: Int, wrapper: [String]) -> (Double, Double) {
    let mark = 0xa300_0000 + k
    let cid = String(0xf000 + k % 0xfff, radix: 16)
    let t0 = now()
    var rc = spawnWait(wrapper + ["nft", "add", "element", "inet", "naive", "lease4",
                                  "{ 198.21.\(k / 250).\(k % 250 + 1) . 198.18.100.10 . udp . 7000 timeout 1h : \(mark) }"])
    rc |= spawnWait(wrapper + ["tc", "class", "add", "dev", "r-cloud", "parent", "1:1", "classid", "1:\(cid)", "htb",
                               "rate", "100kbit", "ceil", "1mbit", "quantum", "1600"])
    let t1 = now()
    rc |= spawnWait(wrapper + ["nft", "delete", "element", "inet", "naive", "lease4",
                               "{ 198.21.\(k / 250).\(k % 250 + 1) . 198.18.100.10 . udp . 7000 }"])
    rc |= spawnWait(wrapper + ["tc", "class", "del", "dev", "r-cloud", "classid", "1:\(cid)"])
    let t2 = now()
    precondition(rc == 0, "a naive nft/tc command failed")
    return (Double(t1 - t0) / 1e6, Double(t2 - t1) / 1e6)
}

/// `n` naive installs and removals, alternating between the two ways of reaching the namespace:
/// each process through `ip netns exec` (`outside`), and spawned directly from a thread that
/// entered the namespace with setns(2), as a naive program running inside it would (`inside`;
/// a child process inherits its thread's network namespace). Medians, ms.
func naiveSamples(_ n: Int) -> (outside: (Double, Double), inside: (Double, Double)) {
    let path = "/run/netns/\(ns)"
    let results = Mutex<[(Bool, Double, Double)]>([])
    let done = DispatchSemaphore(value: 0)
    Thread.detachNewThread {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        precondition(fd >= 0 && aip_setns_net(fd) == 0, "entering \(path): errno \(errno)")
        close(fd)
        for k in 0..<n {
            let (a, b) = naiveOnce(2 * k, wrapper: ["ip", "netns", "exec", ns])
            let (c, d) = naiveOnce(2 * k + 1, wrapper: [])
            results.withLock { $0 += [(false, a, b), (true, c, d)] }
        }
        done.signal()
    }
    done.wait()
    let r = results.withLock { $0 }
    func medians(_ inside: Bool) -> (Double, Double) {
        let xs = r.filter { $0.0 == inside }
        return (pct(xs.map(\.1), 0.5), pct(xs.map(\.2), 0.5))
    }
    return (medians(false), medians(true))
}

// MARK: no steering after a deadline (real packets)

/// A lease of the lab client with a short ttl and a stream on one socket: counts answers that
/// arrived after the deadline (must be 0).
func steeredAfterDeadline(_ tag: Int) -> (Int, Int) {
    let probeID = "probe-ttl-\(tag)"
    let body = "{\"lease_id\":\"\(probeID)\",\"aisi\":\"probe\",\"aist\":\"t\",\"ttl_ms\":1500,"
        + "\"classifier\":{\"client\":\"198.18.1.2\",\"service\":\"198.18.100.10\",\"protocol\":\"udp\",\"port\":7000},"
        + "\"anchor\":{\"id\":\"edge-1\",\"address\":\"198.18.2.2\",\"port\":7000},\"qos\":{\"rate_kbit\":1000,\"ceil_kbit\":2000,\"priority\":0}}"
    guard let r = try? client.request("PUT", "/v1/leases/\(probeID)", body: Array(body.utf8)), r.status == 201,
          let exp = (try? JSON.parse(r.body))?["expires_at"]?.stringValue, let t = WallTime(rfc3339: exp) else { return (-1, -1) }
    let deadline = t.nanosecondsSinceEpoch / 1_000_000
    let out = sh(["ip", "netns", "exec", "\(prefix)-client", "python3", opt.repo + "/scripts/flow.py", "stream", "198.18.100.10", "7000",
                  "--seconds", "2.5", "--interval-ms", "5"])
    var after = 0, afterTotal = 0
    for line in out.split(separator: "\n") {
        let p = line.split(separator: " ")
        guard p.count == 2, let ms = Int64(p[0]) else { continue }
        if ms > deadline { afterTotal += 1; if p[1] == "edge-1" { after += 1 } }
    }
    return (after, afterTotal)
}

/// CPU time of the agent process so far (user + system, every thread), from /proc.
func agentCPUSeconds() -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(agentProc.processIdentifier)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return 0 }
    let f = text[text.index(after: close)...].split(separator: " ")
    // After the command: state is field 3, utime 14, stime 15 (1-based) -> indexes 11, 12 here.
    guard f.count > 12, let u = Double(f[11]), let s = Double(f[12]) else { return 0 }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Paced expiries: 200 leases admitted in one batch with ttls of 3 000 + 25·j ms end one by one
/// while one client admits and revokes a lease, pausing 8 ms after each (at 100 000 leases, where
/// an install takes 5–10 ms, about half of the lease thread): deadlines that fall while a single
/// install is under way. Returns the 200 leases' expiry lateness and the client's install times (ms).
func pacedExpiries(_ level: Int) -> (late: [Double], installs: [Double]) {
    let base = 8_000_000 + level, n = 200
    let seq0 = status()["events_seq"]?.int64Value ?? 0
    var body: [UInt8] = Array("{\"leases\":[".utf8)
    for j in 0..<n {
        if j > 0 { body.append(UInt8(ascii: ",")) }
        body += leaseBody(base + j, ttlMs: 3000 + 25 * j)
    }
    body += Array("]}".utf8)
    let t0 = now()
    guard let r = try? client.request("POST", "/v1/leases", body: body), r.status == 200 else { return ([], []) }
    let end = t0 + UInt64(3000 + 25 * n + 500) * 1_000_000
    var installs: [Double] = []
    if let conn = try? UnixHTTPClient.Connection(client) {
        var i = 9_000_000 + level * 10
        while now() < end {
            let a = now()
            precondition(putOn(conn, i))
            installs.append(Double(now() - a) / 1e6)
            precondition((try? conn.request("DELETE", "/v1/leases/b\(i)").status) == 200)
            i += 1
            usleep(8_000)
        }
    }
    return (expiryLateness(ids: Set((base..<(base + n)).map { "b\($0)" }), after: seq0), installs)
}

// MARK: run

struct Row {
    var level = 0
    var installP50 = 0.0, installP99 = 0.0, revokeP50 = 0.0, revokeP99 = 0.0
    var throughput = 0.0
    var batched = 0.0
    /// Agent CPU (user + system, all threads) per lease admitted one PUT each, µs, and how busy
    /// the agent was meanwhile (% of one core).
    var cpuPerLeaseUs = 0.0, cpuBusy = 0.0
    var expiryP50 = 0.0, expiryP99 = 0.0, expiryMax = 0.0
    /// Expiry lateness of 200 leases that end while 64 clients are being admitted (ms).
    var loadedExpiryP50 = Double.nan, loadedExpiryP99 = Double.nan, loadedExpiryMax = Double.nan
    /// Expiry lateness of 200 leases ending 25 ms apart while one client admits and revokes a
    /// lease every ~8 ms (`pacedExpiries`), and that client's install p50 / p99 (ms).
    var pacedExpiryP50 = Double.nan, pacedExpiryP99 = Double.nan, pacedExpiryMax = Double.nan
    var pacedInstallP50 = Double.nan, pacedInstallP99 = Double.nan
    /// The agent's journal fdatasync per batch, and the lease thread's wait for it after its
    /// kernel work (the agent's recent samples, accumulating over the run): p99 / max, ms.
    var journalSync = "", journalWait = "", journalCompaction = ""
    /// RSS right after the level's churn, and again after 2 s without requests (the agent trims
    /// malloc once its lease service has been idle for a second).
    var rss = 0.0, rssIdle = 0.0, heapInUse = 0.0, heapFree = 0.0
    /// The naive way through `ip netns exec`, and from inside the namespace (`naiveSamples`).
    var naiveInstall = Double.nan, naiveRemove = Double.nan
    var naiveInsideInstall = Double.nan, naiveInsideRemove = Double.nan
    var steeredAfter = 0, probesAfter = 0
}
var rows: [Row] = []
/// AIP_BENCH_SAMPLES=FILE: every single install/revoke sample, for a look at where the tail is.
let sampleLog: FileHandle? = ProcessInfo.processInfo.environment["AIP_BENCH_SAMPLES"].flatMap { path in
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    return FileHandle(forWritingAtPath: path)
}
var active = 0
var serial = 1_000_000
for level in opt.levels {
    var row = Row()
    row.level = level
    // The naive way first, with level - 1 classes and elements of its own, and then removed: its
    // classes and the agent's share the kernel's host-wide list of tc blocks that every class add
    // walks, so neither is measured with the other's classes of this level present (the agent
    // still holds the previous level's leases, a tenth of these or fewer).
    if level <= opt.naiveMax {
        naiveSetup(active: max(0, level - 1))
        let naive = naiveSamples(min(opt.samples, 50))
        (row.naiveInstall, row.naiveRemove) = naive.outside
        (row.naiveInsideInstall, row.naiveInsideRemove) = naive.inside
        naiveTeardown()
    }
    // Fill to level - 1 through the batch endpoint (64 clients, 100 leases per request).
    let target = level - 1
    if target > active {
        let (secs, fails) = batchedAdmission(active..<target, clients: opt.clients)
        precondition(fails == 0, "\(fails) batches failed while filling to \(target)")
        row.batched = Double(target - active) / secs
        active = target
    }
    // Per-request admission: 64 clients, one PUT per lease, then revoked again. Just before,
    // 200 leases with a 300 ms ttl are admitted: they end while these requests are served
    // (expiry lateness under load, from each lease's `expired` event).
    do {
        let lo = 5_000_000 + level * 10, n = 4000
        let seq0 = status()["events_seq"]?.int64Value ?? 0
        let ubase = 4_000_000 + level
        let (_, uf) = concurrent(ubase..<(ubase + 200), clients: opt.clients) { put($0, ttlMs: 300) == 201 }
        precondition(uf == 0)
        let cpu0 = agentCPUSeconds()
        let (secs, fails) = concurrentKeepAlive(lo..<(lo + n), clients: opt.clients) { putOn($0, $1) }
        let cpu = agentCPUSeconds() - cpu0
        precondition(fails == 0, "\(fails) PUTs failed")
        row.throughput = Double(n) / secs
        row.cpuPerLeaseUs = cpu / Double(n) * 1e6
        row.cpuBusy = cpu / secs * 100
        let late = expiryLateness(ids: Set((ubase..<(ubase + 200)).map { "b\($0)" }), after: seq0)
        (row.loadedExpiryP50, row.loadedExpiryP99, row.loadedExpiryMax) = (pct(late, 0.5), pct(late, 0.99), late.max() ?? .nan)
        if late.isEmpty {
            // An agent without `late_us`: its own summary, all expiries of the run so far.
            let l = status()["latency"]?["expiry_lateness"]
            say("level \(level): expiry lateness under load from the agent's summary: p50 \(f(l?["p50_ms"]?.doubleValue ?? .nan)) p99 \(f(l?["p99_ms"]?.doubleValue ?? .nan)) max \(f(l?["max_ms"]?.doubleValue ?? .nan)) ms")
        }
        _ = concurrentKeepAlive(lo..<(lo + n), clients: opt.clients) { c, i in (try? c.request("DELETE", "/v1/leases/b\(i)").status) == 200 }
    }
    // Single install + revoke latency at `level` active leases.
    var installs: [Double] = [], revokes: [Double] = []
    let conn = try UnixHTTPClient.Connection(client)
    for _ in 0..<opt.samples {
        serial += 1
        let i = serial
        let t0 = now()
        precondition(putOn(conn, i))
        let t1 = now()
        precondition((try? conn.request("DELETE", "/v1/leases/b\(i)").status) == 200)
        let t2 = now()
        installs.append(Double(t1 - t0) / 1e6)
        revokes.append(Double(t2 - t1) / 1e6)
        sampleLog?.write(Data("\(level) \(t0) install \(f(Double(t1 - t0) / 1e6, 3)) revoke \(f(Double(t2 - t1) / 1e6, 3))\n".utf8))
    }
    row.installP50 = pct(installs, 0.5); row.installP99 = pct(installs, 0.99)
    row.revokeP50 = pct(revokes, 0.5); row.revokeP99 = pct(revokes, 0.99)
    if level < 10 {
        // Batched admission at a small level: 10 000 leases, then revoked.
        let (secs, fails) = batchedAdmission(2_000_000..<2_010_000, clients: opt.clients)
        precondition(fails == 0)
        row.batched = 10_000 / secs
        _ = concurrentKeepAlive(2_000_000..<2_010_000, clients: opt.clients) { c, i in (try? c.request("DELETE", "/v1/leases/b\(i)").status) == 200 }
    }
    // Expiry lateness: 200 leases with a 700 ms ttl, expiring together, from their `expired`
    // events (an agent whose events lack `late_us`: its summary of all expiries so far).
    let base = 3_000_000 + level
    let seq1 = status()["events_seq"]?.int64Value ?? 0
    let (_, ef) = concurrent(base..<(base + 200), clients: opt.clients) { put($0, ttlMs: 700) == 201 }
    precondition(ef == 0)
    usleep(1_500_000)
    let quiet = expiryLateness(ids: Set((base..<(base + 200)).map { "b\($0)" }), after: seq1)
    let latency = status()["latency"]
    func p99max(_ j: JSON?) -> String { "\(f(j?["p99_ms"]?.doubleValue ?? .nan)) / \(f(j?["max_ms"]?.doubleValue ?? .nan))" }
    row.journalSync = p99max(latency?["journal_sync"])
    row.journalWait = p99max(latency?["journal_wait"])
    row.journalCompaction = "\(latency?["journal_compaction"]?["count"]?.int64Value ?? 0), max \(f(latency?["journal_compaction"]?["max_ms"]?.doubleValue ?? .nan)) ms"
    if quiet.isEmpty {
        let lat = latency?["expiry_lateness"]
        row.expiryP50 = lat?["p50_ms"]?.doubleValue ?? .nan
        row.expiryP99 = lat?["p99_ms"]?.doubleValue ?? .nan
        row.expiryMax = lat?["max_ms"]?.doubleValue ?? .nan
    } else {
        (row.expiryP50, row.expiryP99, row.expiryMax) = (pct(quiet, 0.5), pct(quiet, 0.99), quiet.max() ?? .nan)
    }
    let paced = pacedExpiries(level)
    (row.pacedExpiryP50, row.pacedExpiryP99, row.pacedExpiryMax) = (pct(paced.late, 0.5), pct(paced.late, 0.99), paced.late.max() ?? .nan)
    (row.pacedInstallP50, row.pacedInstallP99) = (pct(paced.installs, 0.5), pct(paced.installs, 0.99))
    (row.steeredAfter, row.probesAfter) = steeredAfterDeadline(level)
    row.rss = rssMB(agentProc.processIdentifier)
    usleep(2_000_000)
    row.rssIdle = rssMB(agentProc.processIdentifier)
    let memory = status()["memory"]
    row.heapInUse = (memory?["heap_in_use_bytes"]?.doubleValue ?? .nan) / 1_048_576
    row.heapFree = (memory?["heap_free_bytes"]?.doubleValue ?? .nan) / 1_048_576
    rows.append(row)
    say("level \(level): install p50 \(f(row.installP50, 3)) ms p99 \(f(row.installP99, 3)) ms; revoke p50 \(f(row.revokeP50, 3)) ms p99 \(f(row.revokeP99, 3)) ms; "
          + "admission \(f(row.throughput, 0))/s per request (agent CPU \(f(row.cpuPerLeaseUs, 0)) µs/lease, \(f(row.cpuBusy, 0)) % busy), \(f(row.batched, 0))/s batched; expiry lateness p50 \(f(row.expiryP50, 2)) p99 \(f(row.expiryP99, 2)) max \(f(row.expiryMax, 2)) ms, under load p50 \(f(row.loadedExpiryP50, 2)) p99 \(f(row.loadedExpiryP99, 2)) max \(f(row.loadedExpiryMax, 2)) ms, paced p50 \(f(row.pacedExpiryP50, 2)) p99 \(f(row.pacedExpiryP99, 2)) max \(f(row.pacedExpiryMax, 2)) ms (the pacing client's install p50 \(f(row.pacedInstallP50, 3)) p99 \(f(row.pacedInstallP99, 3)) ms); "
          + "journal fdatasync p99/max \(row.journalSync) ms, lease thread's wait for it p99/max \(row.journalWait) ms, compactions so far \(row.journalCompaction); "
          + "RSS \(f(row.rss, 1)) MB, \(f(row.rssIdle, 1)) MB after 2 s idle (malloc: \(f(row.heapInUse, 1)) MB in use, \(f(row.heapFree, 1)) MB free); naive install \(f(row.naiveInstall, 2)) ms remove \(f(row.naiveRemove, 2)) ms through ip netns exec, \(f(row.naiveInsideInstall, 2)) / \(f(row.naiveInsideRemove, 2)) ms from inside the namespace; "
          + "steered after deadline \(row.steeredAfter)/\(row.probesAfter)")
}

say("")
say("| active leases | install p50 / p99 (ms) | revoke p50 / p99 (ms) | admission, leases/s (\(opt.clients) clients): one PUT each / batches of 100 | agent CPU per PUT (µs), % of a core | expiry lateness p50 / p99 / max (ms): quiet; under load; paced | agent RSS (MB): after churn / 2 s idle | naive install / removal (ms): through `ip netns exec`; from inside the namespace | naive ÷ agent (install p50): through `ip netns exec`; inside | packets steered after deadline |")
say("| ---: | --- | --- | --- | --- | --- | ---: | --- | ---: | --- |")
for r in rows {
    let naive = r.naiveInstall.isNaN ? "n/a"
        : "\(f(r.naiveInstall)) / \(f(r.naiveRemove)); \(f(r.naiveInsideInstall)) / \(f(r.naiveInsideRemove))"
    let ratio = r.naiveInstall.isNaN ? "n/a" : "\(f(r.naiveInstall / r.installP50, 0))x; \(f(r.naiveInsideInstall / r.installP50, 0))x"
    say("| \(r.level) | \(f(r.installP50, 3)) / \(f(r.installP99, 3)) | \(f(r.revokeP50, 3)) / \(f(r.revokeP99, 3)) | \(f(r.throughput, 0)) / \(f(r.batched, 0)) | \(f(r.cpuPerLeaseUs, 0)), \(f(r.cpuBusy, 0)) % | \(f(r.expiryP50)) / \(f(r.expiryP99)) / \(f(r.expiryMax)); \(f(r.loadedExpiryP50)) / \(f(r.loadedExpiryP99)) / \(f(r.loadedExpiryMax)); \(f(r.pacedExpiryP50)) / \(f(r.pacedExpiryP99)) / \(f(r.pacedExpiryMax)) | \(f(r.rss, 1)) / \(f(r.rssIdle, 1)) | \(naive) | \(ratio) | \(r.steeredAfter) of \(r.probesAfter) probes |")
}
if opt.hold > 0 {
    say("")
    let t0 = now()
    while Double(now() - t0) / 1e9 < Double(opt.hold) {
        usleep(10_000_000)
        let st = status()
        let m = st["memory"]
        let mb = { (k: String) in f((m?[k]?.doubleValue ?? .nan) / 1_048_576, 1) }
        let written = st["evidence"]?["records_written"]?.int64Value ?? -1
        let readMs = st["evidence"]?["measurement"]?["last_counter_read_ms"]?.doubleValue ?? .nan
        say("held \(f(Double(now() - t0) / 1e9, 0)) s at \(active) active leases: RSS \(mb("rss_bytes")) MB, malloc \(mb("heap_in_use_bytes")) MB in use, \(mb("heap_free_bytes")) MB free; evidence records written \(written), last counter read \(f(readMs, 0)) ms; agent CPU \(f(agentCPUSeconds(), 1)) s")
    }
}
let stopStart = now()
cleanup()
say("\nagent stop with --flush-on-exit and lab teardown: \(f(Double(now() - stopStart) / 1e9, 1)) s")

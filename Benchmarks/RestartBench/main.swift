// scripts/bench-restart: time from starting aipaging-agent to serving (READY: the journal is
// replayed and the kernel reconciled) with 0, 10 000 and 100 000 journaled leases, for a warm
// restart (the kernel still holds the leases' state: fail-static) and a cold one (kernel state
// gone, as after a reboot: the agent installs everything with the remaining times).
import AIPagingClient
import AIPagingCore
import Foundation

func say(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }
var agentPath = "", repo = ".", levels = [0, 10_000, 100_000]
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--agent": agentPath = args.popFirst()!
    case "--repo": repo = args.popFirst()!
    case "--levels": levels = args.popFirst()!.split(separator: ",").compactMap { Int($0) }
    default: fatalError("unknown option \(a)")
    }
}
let options = (agent: agentPath, repo: repo, levels: levels)

@discardableResult
func sh(_ a: [String]) -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = a
    p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
    p.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try! p.run()
    p.waitUntilExit()
    return p.terminationStatus
}

let prefix = "aipr\(getpid() % 10000)"
let ns = "\(prefix)-enforce"
sh([options.repo + "/scripts/lab.sh", "up", prefix])
defer { sh([options.repo + "/scripts/lab.sh", "down", prefix]) }

func start(_ dir: String, flush: Bool = false) -> (Process, Double) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: options.agent)
    p.arguments = ["--netns", ns, "--socket", dir + "/agent.sock", "--state-dir", dir, "--capacity-kbit", "1000000000", "--log-level", "warning"]
        + (flush ? ["--flush-on-exit"] : [])
    p.standardError = FileHandle(forWritingAtPath: "/dev/null")
    let t0 = Date()
    try! p.run()
    let client = UnixHTTPClient(path: dir + "/agent.sock")
    while (try? client.request("GET", "/v1/status").status) != 200 { usleep(1000) }
    return (p, Date().timeIntervalSince(t0))
}

func stop(_ p: Process) {
    kill(p.processIdentifier, SIGTERM)
    p.waitUntilExit()
}

func fill(_ dir: String, _ n: Int) {
    let conn = try! UnixHTTPClient.Connection(UnixHTTPClient(path: dir + "/agent.sock"))
    var i = 0
    while i < n {
        var body = Array("{\"leases\":[".utf8)
        let hi = min(n, i + 500)
        for k in i..<hi {
            if k > i { body.append(UInt8(ascii: ",")) }
            let host = k % 64_000, port = 7000 + k / 64_000
            body += Array(("{\"lease_id\":\"r\(k)\",\"aisi\":\"a\(k)\",\"aist\":\"t\",\"ttl_ms\":3600000,"
                + "\"classifier\":{\"client\":\"198.19.\(host / 250).\(host % 250 + 1)\",\"service\":\"198.18.100.10\",\"protocol\":\"udp\",\"port\":\(port)},"
                + "\"anchor\":{\"id\":\"edge-1\",\"address\":\"198.18.2.2\",\"port\":\(port)},\"qos\":{\"rate_kbit\":10,\"ceil_kbit\":100,\"priority\":\(k % 4)}}").utf8)
        }
        body += Array("]}".utf8)
        let r = try! conn.request("POST", "/v1/leases", body: body)
        precondition(r.status == 200)
        i = hi
    }
}

func kernelElements() -> Int {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["ip", "netns", "exec", ns, "sh", "-c", "nft list map inet aipaging lease4 | grep -c ' : 0xa1'"]
    let out = Pipe()
    p.standardOutput = out
    try! p.run()
    let d = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Int(String(decoding: d, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
}

say("| journaled leases | warm restart to READY (s) | cold restart to READY (s) | journal size (MB) |")
say("| ---: | ---: | ---: | ---: |")
for n in options.levels {
    let dir = NSTemporaryDirectory() + "aipaging-restart-bench-\(n)"
    try? FileManager.default.removeItem(atPath: dir)
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var (p, _) = start(dir)
    fill(dir, n)
    stop(p)                                  // fail-static: the kernel keeps everything
    var warm = 0.0
    (p, warm) = start(dir)
    precondition(kernelElements() == n || n == 0)
    stop(p)
    // Cold: the kernel lost everything (as after a reboot).
    sh(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "aipaging"])
    sh(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "r-edge", "root"])
    var cold = 0.0
    (p, cold) = start(dir, flush: true)
    let back = kernelElements()
    precondition(back == n || n == 0, "\(back) of \(n) leases back in the kernel")
    let size = Double((try? FileManager.default.attributesOfItem(atPath: dir + "/leases.journal")[.size] as? Int) ?? 0) / 1e6
    stop(p)                                  // --flush-on-exit: leave nothing behind
    try? FileManager.default.removeItem(atPath: dir)
    say("| \(n) | \(String(format: "%.3f", warm)) | \(String(format: "%.3f", cold)) | \(String(format: "%.1f", size)) |")
}

import AIPagingTestSupport
import Foundation
import Testing

/// Every test that touches the kernel lives under this suite: `.serialized` runs them one at a
/// time, so the throughput test and the benchmarks do not compete for the 2 cores and the RTNL
/// lock with other tests of this package.
@Suite(.serialized) struct Live {}

/// Runs `body` with fresh namespaces and destroys them afterwards, whatever happens.
func withNamespaces<T>(_ prefixes: [String], _ body: ([TestNamespace]) throws -> T) throws -> T {
    var created: [TestNamespace] = []
    defer { created.forEach { $0.destroy() } }
    for p in prefixes { created.append(try TestNamespace(prefix: p)) }
    return try body(created)
}

func withNamespace<T>(_ prefix: String, _ body: (TestNamespace) throws -> T) throws -> T {
    try withNamespaces([prefix]) { try body($0[0]) }
}

/// client ─ c0 ══ r0 ─ router ─ r1 ══ a0 ─ anchor, addresses from 198.18.0.0/15 and 2001:db8::/32.
///
/// client 198.18.1.2 / 2001:db8:1::2, router 198.18.1.1 + 198.18.2.1 / 2001:db8:1::1 + 2001:db8:2::1,
/// anchor 198.18.2.2 / 2001:db8:2::2; the router forwards, the ends route via it. The aipaging
/// HTB goes on the router's `r1` (egress towards the anchor).
struct RouterLab {
    let client: TestNamespace
    let router: TestNamespace
    let anchor: TestNamespace

    static let clientV4 = "198.18.1.2", routerClientV4 = "198.18.1.1"
    static let routerAnchorV4 = "198.18.2.1", anchorV4 = "198.18.2.2"
    static let clientV6 = "2001:db8:1::2", routerClientV6 = "2001:db8:1::1"
    static let routerAnchorV6 = "2001:db8:2::1", anchorV6 = "2001:db8:2::2"

    /// Builds the lab in three namespaces; `body` runs with it, all three are destroyed after.
    static func with<T>(_ tag: String, _ body: (RouterLab) throws -> T) throws -> T {
        try withNamespaces(["\(tag)c", "\(tag)r", "\(tag)a"]) { ns in
            let lab = RouterLab(client: ns[0], router: ns[1], anchor: ns[2])
            try lab.build()
            return try body(lab)
        }
    }

    private func build() throws {
        _ = try Shell.sh("""
        set -e
        # No DAD (also for the link-local addresses): IPv6 works as soon as the links are up.
        for n in \(client.name) \(router.name) \(anchor.name); do
          ip netns exec $n sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
        done
        ip -n \(router.name) link add r0 type veth peer name c0 netns \(client.name)
        ip -n \(router.name) link add r1 type veth peer name a0 netns \(anchor.name)
        ip netns exec \(router.name) sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
        ip -n \(client.name) addr add \(Self.clientV4)/24 dev c0
        ip -n \(client.name) addr add \(Self.clientV6)/64 dev c0 nodad
        ip -n \(router.name) addr add \(Self.routerClientV4)/24 dev r0
        ip -n \(router.name) addr add \(Self.routerClientV6)/64 dev r0 nodad
        ip -n \(router.name) addr add \(Self.routerAnchorV4)/24 dev r1
        ip -n \(router.name) addr add \(Self.routerAnchorV6)/64 dev r1 nodad
        ip -n \(anchor.name) addr add \(Self.anchorV4)/24 dev a0
        ip -n \(anchor.name) addr add \(Self.anchorV6)/64 dev a0 nodad
        for l in "\(client.name) c0" "\(router.name) r0" "\(router.name) r1" "\(anchor.name) a0"; do
          set -- $l; ip -n $1 link set $2 up
        done
        ip -n \(client.name) route add default via \(Self.routerClientV4)
        ip -n \(client.name) -6 route add default via \(Self.routerClientV6)
        ip -n \(anchor.name) route add default via \(Self.routerAnchorV4)
        ip -n \(anchor.name) -6 route add default via \(Self.routerAnchorV6)
        # Permanent neighbours: no ARP/ND, so the first packets of a test are not lost or delayed
        # while the router has not yet joined its solicited-node groups.
        mac() { ip netns exec $1 cat /sys/class/net/$2/address; }
        C0=$(mac \(client.name) c0); R0=$(mac \(router.name) r0); R1=$(mac \(router.name) r1); A0=$(mac \(anchor.name) a0)
        for a in \(Self.routerClientV4) \(Self.routerClientV6); do ip -n \(client.name) neigh replace $a lladdr $R0 dev c0 nud permanent; done
        for a in \(Self.clientV4) \(Self.clientV6); do ip -n \(router.name) neigh replace $a lladdr $C0 dev r0 nud permanent; done
        for a in \(Self.anchorV4) \(Self.anchorV6); do ip -n \(router.name) neigh replace $a lladdr $A0 dev r1 nud permanent; done
        for a in \(Self.routerAnchorV4) \(Self.routerAnchorV6); do ip -n \(anchor.name) neigh replace $a lladdr $R1 dev a0 nud permanent; done
        """)
    }

    /// Sends UDP from the client to `destination:port` at `bitsPerSecond` (on-wire IP bytes)
    /// for `seconds`, `payload`-byte datagrams; returns the number of datagrams sent.
    @discardableResult
    func sendUDP(to destination: String, port: Int, bitsPerSecond: Int, seconds: Double, payload: Int = 1000,
                 sourcePort: Int = 0) throws -> Int {
        let script = """
        import socket, sys, time
        dst, port, bps, dur, size, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        fam = socket.AF_INET6 if ':' in dst else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if sport: s.bind(('', sport))
        data = b'x' * size
        overhead = 48 if fam == socket.AF_INET6 else 28
        interval = (size + overhead) * 8.0 / bps
        start = time.perf_counter(); n = 0
        while True:
            now = time.perf_counter()
            if now - start >= dur: break
            due = int((now - start) / interval) + 1
            while n < due:
                try: s.sendto(data, (dst, port))
                except (BlockingIOError, OSError): pass
                n += 1
            time.sleep(0.0005)
        print(n)
        """
        let out = try client.exec(["python3", "-c", script, destination, String(port), String(bitsPerSecond),
                                   String(seconds), String(payload), String(sourcePort)])
        return Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }
}

/// A UDP receiver in a namespace, started in the background: counts datagrams from the first
/// one until `idle` seconds pass without any (or `timeout` without a first one).
final class UDPReceiver {
    private let process = Process()
    private let output = Pipe()

    init(in ns: TestNamespace, address: String, port: Int, idle: Double = 1.0, timeout: Double = 10) throws {
        let script = """
        import socket, sys, time, json
        addr, port, idle, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
        fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind((addr, port))
        print('ready', flush=True)
        s.settimeout(timeout)
        n = 0; nbytes = 0; first = last = None
        try:
            while True:
                d = s.recv(65535)
                t = time.perf_counter()
                if first is None:
                    first = t; s.settimeout(idle)
                last = t; n += 1; nbytes += len(d)
        except socket.timeout:
            pass
        print(json.dumps({'packets': n, 'bytes': nbytes, 'seconds': (last - first) if first else 0.0}), flush=True)
        """
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip", "netns", "exec", ns.name, "python3", "-c", script, address, String(port), String(idle), String(timeout)]
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Wait for "ready" so no datagram arrives before the socket is bound.
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
    }

    struct Result: Decodable { var packets: Int; var bytes: Int; var seconds: Double }

    /// Waits for the receiver to finish and returns what it counted.
    func finish() throws -> Result {
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? "{}"
        return try JSONDecoder().decode(Result.self, from: Data(text.utf8))
    }

    deinit {
        if process.isRunning { process.terminate() }
    }
}

/// One class from `tc -s -d class show dev IF` (iproute2 6.1 prints HTB classes as text even
/// with `-j`), parsed independently of the agent's code.
struct TCTextClass: Equatable {
    var handle: String
    var parent: String  // "root" for a qdisc's top class
    var leaf: String?
    var prio: Int?
    var quantum: Int?
    var rateKbit: UInt64
    var ceilKbit: UInt64
    var sentBytes: UInt64 = 0
    var sentPackets: UInt64 = 0
    var dropped: UInt64 = 0
    var overlimits: UInt64 = 0

    /// "4Mbit" → 4000 (kbit/s); tc prints the largest unit that divides the rate exactly.
    static func kbit(_ text: Substring) -> UInt64? {
        guard text.hasSuffix("bit") else { return nil }
        var t = text.dropLast(3)
        var mult: Double = 1
        if let u = t.last, let m = ["K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12][String(u)] { mult = m; t = t.dropLast() }
        guard let v = Double(t) else { return nil }
        return UInt64((v * mult / 1000).rounded())
    }

    static func load(_ ns: TestNamespace, dev: String) throws -> [String: TCTextClass] {
        let out = try ns.exec(["tc", "-s", "-d", "class", "show", "dev", dev])
        var result: [String: TCTextClass] = [:]
        var current: TCTextClass?
        for line in out.split(separator: "\n") {
            let w = line.split(separator: " ")
            if w.first == "class", w.count > 3 {
                if let c = current { result[c.handle] = c }
                func after(_ key: String) -> Substring? { w.firstIndex(of: Substring(key)).flatMap { $0 + 1 < w.count ? w[$0 + 1] : nil } }
                current = TCTextClass(handle: String(w[2]), parent: w[3] == "root" ? "root" : String(after("parent") ?? "?"),
                                      leaf: after("leaf").map(String.init), prio: after("prio").flatMap { Int($0) },
                                      quantum: after("quantum").flatMap { Int($0) },
                                      rateKbit: after("rate").flatMap(kbit) ?? 0, ceilKbit: after("ceil").flatMap(kbit) ?? 0)
            } else if w.first == "Sent", w.count >= 9, current != nil {
                // Sent 1234 bytes 5 pkt (dropped 0, overlimits 0 requeues 0)
                current!.sentBytes = UInt64(w[1]) ?? 0
                current!.sentPackets = UInt64(w[3]) ?? 0
                current!.dropped = UInt64(w[6].trimmingCharacters(in: CharacterSet(charactersIn: ","))) ?? 0
                current!.overlimits = UInt64(w[8]) ?? 0
            }
        }
        if let c = current { result[c.handle] = c }
        return result
    }
}

/// Wall-clock timing for the printed (not asserted) figures.
func measure(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

func fmtMicros(_ seconds: Double) -> String { String(format: "%.1f µs", seconds * 1e6) }
func fmtMillis(_ seconds: Double) -> String { String(format: "%.2f ms", seconds * 1e3) }

/// Benchmarks print figures and are run by `scripts/bench-kernel`, not by `swift test`.
let benchmarksEnabled = ProcessInfo.processInfo.environment["AIP_BENCH"] != nil && Shell.isRoot

import AIPagingTestSupport
import Testing
import Foundation
@testable import AIPagingKernel
import AIPagingCore

/// Three namespaces: client — router (the enforcement namespace with `inet aipaging`,
/// forwarding on) — anchor. The VIP is assigned nowhere; only the table's DNAT gets packets to
/// the anchor, and only the gate's qos elements let them through.
final class LeaseLab {
    let client: TestNamespace
    let router: TestNamespace
    let anchor: TestNamespace
    private var echoPID: Int32?
    let echoLog: String

    static let python = "/usr/bin/python3"

    init() throws {
        client = try TestNamespace(prefix: "cli")
        router = try TestNamespace(prefix: "rtr")
        anchor = try TestNamespace(prefix: "anc")
        echoLog = "/tmp/\(anchor.name).log"
        do { try build() } catch { destroy(); throw error }
    }

    private func build() throws {
        let c = client.name, r = router.name, a = anchor.name
        _ = try Shell.sh("""
        set -e
        # No DAD: link-local addresses would stay tentative for ~1 s and delay the first
        # neighbour resolution past the test's receive timeout.
        for n in \(c) \(r) \(a); do
            ip netns exec $n sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
        done
        ip link add c0 netns \(c) type veth peer name r0 netns \(r)
        ip link add a0 netns \(a) type veth peer name r1 netns \(r)
        ip -n \(r) link set r0 up; ip -n \(r) link set r1 up
        ip -n \(c) link set c0 up; ip -n \(a) link set a0 up
        ip netns exec \(r) sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
        ip -n \(c) addr add 198.18.1.2/24 dev c0
        ip -n \(r) addr add 198.18.1.1/24 dev r0
        ip -n \(r) addr add 198.18.2.1/24 dev r1
        ip -n \(a) addr add 198.18.2.2/24 dev a0
        ip -n \(c) addr add 2001:db8:1::2/64 dev c0 nodad
        ip -n \(r) addr add 2001:db8:1::1/64 dev r0 nodad
        ip -n \(r) addr add 2001:db8:2::1/64 dev r1 nodad
        ip -n \(a) addr add 2001:db8:2::2/64 dev a0 nodad
        ip -n \(c) route add default via 198.18.1.1
        ip -n \(a) route add default via 198.18.2.1
        ip -n \(c) -6 route add default via 2001:db8:1::1
        ip -n \(a) -6 route add default via 2001:db8:2::1
        """)
        // UDP echo server on the anchor, v4 and v6 port 7000; logs "addr payload" per datagram.
        // It ends by itself after 20 s; destroy() also stops it by its pid.
        let script = """
        import socket, select, sys, time
        s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s4.bind(("0.0.0.0", 7000))
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); s6.bind(("::", 7000))
        log = open(sys.argv[1], "a", buffering=1)
        log.write("ready\\n")
        end = time.time() + 20
        while time.time() < end:
            r, _, _ = select.select([s4, s6], [], [], 0.2)
            for s in r:
                data, addr = s.recvfrom(2048)
                log.write("%s %s\\n" % (addr[0], data.decode()))
                s.sendto(b"echo " + data, addr)
        """
        // Started without pipes (Shell.run would wait for the server to close them).
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["ip", "netns", "exec", anchor.name, LeaseLab.python, "-c", script, echoLog]
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        echoPID = p.processIdentifier
        for _ in 0..<100 where !((try? String(contentsOfFile: echoLog, encoding: .utf8)) ?? "").contains("ready") {
            usleep(20_000)
        }
    }

    /// Sends one datagram from `source`:`sourcePort` to `vip`:7000 in the client namespace and
    /// returns the echo, or nil if none arrives within `wait` seconds.
    func send(_ payload: String, from source: String, port sourcePort: Int, to vip: String, wait: Double = 0.5) throws -> String? {
        let family = source.contains(":") ? "AF_INET6" : "AF_INET"
        let script = """
        import socket
        s = socket.socket(socket.\(family), socket.SOCK_DGRAM)
        s.bind(("\(source)", \(sourcePort)))
        s.settimeout(\(wait))
        s.sendto(b"\(payload)", ("\(vip)", 7000))
        try:
            print(s.recvfrom(2048)[0].decode())
        except socket.timeout:
            print("TIMEOUT")
        """
        let out = try client.exec([LeaseLab.python, "-c", script]).trimmingCharacters(in: .whitespacesAndNewlines)
        return out == "TIMEOUT" ? nil : out
    }

    var anchorLog: String { (try? String(contentsOfFile: echoLog, encoding: .utf8)) ?? "" }

    func destroy() {
        if let echoPID { kill(echoPID, SIGTERM) }
        client.destroy(); router.destroy(); anchor.destroy()
        try? FileManager.default.removeItem(atPath: echoLog)
    }
}

@Suite struct NFTablesTrafficTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var client: String, vip: String, anchor: String, mark: UInt32
        var testDescription: String { client.contains(":") ? "IPv6" : "IPv4" }
    }

    @Test(.enabled(if: Shell.isRoot), arguments: [
        Case(client: "198.18.1.2", vip: "198.18.100.10", anchor: "198.18.2.2", mark: 0xa100_0001),
        Case(client: "2001:db8:1::2", vip: "2001:db8:100::10", anchor: "2001:db8:2::2", mark: 0xa100_0002),
    ])
    func leaseSteersCountsAndExpiresEvenEstablishedFlows(_ c: Case) throws {
        let lab = try LeaseLab()
        defer { lab.destroy() }
        let socket = try NFTablesSocket(namespace: .named(lab.router.name))
        try NFT.createSchema(socket)

        // Without a lease the VIP is unreachable.
        #expect(try lab.send("nolease", from: c.client, port: 40001, to: c.vip, wait: 0.3) == nil)

        let lifetimeMs: UInt64 = 1_000
        let tx = NFTTransaction()
        tx.addSteering(NFT.key(c.client, c.vip, .udp, 7000), mark: c.mark, timeoutMs: lifetimeMs)
        tx.addAnchor(mark: c.mark, address: NFT.ip(c.anchor), port: 7000, timeoutMs: lifetimeMs)
        tx.addQoS(mark: c.mark, classid: 0x0001_0005, timeoutMs: lifetimeMs)
        let committed = Date()
        try socket.commit(tx)

        // Lease live: DNAT to the anchor, echo back through the gate (both directions).
        #expect(try lab.send("one", from: c.client, port: 40000, to: c.vip) == "echo one")
        #expect(try lab.send("two", from: c.client, port: 40000, to: c.vip) == "echo two")
        #expect(Date().timeIntervalSince(committed) < Double(lifetimeMs) / 1000, "lab too slow for the lease lifetime")
        #expect(lab.anchorLog.contains("\(c.client) one"))
        #expect(lab.anchorLog.contains("\(c.client) two"))
        let counters = try socket.listQoS()
        let original = try #require(counters.first { $0.direction == .original })
        let reply = try #require(counters.first { $0.direction == .reply })
        #expect(original.packets == 2 && original.bytes > 0)
        #expect(reply.packets == 2)

        // Let every element lapse; the conntrack entry (established, ct mark = lease) stays.
        usleep(useconds_t(lifetimeMs * 1000) + 200_000)
        #expect(try socket.listQoS().isEmpty)
        let conntrack = try lab.router.exec(["conntrack", "-L", "-p", "udp", "--orig-port-src", "40000"])
        #expect(conntrack.contains("mark=\(c.mark)"))
        #expect(!conntrack.isEmpty && !conntrack.contains("UNREPLIED"))  // replies were seen: established

        // Same 5-tuple: the established flow is dropped by the gate, nothing reaches the anchor.
        #expect(try lab.send("three", from: c.client, port: 40000, to: c.vip, wait: 0.3) == nil)
        #expect(!lab.anchorLog.contains("three"))
        let gate = try lab.router.exec(["nft", "list", "chain", "inet", "aipaging", "gate"])
        #expect(!gate.contains("counter packets 0 bytes 0 drop"))
    }
}

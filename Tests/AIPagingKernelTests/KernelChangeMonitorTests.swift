import AIPagingCore
import AIPagingTestSupport
import Foundation
import Synchronization
import Testing
@testable import AIPagingKernel

/// The change monitor: classification of notification bytes (pure), and live: the kernel's
/// notifications for nft(8)/tc(8) changes reach it, the agent's own sockets' changes do not.
@Suite struct KernelChangeMonitorTests {
    /// One netlink message: header (len, type, flags, seq, pid) and payload, padded to 4.
    static func message(type: UInt16, portID: UInt32, payload: [UInt8]) -> [UInt8] {
        var m: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { m += $0 } }
        func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { m += $0 } }
        u32(UInt32(16 + payload.count)); u16(type); u16(0); u32(0); u32(portID)
        m += payload
        while m.count % 4 != 0 { m.append(0) }
        return m
    }

    static func attribute(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
        var a: [UInt8] = []
        withUnsafeBytes(of: UInt16(4 + value.count).littleEndian) { a += $0 }
        withUnsafeBytes(of: type.littleEndian) { a += $0 }
        a += value
        while a.count % 4 != 0 { a.append(0) }
        return a
    }

    static func string(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }

    /// NFT_MSG_<msg> notification for `table`/`set` in family `family`.
    static func nft(_ msg: UInt16, family: UInt8 = 1, table: String = "aipaging", set: String = "lease4", portID: UInt32) -> [UInt8] {
        message(type: 10 << 8 | msg, portID: portID,
                payload: [family, 0, 0, 0] + attribute(1, string(table)) + attribute(2, string(set)))
    }

    static func tc(_ type: UInt16, ifindex: Int32 = 4, handle: UInt32, parent: UInt32, portID: UInt32) -> [UInt8] {
        var p: [UInt8] = [0, 0, 0, 0]
        withUnsafeBytes(of: ifindex.littleEndian) { p += $0 }
        withUnsafeBytes(of: handle.littleEndian) { p += $0 }
        withUnsafeBytes(of: parent.littleEndian) { p += $0 }
        p += [0, 0, 0, 0]
        return message(type: type, portID: portID, payload: p)
    }

    @Test func nftablesNotificationsOfOthersForTheAgentsTableOnly() {
        let own: Set<UInt32> = [1000, 1001]
        var datagram: [UInt8] = []
        datagram += Self.nft(14, portID: 1000)                                     // own delsetelem
        datagram += Self.nft(14, portID: 4242)                                     // foreign delsetelem
        datagram += Self.nft(12, table: "filter", set: "x", portID: 4242)          // another table
        datagram += Self.nft(12, family: 2, portID: 4242)                          // ip aipaging, not inet
        datagram += Self.nft(11, set: "qos", portID: 4242)                         // foreign delset: schema
        var gen: [UInt8] = []
        withUnsafeBytes(of: UInt32(77).bigEndian) { gen += $0 }
        datagram += Self.message(type: 10 << 8 | 15, portID: 4242,
                                 payload: [0, 0, 0, 0] + Self.attribute(2, gen) + Self.attribute(3, Self.string("nft")))
        var origins: [UInt32: String] = [:]
        let changes = datagram.withUnsafeBytes { KernelChangeMonitor.nftablesChanges(in: $0, ignoring: own, origins: &origins) }
        #expect(changes.map(\.operation) == ["delsetelem", "delset"])
        #expect(changes.map(\.object) == ["inet aipaging lease4", "inet aipaging qos"])
        #expect(changes.map(\.schema) == [false, true])
        #expect(changes.allSatisfy { $0.portID == 4242 })
        #expect(origins == [4242: "nft[77]"])
    }

    @Test func tcNotificationsOfOthersForTheAgentsHandlesOnly() {
        let own: Set<UInt32> = [1000]
        var datagram: [UInt8] = []
        datagram += Self.tc(41, handle: 0x0100_0002, parent: 0x0100_0001, portID: 1000)   // own deltclass
        datagram += Self.tc(41, handle: 0x0100_0002, parent: 0x0100_0001, portID: 555)    // foreign deltclass 100:2
        datagram += Self.tc(37, handle: 0x00a1_0000, parent: 0xffff_ffff, portID: 0)      // kernel removed a1: root
        datagram += Self.tc(36, handle: 0x0001_0000, parent: 0xffff_ffff, portID: 555)    // someone's 1: root elsewhere
        datagram += Self.tc(36, handle: 0, parent: 0xffff_ffff, portID: 555)              // default qdisc
        let changes = datagram.withUnsafeBytes { KernelChangeMonitor.tcChanges(in: $0, ignoring: own) }
        #expect(changes.map(\.operation) == ["deltclass", "delqdisc"])
        #expect(changes.map(\.object) == ["ifindex 4 handle 100:2 parent 100:1", "ifindex 4 handle a1:0 parent root"])
        #expect(changes.map(\.portID) == [555, 0])
    }

    /// Live: a monitor in a throwaway namespace sees nft(8) and tc(8) changes to the agent's
    /// objects within the debounce window, and nothing of what the "agent's" own sockets do.
    @Test(.enabled(if: Shell.isRoot))
    func seesOthersButNotTheOwnSockets() async throws {
        let ns = try TestNamespace(prefix: "mon")
        defer { ns.destroy() }
        try ns.sh("ip link add m0 type veth peer name m1 && ip link set m0 up && ip link set m1 up")
        let nft = try NFTablesSocket(namespace: .named(ns.name))
        let route = try RouteSocket(namespace: .named(ns.name))
        let tc = TrafficControl(socket: route)
        let reports = Mutex<[KernelChangeMonitor.Report]>([])
        let monitor = try KernelChangeMonitor(namespace: .named(ns.name), ignoring: [nft.portID, route.portID],
                                              debounce: .milliseconds(30)) { r in reports.withLock { $0.append(r) } }
        defer { monitor.stop() }

        // Own changes: table, elements, HTB root and a leaf class through the agent's sockets.
        let tx = NFTTransaction()
        tx.createAIPagingTable()
        tx.addSteering(NFTSteeringKey(client: IPAddress("198.18.1.2")!, service: IPAddress("198.18.100.10")!, proto: .udp, port: 7000)!,
                       mark: 0xa100_0001, timeoutMs: 60_000)
        try nft.commit(tx)
        let ifindex = try route.interfaceIndex(named: "m0")
        try tc.ensureSkeleton(ifindex: ifindex, capacityKbit: 100_000)
        try tc.addGroup(ifindex: ifindex, group: 0x100, prio: 1, rateKbit: 1000, capacityKbit: 100_000)
        try await Task.sleep(for: .milliseconds(50))
        // (The skeleton's filter chain is announced by the kernel itself, port 0: foreign to the
        // filter, not relevant to the monitor.) Per lease: a leaf class and elements.
        let beforeLeases = monitor.datagramsReceived
        for minor in UInt16(2)...9 {
            try tc.addLeaf(ifindex: ifindex, TCHandle(major: 0x100, minor: minor), HTBClassParameters(rateKbit: 1000, ceilKbit: 2000, prio: 1))
            let more = NFTTransaction()
            more.addSteering(NFTSteeringKey(client: IPAddress("198.18.1.\(minor + 10)")!, service: IPAddress("198.18.100.10")!, proto: .udp, port: 7000)!,
                             mark: 0xa100_0000 | UInt32(minor), timeoutMs: 60_000)
            try nft.commit(more)
        }
        try await Task.sleep(for: .milliseconds(150))
        #expect(reports.withLock { $0.isEmpty }, "own changes reported: \(reports.withLock { $0.map(\.changes) })")
        // The kernel dropped them before they reached the monitor's queues (socket filter).
        #expect(monitor.datagramsReceived == beforeLeases)

        // Someone else's.
        _ = try await offPool { try ns.exec(["nft", "delete", "element", "inet", "aipaging", "lease4", "{ 198.18.1.2 . 198.18.100.10 . udp . 7000 }"]) }
        _ = try await offPool { try ns.exec(["tc", "class", "del", "dev", "m0", "classid", "100:2"]) }
        try await Task.sleep(for: .milliseconds(200))
        let seen = reports.withLock { $0 }
        #expect(monitor.datagramsReceived >= 2)
        let all = seen.flatMap(\.changes)
        #expect(all.contains { $0.subsystem == .nftables && $0.operation == "delsetelem" && $0.object == "inet aipaging lease4" })
        #expect(all.contains { $0.subsystem == .tc && $0.operation == "deltclass" && $0.object.hasSuffix("handle 100:2 parent 100:1") })
        #expect(seen.flatMap(\.origins).contains { $0.hasPrefix("nft[") })
        #expect(!all.contains { $0.portID == nft.portID || $0.portID == route.portID })
    }

    /// A large transaction of the agent's own (50 000 elements, ~50 000 notifications queued at
    /// once) is neither reported nor overruns the monitor's receive queue (which would count as
    /// "lost" and cost a full resync).
    @Test(.enabled(if: Shell.isRoot))
    func aLargeOwnTransactionIsNotReported() async throws {
        let ns = try TestNamespace(prefix: "monbig")
        defer { ns.destroy() }
        let nft = try NFTablesSocket(namespace: .named(ns.name))
        let reports = Mutex<[KernelChangeMonitor.Report]>([])
        let monitor = try KernelChangeMonitor(namespace: .named(ns.name), ignoring: [nft.portID],
                                              debounce: .milliseconds(30)) { r in reports.withLock { $0.append(r) } }
        defer { monitor.stop() }
        let setup = NFTTransaction()
        setup.createAIPagingTable()
        try nft.commit(setup)
        let tx = NFTTransaction()
        for i in 0..<50_000 {
            let client = IPAddress.v4(0xc612_0000 + UInt32(i))   // from 198.18.0.0 up
            tx.addSteering(NFTSteeringKey(client: client, service: IPAddress("198.18.100.10")!, proto: .udp, port: 7000)!,
                           mark: 0xa100_0000 | UInt32(i + 1), timeoutMs: 60_000)
        }
        try nft.commit(tx)
        try await Task.sleep(for: .milliseconds(300))
        let seen = reports.withLock { $0 }
        #expect(monitor.datagramsReceived == 0)
        #expect(seen.isEmpty, "reported: \(seen.map { "lost=\($0.lost) \($0.changes.prefix(3))" })")
    }
}

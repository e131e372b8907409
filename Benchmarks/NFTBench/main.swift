// Timings of the nftables adapter, and the kernel's own ceiling for admissions (the agent's tc and
// nftables work alone): `swift run -c release NFTBench` (as root).
// Creates a throwaway network namespace `aipt-bench-PID` and deletes it at the end.
import Foundation
import AIPagingKernel
import AIPagingCore

func sh(_ args: [String]) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    try? p.run()
    p.waitUntilExit()
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }
func us(_ s: Double) -> String { String(format: "%.1f µs", s * 1e6) }
func ms(_ s: Double) -> String { String(format: "%.1f ms", s * 1e3) }

func key(_ i: Int, port: UInt16) -> NFTSteeringKey {
    NFTSteeringKey(client: .v4(0xc612_0000 + UInt32(i)), service: IPAddress("198.18.100.10")!, proto: .udp, port: port)!
}

let ns = "aipt-bench-\(getpid())"
sh(["ip", "netns", "add", ns])
defer { sh(["ip", "netns", "del", ns]) }

do {
    let socket = try NFTablesSocket(namespace: .named(ns))
    func freshTable() throws {
        let tx = NFTTransaction()
        tx.recreateAIPagingTable()
        try socket.commit(tx)
    }
    let modes: [(String, NFTAckMode)] = [("errors-only + END ack", .errorsOnly), ("ACK per message", .perMessage)]

    // 1. One-element transactions, each waiting for its outcome; the two modes interleaved.
    try freshTable()
    var total: [[Double]] = [[], []], commitOnly: [[Double]] = [[], []]
    for i in 0..<20_000 {
        let m = i % 2
        let t0 = now()
        let tx = NFTTransaction()
        tx.addSteering(key(i, port: 1), mark: AIPagingNFT.leaseMark(slot: UInt32(i)), timeoutMs: 600_000)
        let t1 = now()
        try socket.commit(tx, ackMode: modes[m].1)
        let t2 = now()
        total[m].append(t2 - t0); commitOnly[m].append(t2 - t1)
    }
    for m in 0..<2 {
        print("1-element transaction (\(modes[m].0)): median \(us(median(total[m]))) build+commit+outcome, \(us(median(commitOnly[m]))) commit+outcome (10000 samples)")
    }

    // 2. 1 000 elements in one transaction, median of 20 runs with fresh keys.
    for (name, mode) in modes {
        try freshTable()
        var build: [Double] = [], commit: [Double] = []
        for run in 0..<20 {
            let t0 = now()
            let tx = NFTTransaction()
            for i in 0..<1_000 { tx.addSteering(key(i, port: UInt16(100 + run)), mark: AIPagingNFT.leaseMark(slot: UInt32(i)), timeoutMs: 600_000) }
            let t1 = now()
            try socket.commit(tx, ackMode: mode)
            let t2 = now()
            build.append(t1 - t0); commit.append(t2 - t1)
        }
        print("1000-element transaction (\(name)): build \(ms(median(build))), commit \(ms(median(commit))) (median of 20)")
    }

    // 3. 100 000 elements in one transaction.
    for (name, mode) in modes {
        try freshTable()
        let t0 = now()
        let tx = NFTTransaction()
        for i in 0..<100_000 { tx.addSteering(key(i, port: 7000), mark: AIPagingNFT.leaseMark(slot: UInt32(i)), timeoutMs: 600_000) }
        let t1 = now()
        let r = try socket.commit(tx, ackMode: mode)
        let t2 = now()
        print("100000-element transaction (\(name)): build \(ms(t1 - t0)), commit \(ms(t2 - t1)), \(r.bytes) bytes, \(r.transactions) transaction(s)")
    }

    // 4. Reading them back, and recreating the table with all of them in one transaction.
    let t0 = now()
    let listed = try socket.listSteering(family: .ipv4)
    let t1 = now()
    print("dump + decode of \(listed.count) lease4 elements: \(ms(t1 - t0))")
    let t2 = now()
    let tx = NFTTransaction()
    tx.recreateAIPagingTable()
    for e in listed { tx.addSteering(e.key, mark: e.mark, timeoutMs: 600_000) }
    let r = try socket.commit(tx, allowSplit: false)
    print("recreate table + re-add \(listed.count) elements in one transaction: \(ms(now() - t2)) (\(r.bytes) bytes)")
    _ = try socket.verifyAIPagingSchema()

    // 5. The kernel's ceiling for admissions: exactly the kernel work of the agent's batches of 100
    // leases (one transaction of a steering, an anchor and a QoS element per lease; an HTB leaf
    // per lease in groups of 256 per priority, each touched group's rate changed), from one thread
    // with nothing else (no HTTP, JSON, journal or evidence), on a veth as in the lab.
    sh(["ip", "-n", ns, "link", "add", "k0", "type", "veth", "peer", "name", "k1"])
    sh(["ip", "-n", ns, "link", "set", "k0", "up"])
    sh(["ip", "-n", ns, "link", "set", "k1", "up"])
    let route = try RouteSocket(namespace: .named(ns))
    let tc = TrafficControl(socket: route)
    let ifindex = try route.interfaceIndex(named: "k0")
    func admissionCeiling(_ title: String) throws {
        try freshTable()
        let capacity: UInt64 = 100_000_000
        try tc.ensureSkeleton(ifindex: ifindex, capacityKbit: capacity)
        var groups: [[(group: UInt16, leaves: Int)]] = Array(repeating: [], count: 4)  // per priority
        var nextGroup = AIPagingHTB.groupRange.lowerBound
        let anchor = IPAddress("198.18.2.2")!
        var done = 0
        let steps = [1_000, 2_000, 5_000, 10_000, 15_000]
        print("kernel work of batches of 100 admissions, one thread, \(title) (per lease: tc / nftables / both; leases/s of both):")
        for step in steps {
            var (stepTc, stepNft) = (UInt64(0), UInt64(0))
            let from = done
            while done < step {
                var ops: [TCOperation] = [], touched: [UInt16: (prio: UInt8, leaves: Int)] = [:]
                let tx = NFTTransaction()
                for i in done..<(done + 100) {
                    let prio = i % 4
                    if groups[prio].last.map({ $0.leaves >= 256 }) ?? true {
                        ops.append(.addGroup(group: nextGroup, prio: UInt8(prio), rateKbit: 100, capacityKbit: capacity))
                        groups[prio].append((nextGroup, 0))
                        nextGroup += 1
                    }
                    let g = groups[prio].count - 1
                    groups[prio][g].leaves += 1
                    let (group, n) = groups[prio][g]
                    let handle = TCHandle(major: group, minor: UInt16(n + 1))
                    ops.append(.addLeaf(handle, HTBClassParameters(rateKbit: 100, ceilKbit: 1000, prio: UInt8(prio))))
                    touched[group] = (UInt8(prio), n)
                    let mark = AIPagingNFT.leaseMark(slot: UInt32(i))
                    tx.addSteering(key(i, port: 9000), mark: mark, timeoutMs: 3_600_000)
                    tx.addAnchor(mark: mark, address: anchor, port: 9000, timeoutMs: 3_600_000)
                    tx.addQoS(mark: mark, classid: handle.rawValue, timeoutMs: 3_600_000)
                }
                for (group, t) in touched.sorted(by: { $0.key < $1.key }) {
                    ops.append(.changeGroup(group: group, prio: t.prio, rateKbit: 100 * UInt64(t.leaves), capacityKbit: capacity))
                }
                let t0 = DispatchTime.now().uptimeNanoseconds
                try tc.performAll(ifindex: ifindex, ops)
                let t1 = DispatchTime.now().uptimeNanoseconds
                try socket.commit(tx)
                let t2 = DispatchTime.now().uptimeNanoseconds
                stepTc += t1 - t0
                stepNft += t2 - t1
                done += 100
            }
            let n = Double(done - from)
            let (perTc, perNft) = (Double(stepTc) / n / 1e3, Double(stepNft) / n / 1e3)
            print(String(format: "  %6d -> %6d leases: %.1f / %.1f / %.1f µs, %.0f leases/s (tc alone %.0f/s)",
                         from, done, perTc, perNft, perTc + perNft, 1e6 / (perTc + perNft), 1e6 / perTc))
        }
        try tc.removeSkeleton(ifindex: ifindex)
    }
    try admissionCeiling("nobody listening")
    // As in the agent: its change monitor subscribes to both subsystems' notifications (the
    // kernel builds one per element and class; a socket filter drops the agent's own).
    let monitor = try KernelChangeMonitor(namespace: .named(ns), ignoring: [socket.portID, route.portID]) { _ in }
    try admissionCeiling("the agent's change monitor listening")
    monitor.stop()
} catch {
    print("bench failed: \(error)")
    exit(1)
}

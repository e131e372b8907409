// Timings of the nftables adapter: `swift run -c release NFTBench` (as root).
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
} catch {
    print("bench failed: \(error)")
    exit(1)
}

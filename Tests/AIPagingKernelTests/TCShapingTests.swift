import AIPagingTestSupport
import Foundation
import Testing
import AIPagingKernel
import AIPagingCore

extension Live {
    /// Traffic through client → router → anchor with the aipaging HTB on the router's r1 and a
    /// test-side nftables rule writing the leaf id into skb->priority.
    @Suite struct TCShaping {
        static let capacity: UInt64 = 100_000  // 100 Mbit
        static let leaf = TCHandle(major: 0x100, minor: 2)
        static let leaf6 = TCHandle(major: 0x100, minor: 3)
        static let ceil: UInt64 = 4000  // 4 Mbit

        @Test(.enabled(if: Shell.isRoot))
        func steeredFlowIsClassifiedIntoItsLeafAndHeldAtCeil() throws {
            try RouterLab.with("sh") { lab in
                let tc = try TrafficControl(namespace: .named(lab.router.name))
                let r1 = try tc.socket.interfaceIndex(named: "r1")
                try tc.ensureSkeleton(ifindex: r1, capacityKbit: Self.capacity)
                try tc.performAll(ifindex: r1, [
                    .addGroup(group: 0x100, prio: 1, rateKbit: 3000, capacityKbit: Self.capacity),
                    .addLeaf(Self.leaf, .init(rateKbit: 2000, ceilKbit: Self.ceil, prio: 1)),
                    .addLeaf(Self.leaf6, .init(rateKbit: 1000, ceilKbit: 2000, prio: 1)),
                ])
                try lab.router.exec(["nft", "-f", "-"], input: """
                table inet aipt {
                  chain steer {
                    type filter hook forward priority 0; policy accept;
                    ip daddr \(RouterLab.anchorV4) udp dport 7000 meta priority set \(Self.leaf)
                    ip6 daddr \(RouterLab.anchorV6) udp dport 7000 meta priority set \(Self.leaf6)
                    ip daddr \(RouterLab.anchorV4) udp dport 7003 meta priority set 100:9
                  }
                }
                """)
                func stats() throws -> [TCHandle: TCStatistics] {
                    Dictionary(uniqueKeysWithValues: try tc.classes(ifindex: r1).map { ($0.handle, $0.statistics) })
                }
                let before = try stats()

                // 12 Mbit/s for 2 s (3x the leaf's ceil), 1000-byte datagrams.
                let receiver = try UDPReceiver(in: lab.anchor, address: RouterLab.anchorV4, port: 7000, idle: 1.0)
                let sent = try lab.sendUDP(to: RouterLab.anchorV4, port: 7000, bitsPerSecond: 12_000_000, seconds: 2)
                // The leaf's queue is full now: change its ceil in place and check nothing was dropped by the change.
                let queued = try #require(try stats()[Self.leaf])
                try tc.changeLeaf(ifindex: r1, Self.leaf, .init(rateKbit: 2000, ceilKbit: Self.ceil, prio: 1))
                let afterChange = try #require(try stats()[Self.leaf])
                let got = try receiver.finish()
                let after = try stats()

                let leafStats = try #require(after[Self.leaf])
                let leafPackets = leafStats.packets - (before[Self.leaf]?.packets ?? 0)
                let bestEffortPackets = (after[AIPagingHTB.bestEffortClass]?.packets ?? 0) - (before[AIPagingHTB.bestEffortClass]?.packets ?? 0)
                let groupPackets = (after[AIPagingHTB.groupClass(0x100)]?.packets ?? 0) - (before[AIPagingHTB.groupClass(0x100)]?.packets ?? 0)
                // HTB meters L2 frames: 1000 B payload + 8 UDP + 20 IP + 14 Ethernet.
                let wireBits = Double(got.packets) * 1042 * 8
                let mbit = got.seconds > 0 ? wireBits / got.seconds / 1e6 : 0
                print("""
                shaping: sent \(sent) datagrams at 12 Mbit/s for 2 s; anchor got \(got.packets) in \(String(format: "%.2f", got.seconds)) s \
                = \(String(format: "%.2f", mbit)) Mbit/s on the wire (ceil \(Double(Self.ceil) / 1000) Mbit/s); \
                leaf \(Self.leaf): \(leafPackets) pkts, \(leafStats.drops) drops, \(leafStats.overlimits) overlimits; \
                group a1:100: \(groupPackets) pkts; a1:2: \(bestEffortPackets) pkts; \
                queue at change: \(queued.queueLength) → \(afterChange.queueLength) pkts, drops \(queued.drops) → \(afterChange.drops)
                """)
                let tcText = try TCTextClass.load(lab.router, dev: "r1")
                #expect(tcText["100:2"].map { $0.sentPackets >= leafPackets } == true)
                #expect(tcText["100:2"].map { $0.dropped > 0 } == true)  // 3x ceil: the pfifo overflowed

                // Classified into the leaf (and its group), not best effort.
                #expect(leafPackets == UInt64(got.packets))
                #expect(groupPackets >= leafPackets)
                #expect(bestEffortPackets < 50)  // only ND/MLD noise
                #expect(leafPackets + leafStats.drops >= UInt64(sent) - 5)
                // Held near the ceil.
                #expect(mbit > 0.7 * Double(Self.ceil) / 1000 && mbit < 1.3 * Double(Self.ceil) / 1000)
                // The in-place change kept the queued packets: no drop from it, queue not emptied.
                #expect(queued.queueLength > 100)
                #expect(afterChange.queueLength > 0)
                #expect(afterChange.drops == queued.drops)

                // Unsteered traffic (port 7001, no priority) goes to a1:2, not the leaf.
                let be0 = try stats()
                let receiver2 = try UDPReceiver(in: lab.anchor, address: RouterLab.anchorV4, port: 7001, idle: 0.5)
                let sent2 = try lab.sendUDP(to: RouterLab.anchorV4, port: 7001, bitsPerSecond: 800_000, seconds: 0.5)
                let got2 = try receiver2.finish()
                let be1 = try stats()
                let beDelta = (be1[AIPagingHTB.bestEffortClass]?.packets ?? 0) - (be0[AIPagingHTB.bestEffortClass]?.packets ?? 0)
                print("unsteered: sent \(sent2), received \(got2.packets), a1:2 +\(beDelta) pkts, leaf +\((be1[Self.leaf]?.packets ?? 0) - (be0[Self.leaf]?.packets ?? 0))")
                #expect(beDelta >= UInt64(sent2))
                #expect(be1[Self.leaf]?.packets == be0[Self.leaf]?.packets)

                // IPv6: the same root filter (protocol all) sends priority 100:3 to a1:100, then 100:3.
                let receiver3 = try UDPReceiver(in: lab.anchor, address: RouterLab.anchorV6, port: 7000, idle: 0.5)
                let sent3 = try lab.sendUDP(to: RouterLab.anchorV6, port: 7000, bitsPerSecond: 400_000, seconds: 0.5)
                let got3 = try receiver3.finish()
                let v6 = try stats()
                let v6Leaf = (v6[Self.leaf6]?.packets ?? 0) - (be1[Self.leaf6]?.packets ?? 0)
                print("ipv6 steered: sent \(sent3), received \(got3.packets), leaf \(Self.leaf6) +\(v6Leaf) pkts")
                #expect(v6Leaf == UInt64(got3.packets))
                #expect(got3.packets >= sent3 - 2)

                // Steered to a leaf that does not exist (100:9): dropped by G:'s empty direct queue,
                // not served ahead of the group's leases.
                func groupQdiscDrops() throws -> UInt64 {
                    try tc.qdiscs(ifindex: r1).first { $0.handle == AIPagingHTB.groupQdisc(0x100) }?.statistics.drops ?? 0
                }
                let drops0 = try groupQdiscDrops()
                let receiver4 = try UDPReceiver(in: lab.anchor, address: RouterLab.anchorV4, port: 7003, idle: 0.5, timeout: 2)
                let sent4 = try lab.sendUDP(to: RouterLab.anchorV4, port: 7003, bitsPerSecond: 400_000, seconds: 0.5)
                let got4 = try receiver4.finish()
                let drops1 = try groupQdiscDrops()
                print("stale leaf 100:9: sent \(sent4), received \(got4.packets), qdisc 100: drops +\(drops1 - drops0)")
                #expect(got4.packets == 0)
                #expect(drops1 - drops0 == UInt64(sent4))
            }
        }
    }
}

import AIPagingTestSupport
import Foundation
import Testing
import AIPagingKernel
import AIPagingCore

/// Printed, not asserted: the cost of the conntrack operations with ~0, 1 000 and 50 000
/// entries in the table. Entries are real (UDP sent from the namespace through an nft `ct`
/// rule, UDP timeout raised to 600 s). `swift test -c release --filter Benchmark`.
extension Live {
    /// Runs only with AIP_BENCH=1 (scripts/bench-kernel): benchmarks are not part of `swift test`.
    @Suite(.enabled(if: benchmarksEnabled)) struct ConntrackBenchmark {
        static let mark: UInt32 = 0xa100_0005

        /// 20 marked flows and 20 unmarked classifier flows per family.
        static func flows(_ ns: TestNamespace) throws {
            try ns.exec(["python3", "-c", """
            import socket
            for fam, dst in ((socket.AF_INET, '198.18.5.2'), (socket.AF_INET6, '2001:db8:5::2')):
                for i in range(20):
                    for port in (9000, 7000):
                        s = socket.socket(fam, socket.SOCK_DGRAM); s.sendto(b'x', (dst, port)); s.close()
            """])
        }

        @Test(.enabled(if: Shell.isRoot), arguments: [0, 1000, 50_000])
        func conntrackCosts(bulk: Int) throws {
            try withNamespace("bct") { ns in
                try ns.sh("""
                set -e
                sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
                ip link add d0 type veth peer name d1 && ip link set d0 up && ip link set d1 up
                ip addr add 198.18.5.1/24 dev d0 && ip addr add 2001:db8:5::1/64 dev d0 nodad
                M=$(cat /sys/class/net/d1/address)
                ip neigh replace 198.18.5.2 lladdr $M dev d0 nud permanent
                ip neigh replace 2001:db8:5::2 lladdr $M dev d0 nud permanent
                ip route add 198.19.0.0/16 via 198.18.5.2
                echo 'table inet t { chain o { type filter hook output priority 0; udp dport 9000 ct mark set \(Self.mark)
                }
                }' | nft -f -
                sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600
                """)
                if bulk > 0 {
                    try ns.exec(["python3", "-c", """
                    import socket
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    for i in range(\(bulk)):
                        s.sendto(b'x', ('198.19.%d.%d' % (i // 250, i % 250 + 1), 5000))
                    """])
                }
                try Self.flows(ns)
                let ct = try ConntrackSocket(namespace: .named(ns.name))
                var count = 0
                let list = try measure { count = try ct.entries().count }
                let buckets = (try? String(contentsOfFile: "/proc/sys/net/netfilter/nf_conntrack_buckets", encoding: .utf8)) ?? "?"

                let flushHit = try measure { try ct.deleteEntries(markedWith: Self.mark) }
                #expect(try ct.entries(mark: Self.mark).isEmpty)
                var flushMiss: [Double] = []
                for _ in 0..<5 { flushMiss.append(try measure { try ct.deleteEntries(markedWith: Self.mark) }) }

                let c4 = ConntrackClassifier(client: IPAddress("198.18.5.1")!, service: IPAddress("198.18.5.2")!,
                                             protocolNumber: ConntrackTuple.udp, servicePort: 7000)
                let c6 = ConntrackClassifier(client: IPAddress("2001:db8:5::1")!, service: IPAddress("2001:db8:5::2")!,
                                             protocolNumber: ConntrackTuple.udp, servicePort: 7000)
                var r4 = ConntrackDeleteResult(method: .dumpAndDelete, deleted: nil)
                let v4Flush = try measure { r4 = try ct.deleteUnsteeredEntries(of: c4) }
                #expect(try ct.entries(of: c4).isEmpty)
                var r6 = ConntrackDeleteResult(method: .dumpAndDelete, deleted: nil)
                let v6Dump = try measure { r6 = try ct.deleteUnsteeredEntries(of: c6) }
                #expect(r6.deleted == 20)
                var v4Miss: [Double] = [], v6Miss: [Double] = []
                for _ in 0..<5 {
                    v4Miss.append(try measure { try ct.deleteUnsteeredEntries(of: c4) })
                    v6Miss.append(try measure { try ct.deleteUnsteeredEntries(of: c6) })
                }
                try Self.flows(ns)
                var r4d = ConntrackDeleteResult(method: .dumpAndDelete, deleted: nil)
                let v4Dump = try measure { r4d = try ct.deleteUnsteeredEntries(of: c4, method: .dumpAndDelete) }
                #expect(r4d.deleted == 20)
                func mean(_ a: [Double]) -> Double { a.reduce(0, +) / Double(a.count) }
                print("""
                BENCH conntrack \(count) entries in the namespace (hash table: \(buckets.trimmingCharacters(in: .whitespacesAndNewlines)) buckets, shared by all namespaces):
                BENCH conntrack   list (dump + parse): \(fmtMillis(list))
                BENCH conntrack   flush by mark, 40 matches (v4+v6): \(fmtMillis(flushHit)); no match: \(fmtMillis(mean(flushMiss)))
                BENCH conntrack   classifier v4 \(r4.method), 20 matches: \(fmtMillis(v4Flush)); no match: \(fmtMillis(mean(v4Miss)))
                BENCH conntrack   classifier v4 forced dumpAndDelete, 20 matches: \(fmtMillis(v4Dump))
                BENCH conntrack   classifier v6 \(r6.method), 20 matches: \(fmtMillis(v6Dump)); no match: \(fmtMillis(mean(v6Miss)))
                """)
            }
        }
    }
}

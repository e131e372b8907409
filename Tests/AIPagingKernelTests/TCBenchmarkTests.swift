import AIPagingTestSupport
import Foundation
import Testing
import AIPagingKernel
import AIPagingCore

/// Printed, not asserted. Run alone for stable figures:
/// `swift test -c release --filter Benchmark`.
/// The big cases (10 000 and 60 000 leases, flat 8 000) need AIP_BENCH_FULL=1 or take ~1 min.
extension Live {
    /// Runs only with AIP_BENCH=1 (scripts/bench-kernel): benchmarks are not part of `swift test`.
    @Suite(.enabled(if: benchmarksEnabled)) struct TCBenchmark {
        static let full = ProcessInfo.processInfo.environment["AIP_BENCH_FULL"] != nil
        static let capacity: UInt64 = 10_000_000

        struct Stats: CustomStringConvertible {
            var samples: [Double]
            var mean: Double { samples.reduce(0, +) / Double(max(samples.count, 1)) }
            func pct(_ p: Double) -> Double {
                let s = samples.sorted()
                return s.isEmpty ? 0 : s[min(s.count - 1, Int(Double(s.count) * p))]
            }
            var description: String {
                "mean \(fmtMicros(mean)), p50 \(fmtMicros(pct(0.5))), p99 \(fmtMicros(pct(0.99))) (n=\(samples.count))"
            }
        }

        func timed(_ n: Int, _ body: (Int) throws -> Void) rethrows -> Stats {
            var s: [Double] = []
            s.reserveCapacity(n)
            for i in 0..<n { s.append(try measure { try body(i) }) }
            return Stats(samples: s)
        }

        /// Fills `layout` with `count` leases (prio i % 4), sending group and leaf adds in
        /// batches and each group's final rate once.
        func fill(_ tc: TrafficControl, _ ifindex: Int32, _ layout: inout HTBLayout, count: Int) throws -> Double {
            var ops: [TCOperation] = []
            ops.reserveCapacity(count + count / 64)
            for i in 0..<count {
                let p = HTBClassParameters(rateKbit: 64 + UInt64(i % 1000), ceilKbit: 10_000, prio: UInt8(i % 4))
                ops += try layout.add(p).operations.filter { if case .changeGroup = $0 { return false } else { return true } }
            }
            for (g, prio, rate, _) in layout.groupSummary {
                ops.append(.changeGroup(group: g, prio: prio, rateKbit: rate, capacityKbit: layout.capacityKbit))
            }
            return try measure { try tc.performAll(ifindex: ifindex, ops) }
        }

        @Test(.enabled(if: Shell.isRoot))
        func skeletonCreation() throws {
            try withNamespace("bsk") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                var create: [Double] = [], remove: [Double] = [], ensure: [Double] = []
                for _ in 0..<50 {
                    create.append(try measure { try tc.ensureSkeleton(ifindex: v0, capacityKbit: Self.capacity) })
                    ensure.append(try measure { try tc.ensureSkeleton(ifindex: v0, capacityKbit: Self.capacity) })
                    remove.append(try measure { try tc.removeSkeleton(ifindex: v0) })
                }
                print("BENCH skeleton: create (qdisc dump + BPF load + 4 requests in one sendmsg) \(Stats(samples: create))")
                print("BENCH skeleton: ensure on existing root (2 dumps + 2 class changes) \(Stats(samples: ensure))")
                print("BENCH skeleton: remove (dump + delete) \(Stats(samples: remove))")
            }
        }

        @Test(.enabled(if: Shell.isRoot), arguments: [0, 1000, 10_000, 60_000])
        func leafAddDeleteGrouped(leases: Int) throws {
            if leases >= 10_000 && !Self.full { print("BENCH grouped \(leases): skipped (set AIP_BENCH_FULL=1)"); return }
            try withNamespace("bgr") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                try tc.ensureSkeleton(ifindex: v0, capacityKbit: Self.capacity)
                var layout = HTBLayout(capacityKbit: Self.capacity)
                let fillTime = try fill(tc, v0, &layout, count: leases)
                let n = 300
                var added: [TCHandle] = []
                var single: [Double] = []
                // One lease = one perform: [addLeaf, changeGroup] (or [addGroup, addLeaf]) in one sendmsg.
                let addStats = try timed(n) { i in
                    let (leaf, ops) = try layout.add(HTBClassParameters(rateKbit: 100, ceilKbit: 1000, prio: UInt8(i % 4)))
                    added.append(leaf)
                    try tc.performAll(ifindex: v0, ops)
                }
                // A bare RTM_NEWTCLASS (no group rate update): change of an existing leaf is
                // cheap, so measure the add itself on fresh minors of a new group.
                let g = AIPagingHTB.groupRange.upperBound
                try tc.addGroup(ifindex: v0, group: g, prio: 0, rateKbit: 1000, capacityKbit: Self.capacity)
                for m in 0..<250 {
                    single.append(try measure {
                        try tc.addLeaf(ifindex: v0, TCHandle(major: g, minor: UInt16(2 + m)), .init(rateKbit: 8, ceilKbit: 64, prio: 0))
                    })
                }
                let changeStats = try timed(n) { i in
                    try tc.changeLeaf(ifindex: v0, added[i], .init(rateKbit: 200, ceilKbit: 2000, prio: UInt8(i % 4)))
                }
                let delStats = try timed(n) { i in
                    try tc.performAll(ifindex: v0, try layout.remove(added[i]))
                }
                let groups = layout.groupCount
                var listCount = 0
                let list = try measure { listCount = try tc.classes(ifindex: v0).count }
                let oneGroup = try measure { _ = try tc.classes(ifindex: v0, qdisc: AIPagingHTB.groupQdisc(0x100)) }
                let qlist = try measure { _ = try tc.qdiscs(ifindex: v0) }
                // Deleting a full group (256 leaves), oldest groups first: worst case for the kernel's list walk.
                let victims = layout.groupSummary.prefix(5).map(\.group)
                let groupDelete = try timed(victims.count) { i in try tc.deleteGroup(ifindex: v0, group: victims[i]) }
                let teardown = try measure { try tc.removeSkeleton(ifindex: v0) }
                print("""
                BENCH grouped \(leases) leases (\(groups) groups of ≤256): fill \(fmtMillis(fillTime)) \
                (\(leases > 0 ? fmtMicros(fillTime / Double(leases)) : "-")/lease batched)
                BENCH grouped \(leases): lease add [addLeaf+changeGroup] \(addStats)
                BENCH grouped \(leases): bare leaf add (1 RTM_NEWTCLASS) \(Stats(samples: single))
                BENCH grouped \(leases): leaf change \(changeStats)
                BENCH grouped \(leases): lease delete [deleteLeaf+changeGroup] \(delStats)
                BENCH grouped \(leases): class dump \(listCount) classes \(fmtMillis(list)), one group's classes \(fmtMillis(oneGroup)), qdisc dump \(fmtMillis(qlist))
                BENCH grouped \(leases): delete a full group \(groupDelete); remove root (groups first) \(fmtMillis(teardown))
                """)
            }
        }

        @Test(.enabled(if: Shell.isRoot), arguments: [1000, 8000])
        func leafAddDeleteFlat(leaves: Int) throws {
            if leaves >= 8000 && !Self.full { print("BENCH flat \(leaves): skipped (set AIP_BENCH_FULL=1)"); return }
            try withNamespace("bfl") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                try tc.ensureSkeleton(ifindex: v0, capacityKbit: Self.capacity)
                // Flat: every leaf a1:N directly under a1:1 in the root qdisc.
                let p = HTBClassParameters(rateKbit: 100, ceilKbit: 1000, prio: 1)
                let fillOps = (0..<leaves).map { TCOperation.addLeaf(TCHandle(major: 0xa1, minor: UInt16(3 + $0)), p) }
                let fillTime = try measure { try tc.performAll(ifindex: v0, fillOps) }
                let n = 300
                let base = 3 + leaves
                let add = try timed(n) { i in try tc.addLeaf(ifindex: v0, TCHandle(major: 0xa1, minor: UInt16(base + i)), p) }
                let del = try timed(n) { i in try tc.deleteLeaf(ifindex: v0, TCHandle(major: 0xa1, minor: UInt16(base + i))) }
                print("""
                BENCH flat \(leaves) leaves in a1: fill \(fmtMillis(fillTime)) (\(fmtMicros(fillTime / Double(leaves)))/leaf batched)
                BENCH flat \(leaves): leaf add \(add)
                BENCH flat \(leaves): leaf delete \(del)
                """)
                try tc.removeSkeleton(ifindex: v0)
            }
        }

        /// The same 1 000 leaf adds (8 groups × 125) and deletes, as 1 000 request+ACK round trips
        /// or as one `perform` batch, from the same starting state (empty groups) each round.
        @Test(.enabled(if: Shell.isRoot))
        func batchingVersusOneByOne() throws {
            try withNamespace("bba") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                try tc.ensureSkeleton(ifindex: v0, capacityKbit: Self.capacity)
                let groups: [UInt16] = Array(0x100..<0x108)
                try tc.performAll(ifindex: v0, groups.map { .addGroup(group: $0, prio: 1, rateKbit: 1000, capacityKbit: Self.capacity) })
                let p = HTBClassParameters(rateKbit: 100, ceilKbit: 1000, prio: 1)
                let leaves = groups.flatMap { g in (0..<125).map { TCHandle(major: g, minor: UInt16(2 + $0)) } }
                let adds = leaves.map { TCOperation.addLeaf($0, p) }
                let deletes = leaves.map { TCOperation.deleteLeaf($0) }
                var r = (addOne: [Double](), addBatch: [Double](), delOne: [Double](), delBatch: [Double]())
                for _ in 0..<3 {
                    r.addOne.append(try measure { for op in adds { try tc.performAll(ifindex: v0, [op]) } } / 1000)
                    r.delOne.append(try measure { for op in deletes { try tc.performAll(ifindex: v0, [op]) } } / 1000)
                    r.addBatch.append(try measure { try tc.performAll(ifindex: v0, adds) } / 1000)
                    r.delBatch.append(try measure { try tc.performAll(ifindex: v0, deletes) } / 1000)
                }
                func best(_ a: [Double]) -> String { fmtMicros(a.min() ?? 0) }
                print("""
                BENCH batching 1000 leaf adds: one request+ACK each \(best(r.addOne))/op, one perform (4 sendmsg of ≤256) \(best(r.addBatch))/op (best of 3)
                BENCH batching 1000 leaf deletes: one each \(best(r.delOne))/op, batched \(best(r.delBatch))/op (best of 3)
                """)
            }
        }
    }
}

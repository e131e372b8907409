import AIPagingTestSupport
import Foundation
import Testing
import AIPagingKernel
import AIPagingCore

/// Pure tests: no kernel.
@Suite struct TCHandleAndLayoutTests {
    @Test func handleFormsAndDescriptions() {
        #expect(TCHandle(major: 0xa1, minor: 2).description == "a1:2")
        #expect(TCHandle(major: 0x100, minor: 0).description == "100:")
        #expect(TCHandle.root.description == "root")
        #expect(TCHandle(rawValue: 0x0100_0002) == TCHandle(major: 0x100, minor: 2))
        #expect(TCHandle(major: 0x100, minor: 2).rawValue == 0x0100_0002)
        #expect(AIPagingHTB.groupClass(0x1ab) == TCHandle(major: 0xa1, minor: 0x1ab))
    }

    @Test func layoutFillsGroupsPerPrioAndKeepsGroupRates() throws {
        var layout = HTBLayout(capacityKbit: 100_000, groupCapacity: 3)
        let p1 = HTBClassParameters(rateKbit: 100, ceilKbit: 1000, prio: 1)
        let (a, opsA) = try layout.add(p1)
        #expect(a == TCHandle(major: 0x100, minor: 2))
        #expect(opsA == [.addGroup(group: 0x100, prio: 1, rateKbit: 100, capacityKbit: 100_000), .addLeaf(a, p1)])
        let (b, opsB) = try layout.add(p1)
        #expect(b == TCHandle(major: 0x100, minor: 3))
        #expect(opsB == [.addLeaf(b, p1), .changeGroup(group: 0x100, prio: 1, rateKbit: 200, capacityKbit: 100_000)])
        // Another prio gets its own group.
        let p5 = HTBClassParameters(rateKbit: 50, ceilKbit: 500, prio: 5)
        let (c, _) = try layout.add(p5)
        #expect(c == TCHandle(major: 0x101, minor: 2))
        _ = try layout.add(p1)  // 100:4, group 100 full
        let (e, opsE) = try layout.add(p1)
        #expect(e == TCHandle(major: 0x102, minor: 2))
        #expect(opsE.first == .addGroup(group: 0x102, prio: 1, rateKbit: 100, capacityKbit: 100_000))
        // Removing frees the slot; the lowest group with room is used again.
        #expect(try layout.remove(b) == [.deleteLeaf(b), .changeGroup(group: 0x100, prio: 1, rateKbit: 200, capacityKbit: 100_000)])
        let (f, _) = try layout.add(p1)
        #expect(f == b)
        // Rate change in place; prio change moves the lease.
        let (same, opsSame) = try layout.change(a, to: HTBClassParameters(rateKbit: 300, ceilKbit: 1000, prio: 1))
        #expect(same == a)
        #expect(opsSame == [.changeLeaf(a, HTBClassParameters(rateKbit: 300, ceilKbit: 1000, prio: 1)),
                            .changeGroup(group: 0x100, prio: 1, rateKbit: 500, capacityKbit: 100_000)])
        let (moved, opsMoved) = try layout.change(c, to: HTBClassParameters(rateKbit: 50, ceilKbit: 500, prio: 1))
        #expect(moved == TCHandle(major: 0x102, minor: 3))
        #expect(opsMoved.contains(.deleteGroup(group: 0x101)))  // c was group 101's only lease
        #expect(layout.leaseCount == 5)
        // Last lease of a group deletes the group; group numbers are reused.
        #expect(try layout.remove(e) == [.deleteLeaf(e), .changeGroup(group: 0x102, prio: 1, rateKbit: 50, capacityKbit: 100_000)])
        #expect(try layout.remove(moved) == [.deleteGroup(group: 0x102)])
        let (g, _) = try layout.add(p5)
        #expect(g.major == 0x101)
        #expect(throws: KernelError.self) { try layout.remove(TCHandle(major: 0x999, minor: 2)) }
        #expect(throws: KernelError.self) { try layout.add(HTBClassParameters(rateKbit: 10, ceilKbit: 5, prio: 1)) }
        #expect(throws: KernelError.self) { try layout.add(HTBClassParameters(rateKbit: 10, ceilKbit: 50, prio: 8)) }
    }
}

extension Live {
    @Suite struct TCSkeleton {
        static let capacity: UInt64 = 100_000

        /// Expected (parent, rate, ceil, prio) of each class, as the kernel reports parents
        /// (a qdisc's top class has parent "root").
        typealias Expected = [String: (parent: String, rate: UInt64, ceil: UInt64, prio: Int)]

        func check(_ ns: TestNamespace, _ tc: TrafficControl, _ ifindex: Int32, _ expected: Expected,
                   sourceLocation: SourceLocation = #_sourceLocation) throws {
            let api = Dictionary(uniqueKeysWithValues: try tc.classes(ifindex: ifindex).map { ($0.handle.description, $0) })
            let text = try TCTextClass.load(ns, dev: "v0")
            #expect(Set(api.keys) == Set(expected.keys), sourceLocation: sourceLocation)
            #expect(Set(text.keys) == Set(expected.keys), sourceLocation: sourceLocation)
            for (handle, e) in expected {
                let a = try #require(api[handle], sourceLocation: sourceLocation)
                #expect(a.kind == "htb", sourceLocation: sourceLocation)
                #expect(a.parent.description == e.parent, "\(handle) parent", sourceLocation: sourceLocation)
                #expect(a.htb?.rateKbit == e.rate, "\(handle) rate", sourceLocation: sourceLocation)
                #expect(a.htb?.ceilKbit == e.ceil, "\(handle) ceil", sourceLocation: sourceLocation)
                if a.htb?.level == 0 { #expect(a.htb.map { Int($0.prio) } == e.prio, "\(handle) prio", sourceLocation: sourceLocation) }
                let t = try #require(text[handle], sourceLocation: sourceLocation)
                #expect(t.parent == e.parent, "tc: \(handle) parent", sourceLocation: sourceLocation)
                #expect(t.rateKbit == e.rate, "tc: \(handle) rate", sourceLocation: sourceLocation)
                #expect(t.ceilKbit == e.ceil, "tc: \(handle) ceil", sourceLocation: sourceLocation)
                if a.htb?.level == 0 {
                    #expect((t.prio ?? 0) == e.prio, "tc: \(handle) prio", sourceLocation: sourceLocation)
                    #expect(t.quantum.map(UInt32.init) == a.htb?.quantum, "tc: \(handle) quantum", sourceLocation: sourceLocation)
                }
                // tc reads later: router solicitations and MLD reports may have been sent in between.
                #expect(t.sentPackets >= a.statistics.packets, "tc: \(handle) packets", sourceLocation: sourceLocation)
                #expect(t.sentBytes >= a.statistics.bytes, "tc: \(handle) bytes", sourceLocation: sourceLocation)
            }
        }

        @Test(.enabled(if: Shell.isRoot))
        func skeletonGroupsAndLeavesReadBack() throws {
            try withNamespace("tcsk") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                #expect(try tc.socket.interfaceName(index: v0) == "v0")
                let cap = Self.capacity

                #expect(try tc.ensureSkeleton(ifindex: v0, capacityKbit: cap) == .created)
                #expect(try tc.ensureSkeleton(ifindex: v0, capacityKbit: cap) == .updated)  // idempotent

                let leafA = TCHandle(major: 0x100, minor: 2), leafB = TCHandle(major: 0x100, minor: 3)
                let leafC = TCHandle(major: 0x101, minor: 2)
                let warnings = try tc.performAll(ifindex: v0, [
                    .addGroup(group: 0x100, prio: 2, rateKbit: 3000, capacityKbit: cap),
                    .addLeaf(leafA, .init(rateKbit: 2000, ceilKbit: 4000, prio: 2)),
                    .addLeaf(leafB, .init(rateKbit: 1000, ceilKbit: 8000, prio: 2)),
                    .addGroup(group: 0x101, prio: 5, rateKbit: 500, capacityKbit: cap),
                    .addLeaf(leafC, .init(rateKbit: 500, ceilKbit: 1000, prio: 5)),
                ])
                #expect(warnings.isEmpty)

                var expected: Expected = [
                    "a1:1": ("root", cap, cap, 0),
                    "a1:2": ("a1:1", 1000, cap, 7),
                    "a1:100": ("a1:1", 3000, cap, 2),
                    "a1:101": ("a1:1", 500, cap, 5),
                    "100:1": ("root", cap, cap, 0),
                    "100:2": ("100:1", 2000, 4000, 2),
                    "100:3": ("100:1", 1000, 8000, 2),
                    "101:1": ("root", cap, cap, 0),
                    "101:2": ("101:1", 500, 1000, 5),
                ]
                try check(ns, tc, v0, expected)
                let text = try TCTextClass.load(ns, dev: "v0")
                #expect(text["a1:100"]?.leaf == "100:")
                #expect(text["a1:101"]?.leaf == "101:")
                #expect(try tc.classes(ifindex: v0, qdisc: AIPagingHTB.groupQdisc(0x100)).map(\.handle.description).sorted()
                        == ["100:1", "100:2", "100:3"])

                // Qdiscs: through the API and through `tc -j qdisc show`.
                let qdiscs = try tc.qdiscs(ifindex: v0)
                let root = try #require(qdiscs.first { $0.parent == .root })
                #expect(root.isAIPagingRoot)
                #expect(root.htbDefaultClass == AIPagingHTB.bestEffortClass)
                #expect(Set(qdiscs.map { "\($0.kind) \($0.handle) \($0.parent)" })
                        == ["htb a1: root", "htb 100: a1:100", "htb 101: a1:101"])
                struct JQ: Decodable { var kind: String; var handle: String; var parent: String?; var root: Bool? }
                let jq = try JSONDecoder().decode([JQ].self, from: Data(try ns.exec(["tc", "-j", "qdisc", "show", "dev", "v0"]).utf8))
                #expect(Set(jq.map { "\($0.kind) \($0.handle) \($0.root == true ? "root" : $0.parent ?? "?")" })
                        == ["htb a1: root", "htb 100: a1:100", "htb 101: a1:101"])
                let rootText = try ns.exec(["tc", "qdisc", "show", "dev", "v0", "root"])
                #expect(rootText.contains("default 0x2"))
                let groupText = try ns.exec(["tc", "-d", "qdisc", "show", "dev", "v0", "parent", "a1:100"])
                #expect(groupText.contains("direct_qlen 0"))

                // The eBPF filter: through the API and `tc filter show`.
                let filters = try tc.filters(ifindex: v0, parent: AIPagingHTB.rootQdisc)
                #expect(filters.count == 1)
                #expect(filters.first?.isAIPagingFilter == true)
                #expect(filters.first?.protocol == 3)
                let ftext = try ns.exec(["tc", "filter", "show", "dev", "v0", "parent", "a1:"])
                #expect(ftext.contains("protocol all pref 1 bpf"))
                #expect(ftext.contains("handle 0x1 aip_prio2grp"))
                #expect(!ftext.contains("direct-action"))

                // Change in place, delete a leaf, delete a group.
                try tc.changeLeaf(ifindex: v0, leafA, .init(rateKbit: 3000, ceilKbit: 6000, prio: 2))
                try tc.changeGroup(ifindex: v0, group: 0x100, prio: 2, rateKbit: 4000, capacityKbit: cap)
                expected["100:2"] = ("100:1", 3000, 6000, 2)
                expected["a1:100"] = ("a1:1", 4000, cap, 2)
                try check(ns, tc, v0, expected)
                try tc.deleteLeaf(ifindex: v0, leafB)
                try tc.deleteGroup(ifindex: v0, group: 0x101)
                for h in ["100:3", "a1:101", "101:1", "101:2"] { expected[h] = nil }
                try check(ns, tc, v0, expected)
                #expect(try tc.qdiscs(ifindex: v0).count == 2)

                // Capacity update through ensureSkeleton keeps groups and the filter.
                #expect(try tc.ensureSkeleton(ifindex: v0, capacityKbit: 200_000) == .updated)
                expected["a1:1"] = ("root", 200_000, 200_000, 0)
                expected["a1:2"] = ("a1:1", 2000, 200_000, 7)
                try check(ns, tc, v0, expected)

                // Removing the root leaves the device's default qdisc.
                #expect(try tc.removeSkeleton(ifindex: v0))
                #expect(try tc.classes(ifindex: v0).isEmpty)
                #expect(try ns.exec(["tc", "qdisc", "show", "dev", "v0"]).contains("noqueue"))
                #expect(try tc.removeSkeleton(ifindex: v0) == false)
            }
        }

        @Test(.enabled(if: Shell.isRoot))
        func foreignRootIsReportedAndLeftAlone() throws {
            try withNamespace("tcfr") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up && tc qdisc add dev v0 root handle 1: htb")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                let error = try #require(throws: KernelError.self) { try tc.ensureSkeleton(ifindex: v0, capacityKbit: 1000) }
                #expect(error.errno == EEXIST)
                #expect(error.detail.contains("non-aipaging root qdisc htb 1:"))
                #expect(throws: KernelError.self) { try tc.removeSkeleton(ifindex: v0) }
                #expect(try ns.exec(["tc", "qdisc", "show", "dev", "v0"]).contains("qdisc htb 1: root"))
                // Same handle, other kind: still not ours.
                try ns.sh("tc qdisc replace dev v0 root handle a1: tbf rate 1mbit burst 10k latency 50ms")
                #expect(throws: KernelError.self) { try tc.ensureSkeleton(ifindex: v0, capacityKbit: 1000) }
                #expect(throws: KernelError.self) { try tc.removeSkeleton(ifindex: v0) }
                #expect(try ns.exec(["tc", "qdisc", "show", "dev", "v0"]).contains("qdisc tbf a1: root"))
            }
        }

        @Test(.enabled(if: Shell.isRoot))
        func errorsCarryErrnoAndHints() throws {
            try withNamespace("tcer") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                let noRoot = try #require(throws: KernelError.self) {
                    try tc.addGroup(ifindex: v0, group: 0x100, prio: 1, rateKbit: 10, capacityKbit: 1000)
                }
                print("addGroup without root:", noRoot)
                #expect(noRoot.detail.contains("ensureSkeleton"))
                try tc.ensureSkeleton(ifindex: v0, capacityKbit: 1000)
                let noGroup = try #require(throws: KernelError.self) {
                    try tc.addLeaf(ifindex: v0, TCHandle(major: 0x200, minor: 2), .init(rateKbit: 10, ceilKbit: 10, prio: 1))
                }
                print("addLeaf without group:", noGroup)
                #expect(noGroup.detail.contains("add the group first"))
                try tc.addGroup(ifindex: v0, group: 0x100, prio: 1, rateKbit: 10, capacityKbit: 1000)
                let dup = try #require(throws: KernelError.self) {
                    try tc.addGroup(ifindex: v0, group: 0x100, prio: 1, rateKbit: 10, capacityKbit: 1000)
                }
                #expect(dup.errno == EEXIST)
                let missing = try #require(throws: KernelError.self) { try tc.deleteLeaf(ifindex: v0, TCHandle(major: 0x100, minor: 9)) }
                #expect(missing.errno == ENOENT)
                let bad = try #require(throws: KernelError.self) {
                    try tc.addLeaf(ifindex: v0, TCHandle(major: 0x100, minor: 2), .init(rateKbit: 10, ceilKbit: 5, prio: 1))
                }
                #expect(bad.errno == EINVAL)
                let badGroup = try #require(throws: KernelError.self) {
                    try tc.addGroup(ifindex: v0, group: 0x50, prio: 1, rateKbit: 10, capacityKbit: 1000)
                }
                #expect(badGroup.errno == EINVAL)
                let noDev = try #require(throws: KernelError.self) { try tc.qdiscs(ifindex: 9999) }
                print("qdiscs of a missing interface:", noDev)
                #expect(noDev.errno == ENODEV)
                let noName = try #require(throws: KernelError.self) { try tc.socket.interfaceIndex(named: "nope0") }
                #expect(noName.errno == ENODEV)
                // A batch reports per operation; the others are still applied.
                let batch = try tc.perform(ifindex: v0, [
                    .addLeaf(TCHandle(major: 0x100, minor: 2), .init(rateKbit: 10, ceilKbit: 20, prio: 1)),
                    .addLeaf(TCHandle(major: 0x300, minor: 2), .init(rateKbit: 10, ceilKbit: 20, prio: 1)),
                    .addLeaf(TCHandle(major: 0x100, minor: 3), .init(rateKbit: 10, ceilKbit: 20, prio: 1)),
                ])
                #expect(batch.errors.map { $0 == nil } == [true, false, true])
                #expect(Set(try tc.classes(ifindex: v0, qdisc: AIPagingHTB.groupQdisc(0x100)).map(\.handle.description))
                        == ["100:1", "100:2", "100:3"])
            }
        }

        /// Explicit quanta: no "quantum of class … is big/small" warning from 8 kbit to 10 Gbit,
        /// where tc without a quantum gets one.
        @Test(.enabled(if: Shell.isRoot))
        func noQuantumWarnings() throws {
            try withNamespace("tcqw") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                let cap: UInt64 = 40_000_000
                try tc.ensureSkeleton(ifindex: v0, capacityKbit: cap)
                let rates: [UInt64] = [8, 64, 512, 1000, 10_000, 100_000, 1_000_000, 10_000_000]
                var ops: [TCOperation] = [.addGroup(group: 0x100, prio: 3, rateKbit: rates.reduce(0, +), capacityKbit: cap)]
                for (i, r) in rates.enumerated() {
                    ops.append(.addLeaf(TCHandle(major: 0x100, minor: UInt16(2 + i)), .init(rateKbit: r, ceilKbit: r * 2, prio: 3)))
                }
                let result = try tc.perform(ifindex: v0, ops)
                #expect(result.succeeded)
                #expect(result.warnings.isEmpty, "\(result.warnings)")
                let leaves = try tc.classes(ifindex: v0, qdisc: AIPagingHTB.groupQdisc(0x100)).filter { $0.handle.minor >= 2 }
                #expect(leaves.count == rates.count)
                for c in leaves { #expect((1600...200_000).contains(c.htb?.quantum ?? 0)) }
                // Contrast: the same 10 Gbit class through tc without a quantum makes the kernel warn.
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                p.arguments = ["ip", "netns", "exec", ns.name, "tc", "class", "add", "dev", "v0", "parent", "100:1",
                               "classid", "100:ff", "htb", "rate", "10gbit"]
                let err = Pipe()
                p.standardError = err
                p.standardOutput = FileHandle.nullDevice
                try p.run()
                p.waitUntilExit()
                let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                print("tc without quantum:", stderr.trimmingCharacters(in: .whitespacesAndNewlines))
                #expect(stderr.contains("quantum of class"))
            }
        }

        /// HTBLayout drives the kernel: 600 leases over prios, group rates kept equal to the sum
        /// of their leaves, then everything removed group by group down to no root.
        @Test(.enabled(if: Shell.isRoot))
        func layoutDrivesKernel() throws {
            try withNamespace("tcly") { ns in
                try ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up")
                let tc = try TrafficControl(namespace: .named(ns.name))
                let v0 = try tc.socket.interfaceIndex(named: "v0")
                var layout = HTBLayout(capacityKbit: 1_000_000, groupCapacity: 64)
                try tc.ensureSkeleton(ifindex: v0, capacityKbit: layout.capacityKbit)
                var leases: [TCHandle] = []
                var ops: [TCOperation] = []
                for i in 0..<600 {
                    let p = HTBClassParameters(rateKbit: UInt64(100 + i), ceilKbit: 10_000, prio: UInt8(i % 3))
                    let (leaf, o) = try layout.add(p)
                    leases.append(leaf)
                    ops += o
                }
                try tc.performAll(ifindex: v0, ops)
                #expect(layout.groupCount == 12)  // 200 leases per prio, 64 per group
                let classes = Dictionary(uniqueKeysWithValues: try tc.classes(ifindex: v0).map { ($0.handle, $0) })
                for (g, prio, rate, n) in layout.groupSummary {
                    #expect(classes[AIPagingHTB.groupClass(g)]?.htb?.rateKbit == rate)
                    #expect(classes[AIPagingHTB.groupClass(g)]?.htb?.prio == prio)
                    #expect(classes.keys.filter { $0.major == g && $0.minor >= 2 }.count == n)
                }
                for leaf in leases { #expect(classes[leaf]?.htb?.rateKbit == layout.parameters(of: leaf)?.rateKbit) }
                ops = []
                for leaf in leases { ops += try layout.remove(leaf) }
                try tc.performAll(ifindex: v0, ops)
                #expect(layout.isEmpty)
                #expect(try tc.classes(ifindex: v0).map(\.handle.description).sorted() == ["a1:1", "a1:2"])
                #expect(try tc.removeSkeleton(ifindex: v0))
            }
        }
    }
}

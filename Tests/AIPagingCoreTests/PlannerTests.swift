import Testing
@testable import AIPagingCore

/// A tiny "kernel" that applies plans the way the real adapters do, for planner tests.
struct KernelModel {
    var state = KernelState()
    var flushed: [UInt32] = []

    mutating func apply(_ p: PointPlan) {
        flushed += p.flushMarksBefore
        for c in p.tcBefore + p.tcAfter { applyTC(c) }
        for c in p.nft {
            switch c {
            case .addSteer(let cl, let m, let d): precondition(state.steering[cl] == nil); state.steering[cl] = .init(mark: m, deadline: d)
            case .deleteSteer(let cl, _): precondition(state.steering[cl] != nil); state.steering[cl] = nil
            case .addAnchor(let m, let a, let p, let d): precondition(state.anchors[m] == nil); state.anchors[m] = .init(address: a, port: p, deadline: d)
            case .deleteAnchor(let m, _, _): precondition(state.anchors[m] != nil); state.anchors[m] = nil
            case .addQoS(let m, let c, let d): precondition(state.qos[m] == nil); state.qos[m] = .init(classid: c, deadline: d)
            case .deleteQoS(let m, _): precondition(state.qos[m] != nil); state.qos[m] = nil
            }
        }
    }

    mutating func applyTC(_ c: TCChange) {
        switch c {
        case .addSkeleton(let i, let cap): precondition(state.interfaces[i] == nil); state.interfaces[i] = .init(capacityKbit: cap)
        case .setCapacity(let i, let cap): state.interfaces[i]!.capacityKbit = cap
        case .removeSkeleton(let i):
            precondition(state.interfaces[i]?.groups.isEmpty == true, "skeleton removed with groups left")
            state.interfaces[i] = nil
        case .addGroup(let i, let g, let r, _, let p):
            precondition(state.interfaces[i] != nil && state.interfaces[i]!.groups[g] == nil)
            state.interfaces[i]!.groups[g] = .init(rateKbit: r, priority: p)
        case .changeGroup(let i, let g, let r, _, let p):
            precondition(state.interfaces[i]?.groups[g] != nil); state.interfaces[i]!.groups[g] = .init(rateKbit: r, priority: p)
        case .deleteGroup(let i, let g):
            precondition(!(state.interfaces[i]?.leaves.keys.contains { $0 >> 16 == UInt32(g) } ?? false), "group deleted with leaves left")
            state.interfaces[i]!.groups[g] = nil
        case .addLeaf(let i, let cid, let r, let ce, let p):
            precondition(state.interfaces[i]?.groups[UInt16(cid >> 16)] != nil, "leaf added before its group")
            precondition(state.interfaces[i]!.leaves[cid] == nil)
            state.interfaces[i]!.leaves[cid] = .init(rateKbit: r, ceilKbit: ce, priority: p, owner: 0)
        case .changeLeaf(let i, let cid, let r, let ce, let p):
            state.interfaces[i]!.leaves[cid] = .init(rateKbit: r, ceilKbit: ce, priority: p, owner: 0)
        case .deleteLeaf(let i, let cid):
            precondition(state.interfaces[i]?.leaves[cid] != nil); state.interfaces[i]!.leaves[cid] = nil
        }
    }
}

@Suite struct PlannerTests {
    let planner = Planner()

    func planAll(_ t: LeaseTable, _ applied: KernelState) -> PointPlan {
        planner.plan(point: "ep", scope: .everything(point: "ep", table: t, applied: applied), table: t, applied: applied, capacityKbit: 100_000)
    }

    @Test func newLeasePlan() throws {
        var t = LeaseTable()
        let a = try t.admit(Fixture.request(), context: Fixture.context())
        let p = planAll(t, KernelState())
        let l = a.lease
        #expect(p.tcBefore == [
            .addSkeleton(interface: "veth-a", capacityKbit: 100_000),
            .addGroup(interface: "veth-a", major: 0x100, rateKbit: 1000, ceilKbit: 100_000, priority: 1),
            .addLeaf(interface: "veth-a", classid: 0x0100_0002, rateKbit: 1000, ceilKbit: 2000, priority: 1),
        ])
        #expect(p.nft == [
            .addSteer(l.classifier, mark: l.mark, deadline: l.deadline),
            .addAnchor(mark: l.mark, address: IPAddress("198.18.2.2")!, port: 7000, deadline: l.deadline),
            .addQoS(mark: l.mark, classid: 0x0100_0002, deadline: l.deadline),
        ])
        #expect(p.flushUnsteered == [l.classifier])
        #expect(p.tcAfter.isEmpty && p.flushMarksBefore.isEmpty)
        // Applied, the same plan is empty: reconcile is idempotent.
        var k = KernelModel()
        k.apply(p)
        #expect(planAll(t, k.state).isEmpty)
    }

    @Test func revokeRemovesEverythingAndCutsFlows() throws {
        var t = LeaseTable()
        let a = try t.admit(Fixture.request(), context: Fixture.context())
        var k = KernelModel()
        k.apply(planAll(t, k.state))
        var u = LeaseTable.Undo()
        t.end(a.lease.id, .revoked, at: Fixture.now, undo: &u)
        let p = planAll(t, k.state)
        #expect(p.nft == [.deleteSteer(a.lease.classifier, mark: a.lease.mark),
                          .deleteAnchor(mark: a.lease.mark, address: IPAddress("198.18.2.2")!, port: 7000),
                          .deleteQoS(mark: a.lease.mark, classid: 0x0100_0002)])
        // The steering goes in the same transaction: the gate drops the flows until the flush after.
        #expect(p.flushMarksBefore.isEmpty && p.flushMarksAfter == [a.lease.mark])
        #expect(p.tcAfter == [.deleteLeaf(interface: "veth-a", classid: 0x0100_0002), .deleteGroup(interface: "veth-a", major: 0x100),
                              .removeSkeleton(interface: "veth-a")])
        k.apply(p)
        #expect(k.state.isEmpty)
    }

    @Test func relocationSwitchesSteeringInOneTransactionAndKeepsOldState() throws {
        var t = LeaseTable()
        let old = try t.admit(Fixture.request(id: "old", aisi: "s"), context: Fixture.context(iface: "to-edge"))
        t.activate("old", switchedAt: Fixture.now.boot)
        var k = KernelModel()
        k.apply(planAll(t, k.state))
        let new = try t.admit(Fixture.request(id: "new", aisi: "s", anchorID: "cloud-1", anchor: "198.18.3.2", relocates: "old", drainMs: 1000),
                              context: Fixture.context(iface: "to-cloud"))
        let p = planAll(t, k.state)
        let drainDeadline = Fixture.now.boot.adding(milliseconds: 1000).adding(nanoseconds: planner.drainGraceNs)
        // Steering flips to the new mark; the old mark's anchor/qos stay, with the drain as deadline.
        #expect(p.nft.contains(.deleteSteer(old.lease.classifier, mark: old.lease.mark)))
        #expect(p.nft.contains(.addSteer(old.lease.classifier, mark: new.lease.mark, deadline: new.lease.deadline)))
        #expect(p.nft.contains(.addAnchor(mark: new.lease.mark, address: IPAddress("198.18.3.2")!, port: 7000, deadline: new.lease.deadline)))
        #expect(p.nft.contains(.addAnchor(mark: old.lease.mark, address: IPAddress("198.18.2.2")!, port: 7000, deadline: drainDeadline)))
        #expect(!p.nft.contains(.deleteQoS(mark: old.lease.mark, classid: old.lease.qosClass.classid)) || p.nft.contains(.addQoS(mark: old.lease.mark, classid: old.lease.qosClass.classid, deadline: drainDeadline)))
        #expect(p.flushMarksBefore.isEmpty)
        #expect(p.tcAfter.isEmpty)
        // New classes exist before the transaction.
        #expect(p.tcBefore.contains(.addSkeleton(interface: "to-cloud", capacityKbit: 100_000)))
        k.apply(p)
        // Drain end: the old lease is released; its flows are cut and classes removed.
        var u = LeaseTable.Undo()
        t.end("old", .drainEnded, at: Fixture.now, undo: &u)
        let d = planAll(t, k.state)
        #expect(d.flushMarksBefore == [old.lease.mark])
        #expect(d.nft == [.deleteAnchor(mark: old.lease.mark, address: IPAddress("198.18.2.2")!, port: 7000),
                          .deleteQoS(mark: old.lease.mark, classid: old.lease.qosClass.classid)])
        #expect(d.tcAfter.contains(.removeSkeleton(interface: "to-edge")))
        k.apply(d)
        #expect(k.state.steering[old.lease.classifier]?.mark == new.lease.mark)
    }

    @Test func renewalRefreshesTimeoutsWithoutTouchingTheClass() throws {
        var t = LeaseTable()
        _ = try t.admit(Fixture.request(id: "a"), context: Fixture.context())
        t.activate("a", switchedAt: Fixture.now.boot)
        var k = KernelModel()
        k.apply(planAll(t, k.state))
        let r = try t.admit(Fixture.request(id: "a", ttlMs: 90_000), context: Fixture.context())
        let p = planAll(t, k.state)
        #expect(p.tcBefore.isEmpty && p.tcAfter.isEmpty)
        #expect(p.nft.count == 6)   // delete + add of steer, anchor and qos
        #expect(p.nft.contains(.addSteer(r.lease.classifier, mark: r.lease.mark, deadline: r.lease.deadline)))
        #expect(p.flushMarksBefore.isEmpty && p.flushUnsteered.isEmpty)
        k.apply(p)
        // Rates changed: the class changes (and the group's rate), nothing is re-created.
        _ = try t.admit(Fixture.request(id: "a", ttlMs: 90_000, rate: 1500, ceil: 2500), context: Fixture.context())
        let q = planAll(t, k.state)
        #expect(q.tcBefore == [.changeGroup(interface: "veth-a", major: 0x100, rateKbit: 1500, ceilKbit: 100_000, priority: 1),
                               .changeLeaf(interface: "veth-a", classid: 0x0100_0002, rateKbit: 1500, ceilKbit: 2500, priority: 1)])
        #expect(q.nft.isEmpty)
    }

    @Test func resyncRemovesForeignAndRestoresMissing() throws {
        var t = LeaseTable()
        let a = try t.admit(Fixture.request(), context: Fixture.context())
        var k = KernelModel()
        k.apply(planAll(t, k.state))
        // Someone deletes our anchor element and adds steering without a lease.
        k.state.anchors[a.lease.mark] = nil
        let foreign = Classifier(client: IPAddress("198.18.1.77")!, service: IPAddress("198.18.100.10")!, proto: .tcp, port: 80)
        k.state.steering[foreign] = .init(mark: Layout.markPrefix | 99, deadline: Fixture.now.boot.adding(milliseconds: 5000))
        let p = planAll(t, k.state)
        #expect(p.nft.contains(.addAnchor(mark: a.lease.mark, address: IPAddress("198.18.2.2")!, port: 7000, deadline: a.lease.deadline)))
        #expect(p.nft.contains(.deleteSteer(foreign, mark: Layout.markPrefix | 99)))
        k.apply(p)
        #expect(planAll(t, k.state).isEmpty)
    }

    /// Property: after any sequence of commits, renewals, relocations, revokes, expiries and
    /// failed installs (rolled back), applying the incremental plans leaves the kernel equal to
    /// the desired state of the whole table; no class or element exists without a live lease,
    /// class ids are never shared, and a full resync has nothing to do.
    @Test(arguments: 0..<12)
    func randomHistoriesKeepKernelEqualToLeases(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        var t = LeaseTable(groupSize: 4)
        var k = KernelModel()
        var now = Fixture.now
        let clients = (1...12).map { "198.18.1.\($0)" }
        let anchors = [("edge-1", "198.18.2.2", "to-edge"), ("cloud-1", "198.18.3.2", "to-cloud")]
        var counter = 0
        for _ in 0..<300 {
            counter += 1
            var scope = Scope()
            var undo: LeaseTable.Undo?
            switch rng.next() % 10 {
            case 0...3:
                let anchor = anchors[Int(rng.next() % 2)]
                let req = Fixture.request(id: "l\(counter)", aisi: "a\(rng.next() % 5)", client: clients[Int(rng.next() % 12)],
                                          anchorID: anchor.0, anchor: anchor.1, ttlMs: 1000 + rng.next() % 5000,
                                          rate: 100 + rng.next() % 900, ceil: 2000, prio: UInt8(rng.next() % 3))
                if let a = try? t.admit(req, context: Fixture.context(now: now, capacity: 1_000_000, iface: anchor.2)) {
                    scope.add(a.lease); undo = a.undo
                }
            case 4:
                let live = t.leases.values.filter { $0.state == .active }.sorted { $0.id < $1.id }
                if let old = live.randomElement(using: &rng) {
                    let anchor = anchors[Int(rng.next() % 2)]
                    let req = Fixture.request(id: "l\(counter)", aisi: old.aisi, client: old.classifier.client.description,
                                              anchorID: anchor.0, anchor: anchor.1, ttlMs: 3000, relocates: old.id, drainMs: rng.next() % 800)
                    if let a = try? t.admit(req, context: Fixture.context(now: now, capacity: 1_000_000, iface: anchor.2)) {
                        scope.add(a.lease); scope.add(old); undo = a.undo
                    }
                }
            case 5:
                let live = t.leases.values.filter { $0.state == .active }.sorted { $0.id < $1.id }
                if let l = live.randomElement(using: &rng) {
                    var r = l.request
                    r.lifetime = .ttl(milliseconds: 2000 + rng.next() % 3000)
                    r.qos = QoSBinding(rateKbit: 100 + rng.next() % 900, ceilKbit: 2000, priority: UInt8(rng.next() % 3))
                    if let a = try? t.admit(r, context: Fixture.context(now: now, capacity: 1_000_000, iface: l.qosClass.interface)) {
                        scope.add(l); scope.add(a.lease); undo = a.undo
                    }
                }
            case 6:
                if let l = t.leases.values.sorted(by: { $0.id < $1.id }).randomElement(using: &rng) {
                    var u = LeaseTable.Undo()
                    t.end(l.id, .revoked, at: now, undo: &u)
                    scope.add(l)
                }
            default:
                now.boot = now.boot.adding(milliseconds: 50 + rng.next() % 700)
                now.wall = now.wall.adding(milliseconds: 1)
                for l in t.due(at: now.boot) {
                    var u = LeaseTable.Undo()
                    let ev: LeaseEvent = l.state == .draining && (l.drainEndsAt ?? l.deadline) < l.deadline ? .drainEnded : .expired
                    t.end(l.id, ev, at: now, undo: &u)
                    scope.add(l)
                }
            }
            for l in t.leases.values where l.state == .admitted { t.activate(l.id, switchedAt: now.boot) }
            // Sometimes the kernel refuses: roll back the admission; nothing may remain.
            if let u = undo, rng.next() % 8 == 0 {
                for id in u.touchedLeaseIDs { if let l = t[id] { scope.add(l) } }
                t.rollback(u)
                for id in u.touchedLeaseIDs { if let l = t[id] { scope.add(l) } }
            }
            let p = planner.plan(point: "ep", scope: scope, table: t, applied: k.state, capacityKbit: 100_000)
            k.apply(p)

            let full = planAll(t, k.state)
            #expect(full.isEmpty, "incremental plans left drift: \(full)")
            // No element or class without a live lease.
            let idx = t.index("ep")
            for (m, _) in k.state.anchors { #expect(idx?.byMark[m] != nil) }
            for (name, i) in k.state.interfaces {
                for cid in i.leaves.keys {
                    #expect(idx?.byClass[QoSClassRef(interface: name, major: UInt16(cid >> 16), minor: UInt16(cid & 0xffff))] != nil)
                }
                #expect(!i.groups.isEmpty, "a skeleton without leases on \(name)")
            }
            #expect(k.state.leafCount == t.liveCount)
            #expect(Set(t.leases.values.map(\.qosClass)).count == t.liveCount)
            // The counts kept per state are the leases' states.
            var byState: [LeaseState: Int] = [:]
            for l in t.leases.values { byState[l.state, default: 0] += 1 }
            #expect((idx?.leasesByState ?? [:]) == byState)
        }
    }
}

struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct MarkBlocksTests {
    func expand(_ blocks: [MarkBlocks.Block]) -> [UInt32] {
        blocks.flatMap { b in (0..<(Int(~b.mask) + 1)).map { b.value + UInt32($0) } }
    }

    @Test func consecutiveMarksAreAFewBlocks() {
        let p = Layout.markPrefix
        let run = (0x100..<0x140).map { p | UInt32($0) }            // 64, aligned
        #expect(MarkBlocks.cover(run).count == 1)
        #expect(MarkBlocks.cover(run).first?.mask == 0xffff_ffc0)
        let odd = (0x101..<0x141).map { p | UInt32($0) }            // 64, not aligned
        #expect(MarkBlocks.cover(odd).count <= 12)
        #expect(expand(MarkBlocks.cover(odd)).sorted() == odd)
        #expect(MarkBlocks.cover([p | 7]).map(\.mask) == [0xffff_ffff])
        #expect(MarkBlocks.cover([UInt32]()).isEmpty)
    }

    /// The blocks cover exactly the set: no mark outside it (another lease's flows), none missed.
    @Test func blocksCoverExactlyTheSet() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let base = Layout.markPrefix | UInt32.random(in: 0..<0x1000, using: &rng)
            var set = Set<UInt32>()
            for _ in 0..<Int.random(in: 1...80, using: &rng) {
                let start = base &+ UInt32.random(in: 0..<300, using: &rng)
                for k in 0..<UInt32.random(in: 1...40, using: &rng) { set.insert(start &+ k) }
            }
            let blocks = MarkBlocks.cover(set)
            let covered = expand(blocks)
            #expect(covered.count == set.count && Set(covered) == set)
            // (expand lists exactly the marks a block matches)
            for b in blocks { #expect(b.value & ~b.mask == 0) }      // aligned
        }
    }

    /// With free marks (held by no live lease) the blocks may span them, never a live mark, and
    /// are never more than the exact cover's.
    @Test func blocksSpanFreeMarksButNeverALiveOne() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let base = Layout.markPrefix | (UInt32.random(in: 0..<0x100, using: &rng) << 6)
            var live = Set<UInt32>(), ending = Set<UInt32>()
            for k in 0..<UInt32(256) {
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: live.insert(base + k)
                case 1: ending.insert(base + k)
                default: break   // free
                }
            }
            let blocks = MarkBlocks.cover(ending, free: { !live.contains($0) && !ending.contains($0) })
            for m in ending { #expect(blocks.contains { $0.contains(m) }) }
            for m in live { #expect(!blocks.contains { $0.contains(m) }, "live mark \(String(m, radix: 16)) flushed") }
            for b in blocks { #expect(b.value & ~b.mask == 0) }      // aligned
            #expect(blocks.count <= MarkBlocks.cover(ending).count)
        }
        // An unaligned run whose neighbours are free: one block instead of several.
        let p = Layout.markPrefix
        let run = (0x105..<0x10c).map { p | UInt32($0) }
        #expect(MarkBlocks.cover(run).count == 3)   // 0x105, 0x106–0x107, 0x108–0x10b
        #expect(MarkBlocks.cover(run, free: { _ in true }).count == 1)
        #expect(MarkBlocks.cover(run, free: { $0 != p | 0x10c }).count == 2)   // 0x100–0x107, 0x108–0x10b
    }
}

extension PlannerTests {
    /// Leases due within the same 2 ms get marks of one aligned block, however their admissions
    /// interleave with others', so their flush at the deadline is one conntrack walk.
    @Test func leasesDueTogetherShareABlockOfMarksAndEndInOneFlush() throws {
        var t = LeaseTable()
        var k = KernelModel()
        var soon: [Lease] = [], later: [Lease] = []
        for i in 0..<6 {
            soon.append(try t.admit(Fixture.request(id: "s\(i)", client: "198.18.1.\(10 + i)", ttlMs: 300), context: Fixture.context()).lease)
            later.append(try t.admit(Fixture.request(id: "l\(i)", client: "198.18.1.\(50 + i)", ttlMs: 5000), context: Fixture.context()).lease)
        }
        for l in soon + later { t.activate(l.id, switchedAt: Fixture.now.boot) }
        #expect(Set(soon.map { $0.mark >> 4 }).count == 1)
        #expect(Set(later.map { $0.mark >> 4 }).count == 1)
        #expect(soon[0].mark >> 4 != later[0].mark >> 4)
        k.apply(planAll(t, k.state))
        var u = LeaseTable.Undo()
        for l in soon { t.end(l.id, .expired, at: Fixture.now, undo: &u) }
        let p = planAll(t, k.state)
        #expect(Set(p.flushMarksAfter) == Set(soon.map(\.mark)))
        #expect(p.flushBlocksAfter.count == 1)
        for l in later { #expect(!p.flushBlocksAfter.contains { $0.contains(l.mark) }) }
    }
}

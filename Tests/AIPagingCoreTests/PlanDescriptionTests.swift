import Testing
@testable import AIPagingCore

/// The log lines a resync writes for its repairs.
@Suite struct PlanDescriptionTests {
    let c = Classifier(client: IPAddress("198.18.1.2")!, service: IPAddress("198.18.100.10")!, proto: .udp, port: 7000)
    let d = BootInstant(nanoseconds: 1)

    @Test func oneLinePerChangeInApplyOrderWithTheOwningLease() {
        var plan = PointPlan(point: "ep", result: KernelState())
        plan.tcBefore = [.addLeaf(interface: "r-edge", classid: 0x0100_0002, rateKbit: 1000, ceilKbit: 2000, priority: 1)]
        plan.nft = [.addSteer(c, mark: 0xa100_0001, deadline: d),
                    .deleteSteer(c, mark: 0xa100_0777),
                    .addAnchor(mark: 0xa100_0001, address: IPAddress("2001:db8:2::2")!, port: 7000, deadline: d)]
        plan.tcAfter = [.removeSkeleton(interface: "r-cloud")]
        #expect(plan.changeCount == 5)
        let lines = plan.describedChanges { $0 == 0xa100_0001 ? "L1" : nil }
        #expect(lines == [
            "add class 100:2 on r-edge (rate 1000 ceil 2000 kbit/s)",
            "add steering 198.18.1.2 -> 198.18.100.10 udp/7000 mark 0xa1000001 (lease L1)",
            "delete steering 198.18.1.2 -> 198.18.100.10 udp/7000 mark 0xa1000777 (no lease)",
            "add anchor 0xa1000001 -> [2001:db8:2::2]:7000 (lease L1)",
            "remove HTB root a1: from r-cloud",
        ])
    }

    @Test func longPlansAreCut() {
        var plan = PointPlan(point: "ep", result: KernelState())
        plan.nft = (0..<30).map { .deleteQoS(mark: 0xa100_0000 | UInt32($0), classid: 0x0100_0002) }
        let lines = plan.describedChanges(limit: 12)
        #expect(lines.count == 13)
        #expect(lines.last == "... and 18 more")
        #expect(lines.first == "delete qos 0xa1000000 -> class 100:2 (no lease)")
    }
}

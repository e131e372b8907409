import Testing
@testable import AIPagingAgent
@testable import AIPagingCore

/// Evidence sessions refer to one interned copy of what leases share (point, anchor, QoS, class
/// interface); the pool counts its users and forgets a binding when its last session goes.
@Suite struct BindingPoolTests {
    static func key(anchor: String = "198.18.2.2", rate: UInt64 = 1000) -> ExporterLoop.Binding.Key {
        .init(point: "ep", anchor: Anchor(id: "edge-1", address: IPAddress(anchor)!, port: 7000),
              qos: QoSBinding(rateKbit: rate, ceilKbit: 2000, priority: 1), interface: "veth-a")
    }

    @Test func equalBindingsAreSharedAndDroppedWithTheirLastUser() {
        var pool = ExporterLoop.BindingPool()
        let a = pool.acquire(Self.key())
        let b = pool.acquire(Self.key())
        let c = pool.acquire(Self.key(rate: 5000))
        let d = pool.acquire(Self.key(anchor: "2001:db8::2"))
        #expect(a === b && a !== c && a !== d && c !== d)
        #expect(a.users == 2 && c.users == 1 && pool.bindings.count == 3)
        pool.release(a)
        #expect(pool.bindings.count == 3 && b.users == 1)
        pool.release(b)
        pool.release(c)
        #expect(pool.bindings.count == 1)
        // A later lease with the first key gets a fresh binding with the same facts.
        let e = pool.acquire(Self.key())
        #expect(e !== a && e.key == a.key && e.users == 1)
        pool.release(d)
        pool.release(e)
        #expect(pool.bindings.isEmpty)
    }
}

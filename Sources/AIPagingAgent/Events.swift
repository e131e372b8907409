import AIPagingCore
import Synchronization

/// A lease lifecycle event: admission, switch, drain end, expiry, revoke, renewal, repair.
/// Carries the lease ids, the AISI, the anchors and both clocks.
public struct LifecycleEvent: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// A new lease's kernel state was installed (it steers its classifier).
        case admitted
        /// A relocation: steering of the AISI switched atomically from `previous` to `lease`.
        case switched
        /// A live lease got a new deadline (and maybe new rates).
        case renewed
        /// A draining lease's drain ended; its state is gone.
        case drained
        case expired
        case revoked
        /// The agent found the kernel differing from its leases and repaired it.
        case repaired
    }

    public var seq: UInt64
    public var kind: Kind
    public var leaseID: LeaseID
    public var aisi: AISI
    public var enforcementPoint: String
    public var anchor: Anchor
    public var qos: QoSBinding
    /// For `switched`: the lease (and its anchor) that was replaced; for `drained`: the successor.
    public var relatedLease: LeaseID?
    public var relatedAnchor: Anchor?
    public var boot: BootInstant
    public var wall: WallTime
    public var detail: JSON.Object

    public var json: JSON {
        var o = JSON.Object()
        o["seq"] = .int(seq)
        o["event"] = .string(kind.rawValue)
        o["lease_id"] = .string(leaseID)
        o["aisi"] = .string(aisi)
        o["enforcement_point"] = .string(enforcementPoint)
        o["anchor"] = anchor.json
        o["qos"] = qos.json
        if let relatedLease { o["related_lease_id"] = .string(relatedLease) }
        if let relatedAnchor { o["related_anchor"] = relatedAnchor.json }
        o["monotonic_ns"] = .int(boot.nanoseconds)
        o["time"] = .string(wall.rfc3339)
        for (k, v) in detail.pairs { o[k] = v }
        return .object(o)
    }
}

/// Fan-out of lifecycle events to live subscribers (`GET /v1/events`) plus a bounded history
/// so a subscriber can start from a sequence number.
public final class EventBus: Sendable {
    private struct State {
        var nextSeq: UInt64 = 1
        var history: Ring<LifecycleEvent>
        var subscribers: [UInt64: AsyncStream<LifecycleEvent>.Continuation] = [:]
        var nextSubscriber: UInt64 = 0
    }
    private let state: Mutex<State>
    public let historyLimit: Int

    public init(historyLimit: Int = 10_000) {
        self.historyLimit = historyLimit
        state = Mutex(State(history: Ring(capacity: historyLimit)))
    }

    /// Assigns the sequence number, records and delivers the event.
    @discardableResult
    public func publish(_ make: (UInt64) -> LifecycleEvent) -> LifecycleEvent {
        state.withLock { s in
            let e = make(s.nextSeq)
            s.nextSeq += 1
            s.history.append(e)
            for c in s.subscribers.values { c.yield(e) }
            return e
        }
    }

    /// Events after `seq` still in the history.
    public func history(after seq: UInt64 = 0) -> [LifecycleEvent] {
        state.withLock { s in s.history.filter { $0.seq > seq } }
    }

    /// A stream of events: first those after `seq` from the history, then live ones.
    public func subscribe(after seq: UInt64? = nil) -> AsyncStream<LifecycleEvent> {
        let (stream, cont) = AsyncStream<LifecycleEvent>.makeStream(bufferingPolicy: .bufferingNewest(100_000))
        let id = state.withLock { s -> UInt64 in
            if let seq { for e in s.history where e.seq > seq { cont.yield(e) } }
            let id = s.nextSubscriber
            s.nextSubscriber += 1
            s.subscribers[id] = cont
            return id
        }
        cont.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Ends every subscription (shutdown).
    public func finishAll() {
        let subs = state.withLock { s -> [AsyncStream<LifecycleEvent>.Continuation] in
            let c = Array(s.subscribers.values)
            s.subscribers = [:]
            return c
        }
        for c in subs { c.finish() }
    }

    public var lastSeq: UInt64 { state.withLock { $0.nextSeq - 1 } }
}

/// A fixed-capacity FIFO that overwrites its oldest element: O(1) append, in-order iteration.
struct Ring<Element>: Sequence {
    private var storage: [Element] = []
    private var start = 0
    let capacity: Int

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    var count: Int { storage.count }

    mutating func append(_ e: Element) {
        if storage.count < capacity {
            storage.append(e)
        } else {
            storage[start] = e
            start = (start + 1) % capacity
        }
    }

    func makeIterator() -> AnyIterator<Element> {
        var i = 0
        let n = storage.count, s = storage, st = start
        return AnyIterator {
            guard i < n else { return nil }
            defer { i += 1 }
            return s[(st + i) % n]
        }
    }
}

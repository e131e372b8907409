/// What the Session-Sender knows about one STAMP session: every probe sent (by sequence number,
/// with its send time and the measurement window it belongs to) and what became of it. Pure
/// bookkeeping; the agent's prober feeds it send and receive times.
///
/// **Loss in each direction** comes from the two sequence numbers of a stateful reflector
/// (RFC 8762 §4.3.1: the reflector numbers the packets it reflects in the session, starting at 0).
/// Between two consecutive replies (s1, r1) and (s2, r2) the sender lost `s2 - s1 - 1` probes;
/// the reflector reflected `r2 - r1 - 1` of them, so `(s2 - s1) - (r2 - r1)` were lost on the way
/// to the reflector and `(r2 - r1) - 1` on the way back. Which of the lost probes of one gap went
/// which way is not knowable; the split is by count. A stateless reflector reflects the sender's
/// sequence number, so its losses have no direction (`lostUnknown`).
///
/// **Two-way delay** per reply is `(T4 - T1) - (T3 - T2)` with T1/T4 on the sender's clock and
/// T2/T3 on the reflector's: the clock offset between the hosts cancels.
///
/// A probe with no reply when its window is finalized (window end plus the probe timeout) and no
/// later reply to resolve it counts as lost in an unknown direction; a reply that arrives after
/// that is counted as `late` in the window open at its arrival.
public struct ProbeLedger: Sendable {
    public enum ReflectorMode: String, Sendable {
        /// RFC 8762 stateful: the reflector keeps its own per-session sequence number.
        case stateful
        /// RFC 8762 stateless: the reflector echoes the sender's sequence number.
        case stateless
    }

    enum State: UInt8, Sendable { case pending, received, lostForward, lostBackward, lostUnknown }

    /// (Fields ordered widest first: 24 bytes a slot instead of 32.)
    struct Entry: Sendable {
        var sentNs: Int64 = 0
        var window: Int64 = -1
        var seq: UInt32 = 0
        var state: State = .pending
        var valid = false
    }

    /// Per-window tallies, filled while probes of the window are sent and answered.
    public struct WindowStats: Sendable, Equatable {
        public var sent = 0
        public var received = 0
        public var lostForward = 0
        public var lostBackward = 0
        public var lostUnknown = 0
        /// Replies to a probe already answered.
        public var duplicates = 0
        /// Replies that arrived after a later probe's reply (counted as received).
        public var reordered = 0
        /// Replies that arrived after their probe's window was finalized (not in any delay).
        public var late = 0
        /// Two-way delays (ns) of the window's received probes, in sequence order.
        public var delaysNs: [Int64] = []
        /// Sequence numbers matching `delaysNs` (for the jitter of consecutive probes).
        var delaySeqs: [UInt32] = []
        public init() {}

        public var lost: Int { lostForward + lostBackward + lostUnknown }

        /// Adds another window's tallies and delays (for a record that covers several windows).
        public mutating func merge(_ o: WindowStats) {
            sent += o.sent
            received += o.received
            lostForward += o.lostForward
            lostBackward += o.lostBackward
            lostUnknown += o.lostUnknown
            duplicates += o.duplicates
            reordered += o.reordered
            late += o.late
            delaysNs += o.delaysNs
            delaySeqs += o.delaySeqs
        }

        /// Mean absolute difference of the two-way delays of consecutive received probes (IPDV,
        /// RFC 5481 §1.2), in ns; nil with fewer than two replies.
        public var jitterNs: Double? {
            guard delaysNs.count >= 2 else { return nil }
            let order = delaySeqs.indices.sorted { Int32(bitPattern: delaySeqs[$0] &- delaySeqs[$1]) < 0 }
            var sum = 0.0
            for i in 1..<order.count { sum += Double(abs(delaysNs[order[i]] - delaysNs[order[i - 1]])) }
            return sum / Double(order.count - 1)
        }
    }

    public let mode: ReflectorMode
    /// Probes awaiting their fate, by `seq & mask`. Starts small and doubles (up to
    /// `maxCapacity`) when a probe would overwrite one still pending, so a lease that probes
    /// rarely (e.g. under `max_probe_rate`) holds a few entries, not a window's worth; shrinks
    /// again at a finalize when far fewer are pending (`shrinkIfOversized`).
    private var ring: [Entry]
    private var mask: Int
    private let maxCapacity: Int
    public private(set) var nextSequence: UInt32 = 0
    private var lastReply: (s: UInt32, r: UInt32)?
    private var firstSequence: UInt32 = 0
    /// Open windows (usually one or two: the current one and the one awaiting its timeout), in
    /// a small array rather than a dictionary: a probe's bookkeeping touches no hash table and
    /// copies no tallies.
    private var open: [(window: Int64, stats: WindowStats)] = []

    /// Open windows by index.
    public var windows: [Int64: WindowStats] {
        Dictionary(uniqueKeysWithValues: open.map { ($0.window, $0.stats) })
    }

    /// Position of `window` in `open`, the last one first (the usual case).
    private func slot(_ window: Int64) -> Int? {
        var i = open.count - 1
        while i >= 0 {
            if open[i].window == window { return i }
            i -= 1
        }
        return nil
    }

    /// Position of `window` in `open`, opened if needed.
    private mutating func openSlot(_ window: Int64) -> Int {
        if let i = slot(window) { return i }
        open.append((window, WindowStats()))
        return open.count - 1
    }

    /// `capacity` bounds how many probes can await an answer; it is rounded up to a power of two.
    /// The ring starts at 4 entries (or `capacity`, if smaller; with a capacity of 1 it starts
    /// empty, no heap block until the first probe) and grows on demand: replies come back within
    /// milliseconds, so a probe rarely waits for an answer while more than a few others are sent.
    public init(mode: ReflectorMode, capacity: Int) {
        self.mode = mode
        var c = 1
        while c < capacity { c <<= 1 }
        maxCapacity = max(c, 64)
        let start = min(4, c)
        ring = start == 1 ? [] : [Entry](repeating: Entry(), count: start)
        mask = start - 1
    }

    /// Entries the ring holds now (grows up to the capacity given at init).
    public var ringSize: Int { ring.count }

    /// Doubles the ring; the entries in it are distinct sequence numbers within one ring size of
    /// each other, so each keeps a slot of its own.
    private mutating func grow() {
        var bigger = [Entry](repeating: Entry(), count: ring.count * 2)
        let m = bigger.count - 1
        for e in ring where e.valid { bigger[Int(e.seq) & m] = e }
        ring = bigger
        mask = m
    }

    /// Records that probe `nextSequence` left at `t1` (ns) in window `window`, and returns its
    /// sequence number.
    public mutating func send(at t1: Int64, window: Int64) -> UInt32 {
        let seq = nextSequence
        nextSequence &+= 1
        if ring.isEmpty { ring = [Entry()] }
        var i = Int(seq) & mask
        while ring[i].valid && ring[i].state == .pending && ring.count < maxCapacity {
            grow()
            i = Int(seq) & mask
        }
        if ring[i].valid && ring[i].state == .pending {
            // Overwritten before its fate was known: lost, direction unknown.
            resolve(i, .lostUnknown)
        }
        ring[i] = Entry(sentNs: t1, window: window, seq: seq, state: .pending, valid: true)
        open[openSlot(window)].stats.sent += 1
        return seq
    }

    /// Corrects the send time of a probe (the prober stamps a batch before the send call and
    /// corrects each probe's time once the call returns).
    public mutating func correctSendTime(_ seq: UInt32, to t1: Int64) {
        let i = Int(seq) & mask
        if !ring.isEmpty && ring[i].valid && ring[i].seq == seq { ring[i].sentNs = t1 }
    }

    /// Forgets the probes sent at or after `t` (ns): the measured interval ended before they left
    /// (e.g. the lease's kernel state, its HTB class included, was being removed), so they count
    /// as neither sent, received nor lost. Returns how many were forgotten.
    @discardableResult
    public mutating func withdraw(sentAtOrAfter t: Int64) -> Int {
        var n = 0
        for i in ring.indices where ring[i].valid && ring[i].sentNs >= t {
            forget(i)
            n += 1
        }
        return n
    }

    /// Forgets probe `seq` (it never left: the send call did not get to it).
    public mutating func withdraw(sequence seq: UInt32) {
        let i = Int(seq) & mask
        if !ring.isEmpty && ring[i].valid && ring[i].seq == seq { forget(i) }
    }

    private mutating func forget(_ i: Int) {
        defer { ring[i].valid = false }
        guard let k = slot(ring[i].window) else { return }
        switch ring[i].state {
        case .pending: break
        case .received:
            open[k].stats.received -= 1
            if let j = open[k].stats.delaySeqs.lastIndex(of: ring[i].seq) {
                open[k].stats.delaysNs.remove(at: j)
                open[k].stats.delaySeqs.remove(at: j)
            }
        case .lostForward, .lostBackward, .lostUnknown: unresolve(i)
        }
        open[k].stats.sent -= 1
    }

    /// The send time of a probe still in the ledger.
    public func sendTime(_ seq: UInt32) -> Int64? {
        let i = Int(seq) & mask
        return !ring.isEmpty && ring[i].valid && ring[i].seq == seq ? ring[i].sentNs : nil
    }

    public enum ReplyOutcome: Equatable, Sendable {
        /// A first reply to a known probe, with its two-way delay.
        case delay(ns: Int64, window: Int64)
        case duplicate
        /// A reply after its window was finalized.
        case late
        /// Not a probe of this session (or long forgotten).
        case unknown
    }

    /// Processes a reply: `reply` as decoded, `t4` the receive time on the sender's clock (ns),
    /// `currentWindow` the window open now (where late and duplicate replies are counted).
    public mutating func receive(_ reply: STAMPReflectorPacket, at t4: Int64, currentWindow: Int64) -> ReplyOutcome {
        let s = reply.senderSequence
        let i = Int(s) & mask
        guard !ring.isEmpty, ring[i].valid, ring[i].seq == s else { return .unknown }
        // Sequence numbers are compared in a window of 2^31 around the last reply (wrapping).
        let entry = ring[i]
        switch entry.state {
        case .received:
            open[openSlot(currentWindow)].stats.duplicates += 1
            return .duplicate
        case .pending, .lostForward, .lostBackward, .lostUnknown:
            let wasLost = entry.state != .pending
            guard slot(entry.window) != nil else {
                // The window is already final: the probe stays counted as lost there.
                open[openSlot(currentWindow)].stats.late += 1
                ring[i].state = .received
                return .late
            }
            if wasLost { unresolve(i) }
            ring[i].state = .received
            let d = reply.twoWayDelayNanoseconds(sentAt: entry.sentNs, receivedAt: t4)
            let k = slot(entry.window)!
            open[k].stats.received += 1
            open[k].stats.delaysNs.append(d)
            open[k].stats.delaySeqs.append(s)
            if wasLost { open[k].stats.reordered += 1 }
            if !wasLost { attributeGap(upTo: s, reflectorSequence: reply.sequence) }
            return .delay(ns: d, window: entry.window)
        }
    }

    /// After an in-order reply (s, r): the probes between the previous reply and this one that
    /// are still pending are lost; their directions follow from the two sequence numbers.
    private mutating func attributeGap(upTo s: UInt32, reflectorSequence r: UInt32) {
        let prev: (s: UInt32, r: UInt32)
        if let lastReply {
            guard Int32(bitPattern: s &- lastReply.s) > 0 else { return }   // an older probe: reordered
            prev = lastReply
        } else {
            // Before the first reply: as if a reply (first - 1, -1) had come.
            prev = (firstSequence &- 1, UInt32.max)
        }
        lastReply = (s, r)
        let ds = Int(s &- prev.s)
        guard ds > 1 else { return }
        var forward = 0
        var directionKnown = false
        if mode == .stateful {
            let dr = Int(Int32(bitPattern: r &- prev.r))
            if dr >= 1 && dr <= ds {
                forward = ds - dr
                directionKnown = true
            }
            // Otherwise the reflector restarted (its counter went back) or is stateless: unknown.
        }
        var seq = prev.s &+ 1
        while seq != s {
            let i = Int(seq) & mask
            if ring[i].valid && ring[i].seq == seq && ring[i].state == .pending {
                if !directionKnown {
                    resolve(i, .lostUnknown)
                } else if forward > 0 {
                    resolve(i, .lostForward)
                    forward -= 1
                } else {
                    resolve(i, .lostBackward)
                }
            }
            seq &+= 1
        }
    }

    private mutating func resolve(_ i: Int, _ state: State) {
        ring[i].state = state
        guard let k = slot(ring[i].window) else { return }
        switch state {
        case .lostForward: open[k].stats.lostForward += 1
        case .lostBackward: open[k].stats.lostBackward += 1
        case .lostUnknown: open[k].stats.lostUnknown += 1
        case .pending, .received: break
        }
    }

    private mutating func unresolve(_ i: Int) {
        guard let k = slot(ring[i].window) else { return }
        switch ring[i].state {
        case .lostForward: open[k].stats.lostForward -= 1
        case .lostBackward: open[k].stats.lostBackward -= 1
        case .lostUnknown: open[k].stats.lostUnknown -= 1
        case .pending, .received: break
        }
    }

    /// Closes `window`: its probes still pending are lost (direction unknown) and its tallies are
    /// returned and forgotten. Call it once the probe timeout has passed after the window's end.
    public mutating func finalize(window: Int64) -> WindowStats {
        guard let k = slot(window) else { return WindowStats() }
        var stats = open.remove(at: k).stats
        // A lease probed rarely (`max_probe_rate` shared by many leases) has no open window most
        // of the time: give the array's buffer back (~200 bytes a session) instead of keeping it.
        if open.isEmpty { open = [] }
        // Pending probes of this window: scan the ring (probes of one window are contiguous).
        for i in ring.indices where ring[i].valid && ring[i].window == window && ring[i].state == .pending {
            ring[i].state = .lostUnknown
            stats.lostUnknown += 1
        }
        shrinkIfOversized()
        return stats
    }

    /// Shrinks the ring to what its pending probes need (at least 4 slots), when that is a quarter
    /// of its size or less: a lease whose probes went unanswered for a while, or whose probe rate
    /// fell as leases were added (`max_probe_rate` is shared), would otherwise keep a window's
    /// worth of slots for good. It keeps the newest entries that fit; the older ones are resolved
    /// and only served to tell a late or duplicate reply from an unknown one.
    private mutating func shrinkIfOversized() {
        guard ring.count > 4 else { return }
        // Pending probes lie in [oldest pending, nextSequence): they need that many slots.
        var need = 0
        for e in ring where e.valid && e.state == .pending {
            need = max(need, Int(nextSequence &- e.seq))
        }
        var size = 4
        while size < need { size <<= 1 }
        guard size * 4 <= ring.count else { return }
        var smaller = [Entry](repeating: Entry(), count: size)
        let m = size - 1
        for e in ring where e.valid {
            let age = Int(nextSequence &- e.seq)   // 1 for the newest probe
            if age >= 1 && age <= size { smaller[Int(e.seq) & m] = e }
        }
        ring = smaller
        mask = m
    }

    /// Windows with probes or replies that are not finalized yet.
    public var openWindows: [Int64] { open.map(\.window).sorted() }

    /// Windows the ledger has room for without allocating (for tests of its footprint).
    var openCapacity: Int { open.capacity }
}

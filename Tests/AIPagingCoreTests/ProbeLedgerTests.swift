import Testing
@testable import AIPagingCore

/// The sender's bookkeeping of a STAMP session: loss in each direction from the sender's and the
/// reflector's sequence numbers, two-way delay, reordering, duplicates, late replies.
@Suite struct ProbeLedgerTests {
    static let t0: Int64 = 1_795_000_000_000_000_000

    /// A reflector packet answering probe `s` as the `r`-th reflected, with `rtt` ns of path delay
    /// and `residence` ns spent in a reflector whose clock is `offset` ns off.
    func reply(_ s: UInt32, _ r: UInt32, sentAt t1: Int64, rtt: Int64 = 2_000_000, residence: Int64 = 100_000,
               offset: Int64 = 123_456_789) -> (STAMPReflectorPacket, Int64) {
        let t2 = t1 + rtt / 2 + offset
        let t3 = t2 + residence
        let t4 = t1 + rtt + residence
        let p = STAMPReflectorPacket(sequence: r, timestamp: NTPTimestamp(unixNanoseconds: t3), errorEstimate: STAMPErrorEstimate(raw: 1),
                                     ssid: 1, receiveTimestamp: NTPTimestamp(unixNanoseconds: t2), senderSequence: s,
                                     senderTimestamp: NTPTimestamp(unixNanoseconds: t1), senderErrorEstimate: STAMPErrorEstimate(raw: 1),
                                     senderTTL: 64)
        return (p, t4)
    }

    func sendTen(_ l: inout ProbeLedger) -> [Int64] {
        (0..<10).map { i in
            let t = Self.t0 + Int64(i) * 100_000_000
            _ = l.send(at: t, window: 0)
            return t
        }
    }

    @Test func lossInEachDirectionFromTheTwoSequenceNumbers() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        let t = sendTen(&l)
        // The reflector saw 0,1,3,4,6,7,8,9 (2 and 5 lost on the way there) and numbered them
        // 0...7; the replies to 4 (r=3) and 8 (r=6) were lost on the way back.
        for (s, r) in [(0, 0), (1, 1), (3, 2), (6, 4), (7, 5), (9, 7)] as [(UInt32, UInt32)] {
            let (p, t4) = reply(s, r, sentAt: t[Int(s)])
            #expect(l.receive(p, at: t4, currentWindow: 0) == .delay(ns: 2_000_000, window: 0))
        }
        let w = l.finalize(window: 0)
        #expect(w.sent == 10 && w.received == 6)
        #expect(w.lostForward == 2 && w.lostBackward == 2 && w.lostUnknown == 0)
        #expect(w.delaysNs.allSatisfy { $0 == 2_000_000 })
        #expect(w.jitterNs == 0)
    }

    /// The ledger of a lease that is not probed (capacity 1) holds no ring at all; answers to
    /// probes it never sent are unknown, and if it does send, it works as any other.
    @Test func anUnprobedLedgerHoldsNoRing() {
        var l = ProbeLedger(mode: .stateful, capacity: 1)
        #expect(l.ringSize == 0 && l.sendTime(0) == nil)
        let (p0, t40) = reply(0, 0, sentAt: Self.t0)
        #expect(l.receive(p0, at: t40, currentWindow: 0) == .unknown)
        l.withdraw(sequence: 0)
        l.correctSendTime(0, to: Self.t0)
        #expect(l.finalize(window: 0) == ProbeLedger.WindowStats())
        let s = l.send(at: Self.t0, window: 1)
        #expect(l.ringSize == 1 && l.sendTime(s) == Self.t0)
        let (p, t4) = reply(s, 0, sentAt: Self.t0)
        #expect(l.receive(p, at: t4, currentWindow: 1) == .delay(ns: 2_000_000, window: 1))
        #expect(l.finalize(window: 1).received == 1)
    }

    /// The ring starts at 4 entries and grows only while probes are pending: a session answered
    /// promptly keeps 4; 100 unanswered probes grow it to 128 (not to the capacity) without
    /// losing track of any, and their late replies still resolve every one.
    @Test func theRingGrowsOnlyWithPendingProbes() {
        var quick = ProbeLedger(mode: .stateful, capacity: 1000)
        for i in 0..<200 {
            let t = Self.t0 + Int64(i) * 10_000_000
            let s = quick.send(at: t, window: 0)
            let (p, t4) = reply(s, UInt32(i), sentAt: t)
            #expect(quick.receive(p, at: t4, currentWindow: 0) == .delay(ns: 2_000_000, window: 0))
        }
        #expect(quick.ringSize == 4)
        #expect(quick.finalize(window: 0).received == 200)

        var slow = ProbeLedger(mode: .stateful, capacity: 1000)
        let times = (0..<100).map { i -> Int64 in
            let t = Self.t0 + Int64(i) * 10_000_000
            _ = slow.send(at: t, window: 0)
            return t
        }
        #expect(slow.ringSize == 128)
        for (i, t) in times.enumerated() {
            let (p, t4) = reply(UInt32(i), UInt32(i), sentAt: t)
            #expect(slow.receive(p, at: t4, currentWindow: 0) == .delay(ns: 2_000_000, window: 0))
        }
        let w = slow.finalize(window: 0)
        #expect(w.sent == 100 && w.received == 100 && w.lostUnknown == 0)

        // At the capacity the oldest pending probe is given up as lost (direction unknown).
        var full = ProbeLedger(mode: .stateful, capacity: 64)
        for i in 0..<65 { _ = full.send(at: Self.t0 + Int64(i), window: 0) }
        #expect(full.ringSize == 64)
        #expect(full.windows[0]?.lostUnknown == 1)
    }

    /// A ring grown by unanswered probes shrinks back once a window is finalized and few are
    /// pending: to what the pending probes need (here the next window's 10), keeping the newest
    /// entries, so a late reply to a recent probe is still counted late and pending probes still
    /// get their delay. A ring without pending probes goes back to 4 slots.
    @Test func theRingShrinksAfterAFinalizeToWhatItsPendingProbesNeed() {
        var l = ProbeLedger(mode: .stateful, capacity: 1000)
        for i in 0..<100 { _ = l.send(at: Self.t0 + Int64(i) * 10_000_000, window: 0) }
        #expect(l.ringSize == 128)
        let next = (0..<10).map { i -> (UInt32, Int64) in
            let t = Self.t0 + 1_000_000_000 + Int64(i) * 10_000_000
            return (l.send(at: t, window: 1), t)
        }
        #expect(l.finalize(window: 0).lostUnknown == 100)
        #expect(l.ringSize == 16, "10 pending probes need 16 slots")
        let (late, t4late) = reply(104, 104, sentAt: Self.t0 + 1_040_000_000, rtt: 1_000_000)
        #expect(l.receive(late, at: t4late, currentWindow: 1) == .delay(ns: 1_000_000, window: 1))
        let (old, t4old) = reply(99, 99, sentAt: Self.t0 + 990_000_000)
        #expect(l.receive(old, at: t4old, currentWindow: 1) == .late, "probe 99 is among the 16 newest: kept")
        let (older, t4older) = reply(50, 50, sentAt: Self.t0 + 500_000_000)
        #expect(l.receive(older, at: t4older, currentWindow: 1) == .unknown, "probe 50 was forgotten with the old slots")
        for (s, t) in next where s != 104 {
            let (p, t4) = reply(s, s, sentAt: t)
            #expect(l.receive(p, at: t4, currentWindow: 1) == .delay(ns: 2_000_000, window: 1))
        }
        let w = l.finalize(window: 1)
        #expect(w.sent == 10 && w.received == 10 && w.late == 1)
        #expect(l.ringSize == 4, "nothing pending: back to 4 slots")
        // And it grows again when probes go unanswered.
        for i in 0..<20 { _ = l.send(at: Self.t0 + 3_000_000_000 + Int64(i), window: 3) }
        #expect(l.ringSize == 32)
        #expect(l.windows[3]?.lostUnknown == 0)
    }

    /// A lease probed rarely holds no window storage between its probes: finalizing its last
    /// open window gives the buffer back, and the next probe opens a new one.
    @Test func noOpenWindowHoldsNoWindowStorage() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        let s0 = l.send(at: Self.t0, window: 0)
        _ = l.send(at: Self.t0 + 1_000_000_000, window: 1)
        #expect(l.openCapacity >= 2)
        let (p, t4) = reply(s0, 0, sentAt: Self.t0)
        #expect(l.receive(p, at: t4, currentWindow: 1) == .delay(ns: 2_000_000, window: 0))
        #expect(l.finalize(window: 0).received == 1)
        #expect(l.openCapacity >= 1, "window 1 is still open")
        #expect(l.finalize(window: 1).lostUnknown == 1)
        #expect(l.openCapacity == 0 && l.openWindows.isEmpty)
        _ = l.send(at: Self.t0 + 7_000_000_000, window: 7)
        #expect(l.openWindows == [7])
        #expect(l.finalize(window: 7).sent == 1)
    }

    /// Probes sent after the measured interval ended (a lease's kernel state being removed) are
    /// forgotten whatever became of them: answered, lost, or still pending.
    @Test func probesAfterTheEndAreWithdrawn() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        let t = sendTen(&l)
        // 0...5 answered in order (r = s), 6 lost on the way there (7 answered as r=6), 8 and 9 pending.
        for s in [0, 1, 2, 3, 4, 5, 7] {
            let (p, t4) = reply(UInt32(s), UInt32(min(s, 6)), sentAt: t[s])
            _ = l.receive(p, at: t4, currentWindow: 0)
        }
        // The interval ended at probe 6's send time: 6...9 are withdrawn.
        #expect(l.withdraw(sentAtOrAfter: t[6]) == 4)
        let w = l.finalize(window: 0)
        #expect(w.sent == 6 && w.received == 6 && w.lost == 0 && w.delaysNs.count == 6)
        // A reply to a withdrawn probe is not one of the session's.
        let (p, t4) = reply(8, 7, sentAt: t[8])
        #expect(l.receive(p, at: t4, currentWindow: 1) == .unknown)
    }

    /// A probe the send call did not get to is withdrawn by sequence number.
    @Test func anUnsentProbeIsWithdrawn() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        _ = sendTen(&l)
        l.withdraw(sequence: 9)
        l.withdraw(sequence: 42)   // not a probe of the ledger: nothing happens
        let w = l.finalize(window: 0)
        #expect(w.sent == 9 && w.lostUnknown == 9)
    }

    @Test func lossBeforeTheFirstReplyIsAttributedToo() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        let t = sendTen(&l)
        // 0 and 1 lost on the way there, 2 reflected (r=0) but lost back; 3 is the first reply (r=1).
        let (p, t4) = reply(3, 1, sentAt: t[3])
        _ = l.receive(p, at: t4, currentWindow: 0)
        for s in 4..<10 {
            let (q, u4) = reply(UInt32(s), UInt32(s - 2), sentAt: t[s])
            _ = l.receive(q, at: u4, currentWindow: 0)
        }
        let w = l.finalize(window: 0)
        #expect(w.lostForward == 2 && w.lostBackward == 1 && w.received == 7)
    }

    @Test func statelessReflectorLossHasNoDirection() {
        var l = ProbeLedger(mode: .stateless, capacity: 64)
        let t = sendTen(&l)
        for s in [0, 1, 4, 5, 9] as [UInt32] {
            let (p, t4) = reply(s, s, sentAt: t[Int(s)])
            _ = l.receive(p, at: t4, currentWindow: 0)
        }
        let w = l.finalize(window: 0)
        #expect(w.received == 5 && w.lostUnknown == 5 && w.lostForward == 0 && w.lostBackward == 0)
    }

    @Test func unansweredTailIsLostAtFinalizeAndALateReplyIsCountedLate() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        let t = sendTen(&l)
        for s in 0..<7 {
            let (p, t4) = reply(UInt32(s), UInt32(s), sentAt: t[s])
            _ = l.receive(p, at: t4, currentWindow: 0)
        }
        let w = l.finalize(window: 0)
        #expect(w.received == 7 && w.lostUnknown == 3)
        let (late, t4) = reply(8, 8, sentAt: t[8], rtt: 3_000_000_000)
        #expect(l.receive(late, at: t4, currentWindow: 1) == .late)
        #expect(l.finalize(window: 1).late == 1)
    }

    @Test func reorderedAndDuplicateReplies() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        let t = sendTen(&l)
        for s in [0, 1, 3, 2, 4, 5, 6, 7, 8, 9] as [UInt32] {
            let (p, t4) = reply(s, s, sentAt: t[Int(s)])
            _ = l.receive(p, at: t4, currentWindow: 0)
        }
        let (dup, t4) = reply(9, 9, sentAt: t[9])
        #expect(l.receive(dup, at: t4, currentWindow: 0) == .duplicate)
        let w = l.finalize(window: 0)
        #expect(w.received == 10 && w.lost == 0 && w.reordered == 1 && w.duplicates == 1)
    }

    @Test func reflectorRestartMakesThatGapDirectionless() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        let t = sendTen(&l)
        for (s, r) in [(0, 0), (1, 1), (2, 2), (5, 0), (6, 1)] as [(UInt32, UInt32)] {   // restarted before 5
            let (p, t4) = reply(s, r, sentAt: t[Int(s)])
            _ = l.receive(p, at: t4, currentWindow: 0)
        }
        let w = l.finalize(window: 0)
        #expect(w.lostUnknown == 2 + 3)   // 3, 4 (gap over the restart) and 7, 8, 9 (no later reply)
        #expect(w.lostForward == 0 && w.lostBackward == 0)
    }

    @Test func windowsAndJitter() {
        var l = ProbeLedger(mode: .stateful, capacity: 64)
        var t: [Int64] = []
        for i in 0..<6 {
            let ts = Self.t0 + Int64(i) * 100_000_000
            t.append(ts)
            _ = l.send(at: ts, window: Int64(i / 3))
        }
        let rtts: [Int64] = [1_000_000, 3_000_000, 2_000_000, 1_000_000, 1_000_000, 1_000_000]
        for s in 0..<6 {
            let (p, t4) = reply(UInt32(s), UInt32(s), sentAt: t[s], rtt: rtts[s])
            _ = l.receive(p, at: t4, currentWindow: 1)
        }
        let w0 = l.finalize(window: 0), w1 = l.finalize(window: 1)
        #expect(w0.sent == 3 && w1.sent == 3)
        #expect(w0.jitterNs == 1_500_000)   // |3-1| and |2-3| ms
        #expect(w1.jitterNs == 0)
        #expect(l.openWindows.isEmpty)
    }
}

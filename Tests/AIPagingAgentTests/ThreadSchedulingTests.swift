@testable import AIPagingAgent
import AIPagingCore
import CAIPagingShim
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The scheduling the agent asks for its threads, read back from the kernel (/proc): the threads
/// controllers wait on get `lease_thread_nice` and a short slice, and do not pass them on to the
/// threads they start; background threads run at nice 10.
@Suite struct ThreadSchedulingTests {
    /// What /proc says of one of our threads: its nice value and, on kernels that show it, its
    /// EEVDF slice (ns).
    struct Seen: Sendable { var nice: Int; var sliceNs: Int?; var policy: Int? }

    static func seen(_ tid: Int32) -> Seen {
        let stat = (try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8)) ?? ""
        // Fields after the comm's closing parenthesis start at field 3 (state); nice is field 19.
        let rest = stat[(stat.lastIndex(of: ")").map { stat.index(after: $0) } ?? stat.startIndex)...]
        let fields = rest.split(separator: " ")
        let nice = fields.count > 16 ? Int(fields[16]) ?? 99 : 99
        let sched = (try? String(contentsOfFile: "/proc/self/task/\(tid)/sched", encoding: .utf8)) ?? ""
        func field(_ name: String) -> Int? {
            sched.split(separator: "\n").first { $0.hasPrefix(name) }
                .flatMap { $0.split(separator: ":").last.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } }
        }
        return Seen(nice: nice, sliceNs: field("se.slice"), policy: field("policy"))
    }

    /// Runs `body` on a new thread (nice 0, the default slice) and then starts a child thread
    /// from it; returns what /proc showed of both.
    static func onThread(_ body: @escaping @Sendable () -> Void) -> (Seen, Seen) {
        let result = Mutex<(Seen, Seen)?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            body()
            let me = seen(aip_gettid())
            let childDone = DispatchSemaphore(value: 0)
            let child = Mutex<Seen?>(nil)
            Thread.detachNewThread {
                child.withLock { $0 = seen(aip_gettid()) }
                childDone.signal()
            }
            childDone.wait()
            result.withLock { $0 = (me, child.withLock { $0 }!) }
            done.signal()
        }
        done.wait()
        return result.withLock { $0 }!
    }

    @Test(.enabled(if: getuid() == 0)) func latencyCriticalThreadsGetTheirNiceAndSliceButDoNotPassThemOn() throws {
        let (me, child) = Self.onThread { ThreadScheduling.enterLatencyCritical(.http) }
        #expect(me.nice == -10)
        #expect(child.nice == 0, "a thread started by a latency-critical one runs at nice 0")
        let status = ThreadScheduling.status["http"]
        #expect(status?["nice"]?.int64Value == -10)
        if let granted = status?["slice_us"]?.int64Value {
            // Linux >= 6.12: the custom slice is in force, and not inherited.
            #expect(granted == 100)
            #expect(me.sliceNs == 100_000)
            #expect(child.sliceNs != 100_000)
        } else {
            #expect(status?["errors"]?.arrayValue?.isEmpty == false, "no slice and no error: \(String(describing: status))")
        }
    }

    @Test func backgroundThreadsRunAtNice10AsBatch() {
        let (me, _) = Self.onThread { ThreadScheduling.enterBackground(.evidenceLog) }
        #expect(me.nice == 10)
        #expect(me.policy == 3, "SCHED_BATCH (3) in /proc/.../sched, got \(String(describing: me.policy))")
        #expect(ThreadScheduling.status["evidence_log"]?["policy"]?.stringValue == "batch")
    }

    @Test func cooperativeYieldYieldsOnlyOnceItsIntervalHasPassed() {
        let t0: UInt64 = 5_000_000
        var y = CooperativeYield(startNs: t0)
        y.check(at: t0 + CooperativeYield.intervalNs - 1)
        #expect(y.yields == 0, "not before the interval has passed")
        y.check(at: t0 + CooperativeYield.intervalNs)
        #expect(y.yields == 1)
        y.check(at: t0 + CooperativeYield.intervalNs + 1)
        #expect(y.yields == 1, "the interval starts again at a yield")
        y.check(at: t0 + 2 * CooperativeYield.intervalNs)
        #expect(y.yields == 2)
    }
}

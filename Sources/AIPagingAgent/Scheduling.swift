import AIPagingCore
import CAIPagingShim
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How the agent's threads ask to be scheduled, and what the kernel granted (`/v1/status`,
/// `scheduling`).
///
/// Controllers wait on the lease service's thread (admissions, revokes), the expiry timer's
/// thread (it wakes the lease thread at a deadline) and the journal's sync thread; the evidence
/// threads are background work. On a 2-vCPU node, scheduler traces of the bench (`perf sched
/// timehist`) showed the lease thread runnable but waiting 2-4 ms while the nice-10 evidence
/// thread finished a burst of user-space work on the same CPU: Linux's EEVDF scheduler lets the
/// running thread keep the CPU until the woken one is both eligible (it has not used more than
/// its weighted share lately) and has the earlier virtual deadline. So the latency-critical
/// threads get
/// - a higher weight (`lease_thread_nice`, default -10; needs CAP_SYS_NICE or RLIMIT_NICE, which
///   the shipped systemd unit grants with `LimitNICE=-10`), so they stay eligible, and
/// - a short custom slice (0.1 ms, Linux >= 6.12), so they preempt on wakeup. A slice is not a
///   priority: the thread gets no more CPU, only sooner. Older kernels ignore it.
/// Both with SCHED_RESET_ON_FORK: threads they start run at nice 0 with the default slice. The
/// background threads (evidence, evidence log, conntrack sweeper) run at nice 10 in SCHED_BATCH
/// (their wakeups never preempt), send probes at most 16 per syscall, and yield the CPU every
/// 0.2 ms of a long loop (`CooperativeYield`). Measured in docs/performance.md.
public enum ThreadScheduling {
    public enum Role: String, Sendable, CaseIterable {
        case lease, expiry, http, journal, evidence
        case evidenceLog = "evidence_log"
        case sweeper
        case journalCompaction = "journal_compaction"
    }

    /// The kernel's minimum custom slice.
    static let sliceNs: UInt64 = 100_000
    static let backgroundNice: Int32 = 10

    struct Outcome: Sendable {
        /// Threads of the role (counted when recorded).
        var threads = 0
        var nice: Int32 = 0
        var sliceNs: UInt64?
        /// The scheduling policy: `normal` (SCHED_OTHER) or `batch` (SCHED_BATCH).
        var policy = "normal"
        var errors: [String] = []
    }

    struct State: Sendable {
        var latencyNice: Int32 = -10
        var outcomes: [Role: Outcome] = [:]
        var warned: Set<String> = []
    }

    static let state = Mutex(State())
    static let logger = Logger(label: "aipaging.sched")

    /// Sets the nice value of the latency-critical threads started from now on (the agent calls
    /// it once, before it starts any; `lease_thread_nice`).
    public static func configure(latencyNice: Int) {
        state.withLock { $0.latencyNice = Int32(clamping: latencyNice) }
    }

    /// Called on a latency-critical thread when it starts.
    static func enterLatencyCritical(_ role: Role) {
        var o = Outcome()
        setNice(state.withLock { $0.latencyNice }, &o)
        // The slice after the nice value: sched_setattr sets both and keeps what is current.
        let s = aip_thread_set_slice(sliceNs)
        if s == 0 {
            o.sliceNs = sliceNs
        } else {
            o.errors.append("slice: " + (s == -EOPNOTSUPP ? "not supported by this kernel (Linux >= 6.12)" : String(cString: strerror(-s))))
        }
        record(role, o)
    }

    /// Called on a background thread (evidence, the conntrack sweeper) when it starts: nice 10
    /// and SCHED_BATCH.
    static func enterBackground(_ role: Role) {
        var o = Outcome()
        setNice(backgroundNice, &o)
        // SCHED_BATCH: the kernel treats the thread as CPU-bound and never lets its wakeup
        // preempt another thread; it keeps the nice value. Unprivileged.
        let b = aip_thread_set_batch()
        if b == 0 { o.policy = "batch" } else { o.errors.append("SCHED_BATCH: \(String(cString: strerror(-b)))") }
        record(role, o)
    }

    /// Sets the calling thread's nice value to `want` and notes in `o` what it got.
    static func setNice(_ want: Int32, _ o: inout Outcome) {
        let r = aip_thread_set_nice(want)
        if r == 0 {
            o.nice = want
        } else {
            o.nice = currentNice()
            o.errors.append("nice \(want): \(String(cString: strerror(-r)))"
                            + (r == -EPERM || r == -EACCES ? " (needs CAP_SYS_NICE or RLIMIT_NICE; systemd: LimitNICE=\(want))" : ""))
        }
    }

    static func currentNice() -> Int32 {
        errno = 0
        let n = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(aip_gettid()))
        return errno == 0 ? n : 0
    }

    static func record(_ role: Role, _ o: Outcome) {
        let newErrors = state.withLock { st -> [String] in
            var cur = o   // the latest thread's outcome, with the role's thread count
            cur.threads = (st.outcomes[role]?.threads ?? 0) + 1
            st.outcomes[role] = cur
            return o.errors.filter { st.warned.insert("\(role.rawValue): \($0)").inserted }
        }
        for e in newErrors { logger.warning("scheduling of the \(role.rawValue) thread: \(e)") }
    }

    /// `/v1/status`'s `scheduling`: per thread role, the nice value and slice in force and why a
    /// request was not granted.
    public static var status: JSON {
        let outcomes = state.withLock { $0.outcomes }
        var o = JSON.Object()
        for role in Role.allCases {
            guard let r = outcomes[role] else { continue }
            var e = JSON.Object()
            e["threads"] = .int(r.threads)
            e["nice"] = .int(Int(r.nice))
            e["slice_us"] = r.sliceNs.map { .int(Int($0 / 1000)) } ?? .null
            e["policy"] = .string(r.policy)
            if !r.errors.isEmpty { e["errors"] = .array(r.errors.map { .string($0) }) }
            o[role.rawValue] = .object(e)
        }
        return .object(o)
    }
}

/// Hands the CPU to waiting threads during a background thread's long stretches of work: at
/// most every `intervalNs` of it, `sched_yield(2)` (which returns at once when nothing else is
/// runnable on the CPU).
///
/// Why: at nice 10 a background thread still keeps its CPU for a whole scheduler slice
/// (EEVDF protects the running thread's slice, ~1.5 ms here) before a woken thread gets it,
/// and on a kernel without preemption (`preempt=none`) for all of a syscall's kernel work.
/// `perf sched timehist` of the bench showed the lease thread's journal sync and the
/// controller's client waiting 1–5 ms behind the evidence threads' window records and the
/// conntrack sweeper. Call `check()` once per item of a long loop; it reads the clock (vDSO)
/// and yields when due.
struct CooperativeYield {
    static let intervalNs: UInt64 = 200_000
    private var lastNs: UInt64
    private(set) var yields = 0

    init(startNs: UInt64 = aip_monotonic_ns()) { lastNs = startNs }

    mutating func check() { check(at: aip_monotonic_ns()) }

    /// `check()` at a given CLOCK_MONOTONIC time (ns). The interval runs from this check: time
    /// the thread spent waiting in the yield counts towards the next one.
    mutating func check(at now: UInt64) {
        if now &- lastNs >= Self.intervalNs {
            sched_yield()
            yields += 1
            lastNs = now
        }
    }
}

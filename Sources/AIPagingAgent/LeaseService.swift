import AIPagingCore
import AIPagingKernel
import CAIPagingShim
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// An enforcement point: a namespace whose nftables table and HTB classes the agent owns.
public struct EnforcementPointConfig: Sendable, Equatable {
    public var name: String
    /// Network namespace name (`/run/netns/NAME`), or nil for the agent's own.
    public var netns: String?
    public var capacityKbit: UInt64
    public init(name: String, netns: String?, capacityKbit: UInt64) {
        self.name = name
        self.netns = netns
        self.capacityKbit = capacityKbit
    }
}

/// What a successful PUT returns.
public struct CommitOutcome: Sendable {
    public var kind: Admission.Kind
    public var lease: Lease
    /// For a relocation: the old lease as it is now (draining).
    public var relocated: Lease?
    /// When the kernel transaction that made the lease effective committed.
    public var switchedAt: ClockReading
    /// From the request's admission to that commit (for a relocation: the atomic switch).
    public var installNanoseconds: UInt64 = 0
}

/// The one place leases change. Every mutation (commit, revoke, expiry, drain end, resync)
/// goes through a queue that `run()` drains in batches: a batch is admitted in the table, planned
/// into one change per enforcement point (one nftables transaction each), applied, and only then
/// answered. Reads (list, show, status) are served directly.
public actor LeaseService {
    /// The service runs on an event loop thread (the agent's, shared with the control server, or
    /// its own), not on the cooperative pool: its netlink syscalls never occupy a pool thread, and
    /// nothing that blocks pool threads can stall admission, expiry or revoke.
    let thread: MultiThreadedEventLoopGroup?
    let loop: any EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }

    struct Point {
        var config: EnforcementPointConfig
        let backend: any EnforcementBackend
        var applied = KernelState()
        var needsResync = true
        /// Verify (and rebuild if needed) the nftables schema before the next resync: set when
        /// someone else touched the table itself, or a resync failed.
        var needsPrepare = false
        /// Why the next resync runs (for its log line): start, drift, a failed apply, ...
        var resyncReason: String?
        var routeCache: [IPAddress: (String, BootInstant)] = [:]
    }

    enum Work {
        case commit(CommitRequest, CheckedContinuation<CommitOutcome, any Error>)
        case revoke(LeaseID, CheckedContinuation<Lease, any Error>)
        case tick
        case resync
        /// Resync the points marked `needsResync` (drift repair); no other point.
        case repair
    }

    public private(set) var table: LeaseTable
    var points: [String: Point] = [:]
    public let defaultPoint: String
    public private(set) var policy: Policy
    /// The same policy, readable without a hop onto the service's executor (the control API
    /// checks peers and signatures before any lease work).
    private let policySnapshot: Mutex<Policy>
    public nonisolated var currentPolicy: Policy { policySnapshot.withLock { $0 } }
    let planner: Planner
    let clock: any AgentClock
    public let events: EventBus
    let logger: Logger
    var deadlines = DeadlineQueue()
    var pending: [Work] = []
    /// A flush of `pending` is queued on the loop (requests arriving meanwhile join its batch).
    var flushScheduled = false
    var stopped = false
    /// Monitors of foreign kernel changes, one per enforcement point (`startWatching`).
    var monitors: [KernelChangeMonitor] = []
    /// Called with the earliest deadline after every batch (the timerfd arms itself there).
    var onDeadlineChange: (@Sendable (BootInstant?) -> Void)?
    /// Called with every lifecycle event and the lease as it is after it (evidence, measurement),
    /// on the service's thread: it must only queue.
    var lifecycleObserver: (@Sendable (LifecycleEvent, Lease) -> Void)?
    /// Admissions, rejections and latencies as they happen.
    var metrics: AgentMetrics?
    public internal(set) var stats = Stats()
    /// Work items since malloc was last trimmed, when the last batch ran and the last trim
    /// (`trimMemoryWhenIdle`).
    var churnSinceTrim = 0
    var lastBatchBoot: BootInstant?
    var lastTrimBoot = BootInstant(nanoseconds: 0)
    /// Durable record of leases (nil: nothing survives a restart, as in unit tests).
    let journal: LeaseJournal?

    public struct Stats: Sendable {
        public var admitted = 0
        public var renewed = 0
        public var relocated = 0
        public var revoked = 0
        public var expired = 0
        public var drained = 0
        public var resyncs = 0
        public var repairs = 0
        /// Reports of kernel changes made by another process (drift), each followed by a resync.
        public var driftReports = 0
        public var batches = 0
        /// malloc trims after bursts, and how long the last one took (ns).
        public var memoryTrims = 0
        public var lastTrimNs: UInt64 = 0
        public var installLatencies = LatencyHistogram()
        public var expiryLateness = LatencyHistogram()
        /// The journal's fdatasync per batch, and how long the lease thread then still waited
        /// for it after its kernel work (the part of it in the install latency).
        public var journalSync = LatencyHistogram()
        public var journalWait = LatencyHistogram()
        /// The lease thread's time on each journal compaction: putting the written snapshot (plus
        /// what was appended meanwhile) in place; at start, the whole compaction.
        public var journalCompaction = LatencyHistogram()
        /// Compactions that failed (the journal then goes on growing; the next is tried
        /// `compactionRetryNs` later).
        public var journalCompactionFailures = 0
    }

    public init(points configs: [EnforcementPointConfig], backends: sending [String: any EnforcementBackend], policy: Policy,
                clock: any AgentClock = SystemClock(), planner: Planner = Planner(), groupSize: Int = Layout.defaultGroupSize,
                events: EventBus = EventBus(), logger: Logger = Logger(label: "aipaging.leases"), loop: (any EventLoop)? = nil,
                journal: sending LeaseJournal? = nil) {
        self.journal = journal
        precondition(!configs.isEmpty, "at least one enforcement point")
        if let loop {
            self.thread = nil
            self.loop = loop
        } else {
            let t = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            self.thread = t
            self.loop = t.next()
            self.loop.execute { ThreadScheduling.enterLatencyCritical(.lease) }
        }
        self.table = LeaseTable(groupSize: groupSize)
        for c in configs {
            guard let b = backends[c.name] else { preconditionFailure("no backend for \(c.name)") }
            points[c.name] = Point(config: c, backend: b)
        }
        self.defaultPoint = configs[0].name
        self.policy = policy
        self.policySnapshot = Mutex(policy)
        self.clock = clock
        self.planner = planner
        self.events = events
        self.logger = logger
    }

    /// Installs the timer callback and arms it at the current earliest deadline.
    public func setDeadlineObserver(_ observer: @escaping @Sendable (BootInstant?) -> Void) {
        onDeadlineChange = observer
        rearm()
    }

    /// Installs the observer of lifecycle events (the evidence log and the measurement exporter).
    public func setLifecycleObserver(_ observer: @escaping @Sendable (LifecycleEvent, Lease) -> Void) {
        lifecycleObserver = observer
    }

    public func setMetrics(_ m: AgentMetrics?) { metrics = m }

    // MARK: public API

    /// Admits a COMMIT and returns once its kernel state exists (or throws a `LeaseError`).
    public func commit(_ request: CommitRequest) async throws -> CommitOutcome {
        guard !stopped else { throw LeaseError(.shuttingDown, "the agent is stopping") }
        endDueLeasesBeforeQueueing()
        return try await withCheckedThrowingContinuation { c in
            pending.append(.commit(request, c))
            scheduleFlush()
        }
    }

    /// Revokes a live lease; returns once its kernel state is gone.
    public func revoke(_ id: LeaseID) async throws -> Lease {
        guard !stopped else { throw LeaseError(.shuttingDown, "the agent is stopping") }
        endDueLeasesBeforeQueueing()
        return try await withCheckedThrowingContinuation { c in
            pending.append(.revoke(id, c))
            scheduleFlush()
        }
    }

    /// Ends the leases already due, in a batch of their own, before a request joins a queue
    /// that already holds requests. The loop that runs the batches also reads the requests:
    /// under load it reads many (each ~40 µs of HTTP and JSON) after each batch before it gets to
    /// the timer's tick, so a deadline that passes meanwhile is met at the next request read
    /// rather than after all of them. Not right after a batch of due leases: requests go next.
    func endDueLeasesBeforeQueueing() {
        guard !pending.isEmpty, !lastBatchOnlyEndedDueLeases, let d = earliestDeadline(), d <= clock.now().boot else { return }
        processPending()
    }

    /// Asks the service to end due leases now (the timer thread calls this).
    public nonisolated func tick() {
        loop.execute { [self] in self.assumeIsolated { $0.enqueue(.tick) } }
    }

    func enqueue(_ w: Work) {
        pending.append(w)
        scheduleFlush()
    }

    /// Queues one processing of `pending` on the service's loop, after the work already queued
    /// there: requests that arrive in the meantime join the same batch (one nftables transaction).
    func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        loop.execute { [self] in
            self.assumeIsolated { s in
                s.flushScheduled = false
                if s.stopped { s.failPending(LeaseError(.shuttingDown, "the agent is stopping")) } else { s.processPending() }
            }
        }
    }

    /// Processes due deadlines synchronously (tests with a manual clock call this).
    public func processTick() {
        pending.append(.tick)
        processPending()
    }

    /// Forces a full reconcile of every enforcement point (start, drift, after failures).
    public func requestResync() {
        for k in points.keys {
            points[k]!.needsResync = true
            points[k]!.resyncReason = points[k]!.resyncReason ?? "requested"
        }
        enqueue(.resync)
    }

    // MARK: drift

    /// Starts watching every enforcement point's kernel for changes made by other processes
    /// (see `KernelChangeMonitor`): each report is logged and followed by a resync of that point
    /// alone, which puts back what was altered or deleted and removes what was added without a
    /// lease. The agent's own changes are never reported. Returns the points that could not be
    /// watched, with the reason (the agent still enforces there; only drift repair is missing).
    @discardableResult
    public func startWatching() -> [String: EnforcementError] {
        var failed: [String: EnforcementError] = [:]
        for name in points.keys.sorted() {
            do {
                if let m = try points[name]!.backend.watchForeignChanges({ [self] report in self.kernelChanged(name, report) }) {
                    monitors.append(m)
                }
            } catch {
                failed[name] = error
                logger.error("cannot watch the kernel for changes by other processes; drift will not be repaired until the next restart",
                             metadata: ["point": "\(name)", "error": "\(error.message)"])
            }
        }
        return failed
    }

    /// Called by a monitor thread: hands the report to the service's loop.
    nonisolated func kernelChanged(_ point: String, _ report: KernelChangeMonitor.Report) {
        loop.execute { [self] in self.assumeIsolated { $0.repairDrift(point, report) } }
    }

    func repairDrift(_ point: String, _ report: KernelChangeMonitor.Report) {
        guard !stopped, points[point] != nil else { return }
        stats.driftReports += 1
        var what = report.changes.map(\.description)
        if report.count > report.changes.count { what.append("... \(report.count) notifications in all") }
        if report.lost { what.append("notifications were lost (receive queue overrun)") }
        var meta: Logger.Metadata = ["point": "\(point)", "changes": "\(what.joined(separator: "; "))"]
        if !report.origins.isEmpty { meta["by"] = "\(report.origins.joined(separator: ","))" }
        logger.warning("kernel state of the agent was changed by another process; repairing", metadata: meta)
        points[point]!.needsResync = true
        points[point]!.resyncReason = "drift"
        if report.schema { points[point]!.needsPrepare = true }
        enqueue(.repair)
    }

    public func lease(_ id: LeaseID) -> Lease? { table[id] }

    /// The live leases as they are now, sharing the table's storage until it changes (O(1)).
    public func leaseStore() -> LeaseStore { table.leases }

    public func appliedState(point: String) -> KernelState? { points[point]?.applied }

    public var pointNames: [String] { points.keys.sorted() }

    public func pointConfig(_ name: String) -> EnforcementPointConfig? { points[name]?.config }

    public func updatePolicy(_ p: Policy) {
        policy = p
        policySnapshot.withLock { $0 = p }
    }

    public func counters(point: String) throws -> [UInt32: FlowCounters] {
        guard let p = points[point] else { return [:] }
        do { return try p.backend.counters() } catch { throw error }
    }

    // MARK: lifecycle

    /// Prepares every backend and reconciles the kernel with the (possibly journal-loaded)
    /// lease table before anything is served.
    public func start() throws {
        for name in points.keys.sorted() {
            let p = points[name]!
            do {
                try p.backend.prepare()
            } catch {
                throw EnforcementError(error.cause, "preparing \(name) (\(p.backend.location)): \(error.message)")
            }
            points[name]!.resyncReason = "start"
            _ = resync(name)
            if points[name]!.needsResync {
                throw EnforcementError(.enforcementFailed, "could not reconcile \(name) (\(p.backend.location)) at start")
            }
        }
        rearm()
    }

    /// Stops the run loop; with `flush`, removes every piece of the agent's kernel state.
    public func stop(flush: Bool) {
        stopped = true
        for m in monitors { m.stop() }
        monitors = []
        failPending(LeaseError(.shuttingDown, "the agent is stopping"))
        if flush {
            for name in points.keys.sorted() {
                do {
                    try points[name]!.backend.removeAll()
                    logger.info("removed all kernel state", metadata: ["point": "\(name)"])
                } catch {
                    logger.error("flush on exit failed", metadata: ["point": "\(name)", "error": "\(error)"])
                }
            }
        }
        events.finishAll()
    }

    deinit {
        thread?.shutdownGracefully { _ in }
    }

    func failPending(_ e: LeaseError) {
        let items = pending
        pending = []
        for w in items {
            switch w {
            case .commit(_, let c): c.resume(throwing: e)
            case .revoke(_, let c): c.resume(throwing: e)
            case .tick, .resync, .repair: break
            }
        }
    }

    // MARK: the batch

    struct PendingCommit {
        var request: CommitRequest
        var continuation: CheckedContinuation<CommitOutcome, any Error>
        var admission: Admission
    }

    /// How far past the next deadline a batch may run (an expiry waits for the batch in
    /// progress): when a deadline is near, requests are taken into a batch only as many as end,
    /// at the time recent requests took (`nsPerCommit`, `nsPerRemoval`), by this much after it.
    /// If not even one would, requests may wait for the deadline (the timer's tick at it starts
    /// the next batch; when one goes ahead anyway: `takeBatch`).
    static let lateBudgetNs: UInt64 = 1_000_000
    /// Requests wait for a deadline only if it is at most this far ahead: a stall that inflated
    /// the estimates (one batch that took seconds) cannot hold requests back for longer.
    static let maxHoldNs: UInt64 = 20_000_000
    /// Batch time per commit and per removal (revoke, or a due lease ended in a batch with
    /// requests) in recent batches, moving averages: the kernel work and what the lease service
    /// does around it (admission, journal, answers: a fifth of a commit's time at 10 000 leases
    /// here, which estimates of the kernel work alone left out). Commits and removals differ (at
    /// 100 000 leases a class add took 5–12 ms here, a revoke under 1 ms).
    var nsPerCommit: UInt64 = 100_000
    var nsPerRemoval: UInt64 = 100_000
    /// The last batch only ended due leases: the next one serves requests first, so a stream of
    /// deadlines cannot hold queued requests back (their batch is then held to `lateBudgetNs`).
    var lastBatchOnlyEndedDueLeases = false
    /// When the background compaction's snapshot was first seen written, while its switch waits
    /// for a gap between deadlines (`compactionSwitchMayRun`).
    var compactionReadySince: BootInstant?
    /// After a failed compaction, none is started again before this instant: a disk that refuses
    /// the snapshot (full, read-only, failing) would otherwise get a new one after every batch,
    /// each a copy of the whole lease table encoded on the compaction's thread.
    var compactionRetryAt: BootInstant?
    static let compactionRetryNs: UInt64 = 30_000_000_000

    /// What the next batch processes, taken out of `pending`. Leases already due end first, in a
    /// batch of their own: their removal does not wait for the kernel work of requests queued
    /// before the deadline; but not twice in a row while requests wait. Otherwise every
    /// item, except that requests beyond what the time until the next deadline allows
    /// (`lateBudgetNs`) stay queued, in order, for the next batch — all of them, if even one
    /// would run past it by more than that (when one request's kernel work takes milliseconds,
    /// as an HTB class add at 100 000 leases), the deadline is at most `maxHoldNs` ahead and the
    /// first request does not renew or relocate a lease due then. Empty if nothing else is
    /// pending: the service then waits for the deadline's tick.
    func takeBatch(now: ClockReading) -> [Work] {
        let next = earliestDeadline()
        let onlyDue = lastBatchOnlyEndedDueLeases
        lastBatchOnlyEndedDueLeases = false
        guard let next else {
            defer { pending = [] }
            return pending
        }
        if next <= now.boot && !onlyDue {
            pending.removeAll { if case .tick = $0 { return true } else { return false } }
            lastBatchOnlyEndedDueLeases = true
            return [.tick]
        }
        // (Here `next` is ahead, or due with the last batch having only ended due leases.) One
        // request goes first whatever it costs after such a batch (so requests wait for one
        // deadline at most), when the deadline is more than `maxHoldNs` ahead, or when it renews
        // or relocates a lease due then (waiting would end the lease it was sent, in time, to
        // keep). Otherwise requests are taken while their estimated kernel work ends within
        // `lateBudgetNs` past the deadline: perhaps none.
        let slack = now.boot.nanoseconds(until: next)
        let budget = slack + Self.lateBudgetNs
        let firstRequest = pending.first { w in
            switch w {
            case .commit, .revoke: true
            case .tick, .resync, .repair: false
            }
        }
        var mustTakeOne = onlyDue || slack > Self.maxHoldNs || firstRequest.map { keepsALease(dueBy: next, $0) } == true
        var full = false
        var cost: UInt64 = 0
        var batch: [Work] = [], rest: [Work] = []
        for w in pending {
            switch w {
            case .commit, .revoke:
                let c: UInt64
                if case .revoke = w { c = nsPerRemoval } else { c = nsPerCommit }
                // In order: once one does not fit, the rest wait too.
                if !full && (mustTakeOne || cost + c <= budget) {
                    batch.append(w)
                    cost += c
                    mustTakeOne = false
                } else {
                    full = true
                    rest.append(w)
                }
            case .tick, .resync, .repair:
                batch.append(w)
            }
        }
        pending = rest
        return batch
    }

    /// Whether `w` renews or relocates a lease that falls due by `instant`.
    func keepsALease(dueBy instant: BootInstant, _ w: Work) -> Bool {
        guard case .commit(let req, _) = w else { return false }
        return [req.leaseID, req.relocates].contains { id in
            id.flatMap { table[$0]?.nextDeadline }.map { $0 <= instant } ?? false
        }
    }

    func processPending() {
        guard !pending.isEmpty else { return }
        let now = clock.now()
        let items = takeBatch(now: now)
        guard !items.isEmpty else { return }   // requests wait for the next deadline's tick
        stats.batches += 1
        table.pruneTombstones(now: now.wall)

        var commits: [PendingCommit] = []
        var revokes: [(LeaseID, CheckedContinuation<Lease, any Error>, Lease)] = []
        var ended: [(Lease, LifecycleEvent.Kind)] = []
        var scopes: [String: Scope] = [:]
        var wantResync = false
        var dueDeadlines: [BootInstant] = []

        for item in items {
            switch item {
            case .commit(let req, let cont):
                do {
                    let adm = try admit(req, now: now)
                    // (In place: a copy taken out of the map would copy its sets at the first
                    // insert, on every commit of a batch.)
                    let point = adm.lease.enforcementPoint
                    scopes[point, default: Scope()].add(adm.lease)
                    for id in adm.undo.touchedLeaseIDs { if let l = table[id] { scopes[point, default: Scope()].add(l) } }
                    if case .renewal(let prev) = adm.kind { scopes[point, default: Scope()].add(prev) }
                    commits.append(PendingCommit(request: req, continuation: cont, admission: adm))
                } catch let e as LeaseError {
                    reject(e)
                    cont.resume(throwing: e)
                } catch {
                    let e = LeaseError(.enforcementFailed, "\(error)")
                    reject(e)
                    cont.resume(throwing: e)
                }
            case .revoke(let id, let cont):
                guard let l = table[id] else {
                    cont.resume(throwing: LeaseError(.leaseNotFound, "no live lease \(id)"))
                    continue
                }
                var undo = LeaseTable.Undo()
                guard let e = table.end(id, .revoked, at: now, undo: &undo) else {
                    cont.resume(throwing: LeaseError(.leaseNotActive, "lease \(id) is \(l.state.rawValue)"))
                    continue
                }
                scopes[l.enforcementPoint, default: Scope()].add(l)
                revokes.append((id, cont, e))
            case .tick:
                for l in dueLeases(at: now.boot) {
                    if let e = endDue(l, at: now, scopes: &scopes) {
                        ended.append(e)
                        dueDeadlines.append(l.nextDeadline)
                    }
                }
            case .resync:
                wantResync = true
            case .repair:
                break   // the points to repair are marked needsResync
            }
        }

        // Durability overlaps the kernel work: the batch's records are written now, as they will
        // be if every install succeeds, and their fdatasync runs on the journal's thread while
        // the kernel is changed below. Nothing is answered before it is done; an install that
        // fails is corrected in the journal (durably) before its refusal is sent.
        var journalError: LeaseJournal.JournalError?
        var syncing = false
        if let journal {
            var records = leaseRecords(commits)
            for (_, _, l) in revokes { records.append(endedRecord(l, at: now)) }
            for (l, _) in ended { records.append(endedRecord(l, at: now)) }
            if !records.isEmpty {
                do {
                    try journal.write(records, clock: now)
                    // Admissions and revokes are answered, so they must be durable first. Ends at
                    // a deadline (expiry, drain end) answer nobody, and a replay after a crash
                    // finds those leases over anyway: no fdatasync for them, which would otherwise
                    // hold up the next batch (the next expiry among them) on this thread.
                    if !commits.isEmpty || !revokes.isEmpty {
                        journal.beginSync()
                        syncing = true
                    }
                } catch {
                    journalError = error
                }
            }
        }

        // Apply per enforcement point.
        var failedPoints: [String: EnforcementError] = [:]
        for (name, scope) in scopes.sorted(by: { $0.key < $1.key }) {
            if points[name]!.needsResync { continue }   // the full resync below covers it
            if let err = applyScope(name, scope) { failedPoints[name] = err }
        }
        let applyDone = clock.now()
        let (batchCommits, batchRemovals, estimable) = (commits.count, revokes.count + ended.count, failedPoints.isEmpty)

        // Failed points: undo this batch's admissions there, resync, then retry one at a time.
        var retry: [PendingCommit] = []
        if !failedPoints.isEmpty {
            for c in commits.reversed() where failedPoints[c.admission.lease.enforcementPoint] != nil {
                table.rollback(c.admission.undo)
            }
            retry = commits.filter { failedPoints[$0.admission.lease.enforcementPoint] != nil }
            commits = commits.filter { failedPoints[$0.admission.lease.enforcementPoint] == nil }
        }
        for name in points.keys.sorted() where points[name]!.needsResync || wantResync || failedPoints[name] != nil {
            _ = resync(name)
        }

        // Leases whose failed batch is retried one at a time.
        // Their refusals wait for the journal's correction below.
        var installed = commits
        var refused: [(CheckedContinuation<CommitOutcome, any Error>, any Error)] = []
        for c in retry {
            let point = c.admission.lease.enforcementPoint
            if points[point]!.needsResync {
                let e = LeaseError(.enforcementFailed, "enforcement point \(point) could not be reconciled: \(failedPoints[point]?.message ?? "unknown error")")
                reject(e)
                refused.append((c.continuation, e))
                continue
            }
            let single = clock.now()
            do {
                let adm = try admit(c.request, now: single)
                var s = Scope()
                s.add(adm.lease)
                for id in adm.undo.touchedLeaseIDs { if let l = table[id] { s.add(l) } }
                if case .renewal(let prev) = adm.kind { s.add(prev) }
                if let err = applyScope(point, s) {
                    table.rollback(adm.undo)
                    _ = resync(point)
                    let e = LeaseError(err.cause, "installing lease \(c.request.leaseID) at \(point) failed, nothing of it remains: \(err.message)")
                    reject(e)
                    refused.append((c.continuation, e))
                } else {
                    installed.append(PendingCommit(request: c.request, continuation: c.continuation, admission: adm))
                }
            } catch let e as LeaseError {
                reject(e)
                refused.append((c.continuation, e))
            } catch {
                refused.append((c.continuation, error))
            }
        }

        // Points this batch could not reconcile (a failure of the due leases ended during the
        // fdatasync wait below is not this batch's revokes').
        let unreconciled = Set(points.keys.filter { points[$0]!.needsResync })
        if let journal {
            if syncing {
                do {
                    // Leases that fall due meanwhile end while the disk flushes (a slow fdatasync
                    // took up to 31 ms here); not those this batch's requests touch, whose records
                    // may yet be rolled back. (The set only once a wait runs past 1 ms, rarely.)
                    var busy: Set<LeaseID>?
                    let t = try journal.endSync(whileWaiting: {
                        if busy == nil { busy = Set(installed.flatMap { [$0.admission.lease.id] + $0.admission.undo.touchedLeaseIDs }) }
                        endDueLeasesWhileSyncing(except: busy!)
                    })
                    stats.journalSync.record(nanoseconds: t.syncNs)
                    stats.journalWait.record(nanoseconds: t.waitNs)
                } catch { journalError = journalError ?? error }
            }
            // An install failed: the records written ahead for the batch's commits are corrected
            // with what the table now holds (a retried lease as installed, a refused one
            // withdrawn, a relocation's old lease as it was), durably, before anyone is answered.
            if journalError == nil && !retry.isEmpty {
                var ids: [LeaseID] = []
                for c in retry {
                    ids.append(c.admission.lease.id)
                    if case .relocation(let old) = c.admission.kind { ids.append(old) }
                    ids += c.admission.undo.touchedLeaseIDs
                }
                var seen = Set<LeaseID>()
                let records = ids.filter { seen.insert($0).inserted }.map(journalRecord)
                do { try journal.append(records, clock: clock.now()) } catch { journalError = error }
            }
            if let error = journalError {
                // Not durable, so not acknowledged: undo the admissions (kernel included).
                logger.critical("lease journal write failed; refusing the batch's admissions", metadata: ["error": "\(error)"])
                var touched: Set<String> = []
                for c in installed.reversed() {
                    table.rollback(c.admission.undo)
                    // (A lease the rollback restores may have lost its deadline's entry: it looked
                    // stale while the sync ran, `endDueLeasesWhileSyncing`.)
                    for id in c.admission.undo.touchedLeaseIDs { if let l = table[id] { deadlines.push(l.nextDeadline, l.id) } }
                    touched.insert(c.admission.lease.enforcementPoint)
                    let e = LeaseError(.enforcementFailed, "lease \(c.request.leaseID) could not be recorded durably (\(error)); nothing of it remains")
                    reject(e)
                    c.continuation.resume(throwing: e)
                }
                installed = []
                for name in touched.sorted() { _ = resync(name) }
            }
        }

        for (continuation, error) in refused { continuation.resume(throwing: error) }
        for c in installed { finishCommit(c, at: applyDone) }
        for (_, cont, lease) in revokes {
            stats.revoked += 1
            publish(.revoked, lease, at: applyDone)
            if unreconciled.contains(lease.enforcementPoint) {
                cont.resume(throwing: LeaseError(.enforcementFailed, "lease \(lease.id) is revoked but its kernel state could not be removed yet; the kernel timeouts end it at \(lease.expiresAt.rfc3339) at the latest and the agent keeps retrying"))
            } else {
                cont.resume(returning: lease)
            }
        }
        reportEnded(ended, dueDeadlines, at: applyDone)
        if estimable && batchCommits + batchRemovals > 0 {
            // Each estimate moves by what the whole batch took (its kernel work, and the
            // admission, journal and answers around it) against what they predicted for it.
            let predicted = Double(batchCommits) * Double(nsPerCommit) + Double(batchRemovals) * Double(nsPerRemoval)
            let ratio = Double(now.boot.nanoseconds(until: clock.now().boot)) / max(predicted, 1)
            func moved(_ k: UInt64) -> UInt64 { UInt64(min((3 * Double(k) + Double(k) * ratio) / 4, 1e10).rounded()) }
            if batchCommits > 0 { nsPerCommit = max(moved(nsPerCommit), 1) }
            if batchRemovals > 0 { nsPerRemoval = max(moved(nsPerRemoval), 1) }
        }
        if let journal {
            if journal.compactionReady && compactionSwitchMayRun(at: applyDone.boot) { finishCompaction(journal) }
            if journal.needsCompaction && compactionRetryAt.map({ applyDone.boot >= $0 }) ?? true {
                compactJournal(journal, inBackground: true)
            }
        }
        rearm()
        churnSinceTrim += items.count
        lastBatchBoot = applyDone.boot
        if !pending.isEmpty { scheduleFlush() }   // what the budget left for the next batch
    }

    /// Ends `l`, due at `now`: expired, or drained when its drain ends before its deadline. Adds
    /// it to its point's scope; nil if it was no longer live.
    func endDue(_ l: Lease, at now: ClockReading, scopes: inout [String: Scope]) -> (Lease, LifecycleEvent.Kind)? {
        var undo = LeaseTable.Undo()
        let event: LeaseEvent = (l.state == .draining && (l.drainEndsAt ?? l.deadline) < l.deadline) ? .drainEnded : .expired
        guard let e = table.end(l.id, event, at: now, undo: &undo) else { return nil }
        scopes[l.enforcementPoint, default: Scope()].add(l)
        return (e, event == .drainEnded ? .drained : .expired)
    }

    /// Stats and events of leases ended at their deadlines (`ended` and `deadlines` in step),
    /// their state gone at `done`: the event says when the lease was due and how late its state
    /// was gone, what an auditor of expiries checks.
    func reportEnded(_ ended: [(Lease, LifecycleEvent.Kind)], _ deadlines: [BootInstant], at done: ClockReading) {
        for ((lease, kind), deadline) in zip(ended, deadlines) {
            let late = deadline.nanoseconds(until: done.boot)
            stats.expiryLateness.record(nanoseconds: late)
            metrics?.expiryLate(nanoseconds: late)
            if kind == .drained { stats.drained += 1 } else { stats.expired += 1 }
            var detail = JSON.Object()
            detail["deadline_monotonic_ns"] = .int(deadline.nanoseconds)
            detail["late_us"] = .int(late / 1000)
            publish(kind, lease, at: done, related: lease.replacedBy, detail: detail)
        }
    }

    func endedRecord(_ l: Lease, at now: ClockReading) -> JournalRecord {
        .ended(id: l.id, state: l.state, generation: l.request.generation, at: now.wall, mark: l.mark, point: l.enforcementPoint)
    }

    /// While a batch waits for its fdatasync, leases that fall due end in a batch of their own:
    /// their ends need no fdatasync and answer nobody. Not those in `busy` (the waiting batch's
    /// requests touched them and may yet be rolled back): they go back on the deadline heap for
    /// the next batch. Kernel work as in any batch; journal records written, not synced.
    func endDueLeasesWhileSyncing(except busy: Set<LeaseID>) {
        let now = clock.now()
        guard let next = earliestDeadline(), next <= now.boot else { return }
        var scopes: [String: Scope] = [:]
        var ended: [(Lease, LifecycleEvent.Kind)] = []
        var dueDeadlines: [BootInstant] = []
        for l in dueLeases(at: now.boot) {
            if busy.contains(l.id) {
                deadlines.push(l.nextDeadline, l.id)
                continue
            }
            if let e = endDue(l, at: now, scopes: &scopes) {
                ended.append(e)
                dueDeadlines.append(l.nextDeadline)
            }
        }
        guard !ended.isEmpty else { return }
        stats.batches += 1
        if let journal {
            do { try journal.write(ended.map { endedRecord($0.0, at: now) }, clock: now) } catch {
                logger.warning("lease journal write failed for leases ended at their deadlines (a replay finds them over anyway)",
                               metadata: ["error": "\(error)"])
            }
        }
        for (name, scope) in scopes.sorted(by: { $0.key < $1.key }) where !points[name]!.needsResync {
            _ = applyScope(name, scope)
        }
        reportEnded(ended, dueDeadlines, at: clock.now())
        rearm()
    }

    /// The journal records of admitted commits: each lease as it is once installed, and a
    /// relocation's old lease as it now drains.
    func leaseRecords(_ commits: [PendingCommit]) -> [JournalRecord] {
        var records: [JournalRecord] = []
        for c in commits {
            records.append(journalRecord(c.admission.lease.id))
            if case .relocation(let old) = c.admission.kind { records.append(journalRecord(old)) }
        }
        return records
    }

    /// What the journal is to say of lease `id` now: the lease as it is once installed, or
    /// `withdrawn` when the table no longer has it (its admission was undone).
    func journalRecord(_ id: LeaseID) -> JournalRecord {
        guard var l = table[id] else { return .withdrawn(id: id) }
        if l.state == .admitted { l.state = .active }
        return .lease(l)
    }

    func admit(_ req: CommitRequest, now: ClockReading) throws -> Admission {
        let point = req.enforcementPoint ?? defaultPoint
        guard points[point] != nil else {
            throw LeaseError(.unknownEnforcementPoint, "enforcement point \"\(point)\" is not configured (known: \(points.keys.sorted().joined(separator: ", ")))", field: "enforcement_point")
        }
        let iface = try resolveInterface(point: point, address: req.anchor.address, now: now.boot)
        var caps: [String: UInt64] = [:]
        for (k, p) in points { caps[k] = p.config.capacityKbit }
        let ctx = AdmissionContext(now: now, policy: policy, capacityKbit: caps, defaultPoint: defaultPoint, anchorInterface: iface)
        return try table.admit(req, context: ctx)
    }

    func resolveInterface(point: String, address: IPAddress, now: BootInstant) throws -> String {
        if let (iface, until) = points[point]!.routeCache[address], until > now { return iface }
        do {
            let iface = try points[point]!.backend.interface(toward: address)
            points[point]!.routeCache[address] = (iface, now.adding(milliseconds: 2000))
            return iface
        } catch {
            throw LeaseError(error.cause == .noRouteToAnchor ? .noRouteToAnchor : .enforcementFailed,
                             "cannot find the interface toward anchor \(address) in \(points[point]!.backend.location): \(error.message)",
                             field: "anchor.address")
        }
    }

    func finishCommit(_ c: PendingCommit, at done: ClockReading) {
        let id = c.admission.lease.id
        var relocated: Lease?
        switch c.admission.kind {
        case .new:
            table.activate(id, switchedAt: done.boot)
            stats.admitted += 1
            publish(.admitted, table[id]!, at: done)
        case .renewal:
            stats.renewed += 1
            publish(.renewed, table[id]!, at: done)
        case .relocation(let old):
            table.activate(id, switchedAt: done.boot)
            stats.relocated += 1
            relocated = table[old]
            var detail = JSON.Object()
            if let end = relocated?.drainEndsAt { detail["drain_ends_at"] = .string(done.wall(at: end).rfc3339) }
            publish(.switched, table[id]!, at: done, related: old, relatedAnchor: relocated?.request.anchor, detail: detail)
        }
        let lease = table[id]!
        deadlines.push(lease.nextDeadline, id)
        if let r = relocated { deadlines.push(r.nextDeadline, r.id) }
        let installNs = c.admission.lease.admittedAt.boot.nanoseconds(until: done.boot)
        stats.installLatencies.record(nanoseconds: installNs)
        metrics?.admitted(c.admission.kind, latencyNs: installNs)
        c.continuation.resume(returning: CommitOutcome(kind: c.admission.kind, lease: lease, relocated: relocated, switchedAt: done,
                                                       installNanoseconds: installNs))
    }

    func reject(_ e: LeaseError) { recordRejection(e.cause) }

    /// Refused requests by cause, counted wherever they are refused (API or service).
    private let rejections = Mutex<[RejectCause: Int]>([:])
    public nonisolated func recordRejection(_ cause: RejectCause) { rejections.withLock { $0[cause, default: 0] += 1 } }
    public nonisolated var rejectionCounts: [RejectCause: Int] { rejections.withLock { $0 } }

    func publish(_ kind: LifecycleEvent.Kind, _ l: Lease, at t: ClockReading, related: LeaseID? = nil,
                 relatedAnchor: Anchor? = nil, detail: JSON.Object = JSON.Object()) {
        let msg: Logger.Message = "lease \(kind.rawValue)"
        logger.info(msg, metadata: ["lease.id": "\(l.id)", "aisi": "\(l.aisi)", "anchor": "\(l.request.anchor.id)",
                                    "point": "\(l.enforcementPoint)", "state": "\(l.state.rawValue)"])
        let e = events.publish { seq in
            LifecycleEvent(seq: seq, kind: kind, leaseID: l.id, aisi: l.aisi, enforcementPoint: l.enforcementPoint,
                           anchor: l.request.anchor, qos: l.request.qos, relatedLease: related, relatedAnchor: relatedAnchor,
                           boot: t.boot, wall: t.wall, detail: detail)
        }
        lifecycleObserver?(e, l)
    }

    func dueLeases(at now: BootInstant) -> [Lease] {
        let t = table
        let ids = deadlines.popDue(at: now) { instant, id in t[id]?.nextDeadline == instant }
        return ids.compactMap { table[$0] }
    }

    /// The earliest deadline (expiry or drain end) of a live lease; stale entries are dropped.
    func earliestDeadline() -> BootInstant? {
        let t = table
        return deadlines.peek { instant, id in t[id]?.nextDeadline == instant }
    }

    func rearm() {
        onDeadlineChange?(earliestDeadline())
    }

    /// Applies the plan of `scope` at `point`; nil on success.
    func applyScope(_ name: String, _ scope: Scope) -> EnforcementError? {
        // No copy of the Point is held across the merge below: holding one would make the merge
        // copy `applied` (all of the point's elements) on every batch.
        let backend = points[name]!.backend
        let plan = planner.plan(point: name, scope: scope, table: table, applied: points[name]!.applied,
                                capacityKbit: points[name]!.config.capacityKbit)
        if plan.isEmpty { return nil }
        do {
            try backend.apply(plan)
            points[name]!.applied.merge(scope: scope, result: plan.result)
            return nil
        } catch {
            logger.error("kernel apply failed; resyncing", metadata: ["point": "\(name)", "error": "\(error.message)"])
            points[name]!.needsResync = true
            points[name]!.resyncReason = "a failed apply"
            return error
        }
    }

    /// Reads the kernel back and makes it match the lease table completely. Returns the number
    /// of repairs (changes) it had to make; logs each of them (up to a dozen) with the reason.
    @discardableResult
    func resync(_ name: String) -> Int {
        let p = points[name]!
        stats.resyncs += 1
        let reason = p.resyncReason ?? "resync"
        points[name]!.resyncReason = nil
        do {
            if p.needsPrepare {
                try p.backend.prepare()
                points[name]!.needsPrepare = false
            }
            let observed = try p.backend.observe()
            // Read-back deadlines are lower bounds (read time + remaining, rounded to jiffies):
            // an element is accepted from the dump's skew + 20 ms early to 10 ms late.
            let tolerant = Planner(drainGraceNs: planner.drainGraceNs, earlyToleranceNs: observed.readSkewNs + 20_000_000,
                                   lateToleranceNs: 10_000_000)
            let scope = Scope.everything(point: name, table: table, applied: observed)
            let plan = tolerant.plan(point: name, scope: scope, table: table, applied: observed, capacityKbit: p.config.capacityKbit)
            if !plan.isEmpty { try p.backend.apply(plan) }
            var applied = observed
            applied.merge(scope: scope, result: plan.result)
            points[name]!.applied = applied
            points[name]!.needsResync = false
            let changes = plan.changeCount
            if changes > 0 {
                stats.repairs += changes
                let byMark = table.index(name)?.byMark ?? [:]
                let all = plan.describedChanges { byMark[$0] }
                // A start-up reconcile may change thousands of elements: log the first ones.
                let lines = all.count > 20 ? Array(all.prefix(20)) + ["… \(all.count - 20) more"] : all
                logger.notice(reason == "drift" ? "repaired kernel drift" : "reconciled kernel with leases",
                              metadata: ["point": "\(name)", "reason": "\(reason)", "changes": "\(changes)",
                                         "repairs": "\(lines.joined(separator: "; "))"])
            } else if reason == "drift" {
                logger.info("kernel drift needed no repair", metadata: ["point": "\(name)"])
            }
            return changes
        } catch {
            points[name]!.needsResync = true
            points[name]!.needsPrepare = true
            points[name]!.resyncReason = reason
            logger.error("resync failed; retrying with the next reconcile", metadata: ["point": "\(name)", "reason": "\(reason)", "error": "\(error)"])
            return 0
        }
    }
}

/// Latencies in ns: log2 buckets for the Prometheus histogram plus the most recent samples
/// (a ring of 65 536) for exact quantiles in `/v1/status` and the benchmarks.
public struct LatencyHistogram: Sendable {
    public private(set) var buckets = [UInt64](repeating: 0, count: 48)
    public private(set) var count: UInt64 = 0
    public private(set) var sumNs: UInt64 = 0
    public private(set) var maxNs: UInt64 = 0
    private var recent: [UInt64] = []
    private var next = 0
    static let ringSize = 65_536

    public init() {}

    public mutating func record(nanoseconds ns: UInt64) {
        let b = ns == 0 ? 0 : min(47, 64 - ns.leadingZeroBitCount)
        buckets[b] += 1
        count += 1
        sumNs &+= ns
        maxNs = max(maxNs, ns)
        if recent.count < Self.ringSize {
            recent.append(ns)
        } else {
            recent[next] = ns
            next = (next + 1) % Self.ringSize
        }
    }

    /// Quantile `q` (0...1) of the recent samples, in ns (nearest rank).
    public func quantile(_ q: Double) -> UInt64 {
        guard !recent.isEmpty else { return 0 }
        let sorted = recent.sorted()
        let rank = min(sorted.count - 1, max(0, Int((Double(sorted.count) * q).rounded(.up)) - 1))
        return sorted[rank]
    }

    /// `{"count", "p50_ms", "p99_ms", "max_ms"}` over the recent samples.
    public var summary: JSON {
        let sorted = recent.sorted()
        func q(_ p: Double) -> Double {
            guard !sorted.isEmpty else { return 0 }
            let rank = min(sorted.count - 1, max(0, Int((Double(sorted.count) * p).rounded(.up)) - 1))
            return Double(sorted[rank]) / 1e6
        }
        return ["count": .int(count), "p50_ms": .double(q(0.5)), "p99_ms": .double(q(0.99)),
                "max_ms": .double(Double(sorted.last ?? 0) / 1e6)]
    }
}

extension LeaseService {
    public struct PointSnapshot: Sendable {
        public var config: EnforcementPointConfig
        public var guaranteedKbit: UInt64
        public var leases: Int
        public var interfaces: [String]
        public var needsResync: Bool
    }

    public struct Snapshot: Sendable {
        public var points: [PointSnapshot]
        public var byState: [LeaseState: Int]
        public var policyName: String
        public var labPolicy: Bool
        public var stats: Stats
    }

    public func snapshot() -> Snapshot {
        // (From the table's per-point counts: a walk of every lease took ~30 ms at 100 000
        // leases, on the lease thread, for each status or metrics request.)
        var byState: [LeaseState: Int] = [:]
        var perPoint: [String: Int] = [:]
        for (name, idx) in table.points {
            for (state, n) in idx.leasesByState {
                byState[state, default: 0] += n
                perPoint[name, default: 0] += n
            }
        }
        let pts = points.keys.sorted().map { name -> PointSnapshot in
            let p = points[name]!
            let idx = table.index(name)
            return PointSnapshot(config: p.config, guaranteedKbit: idx?.guaranteedKbit ?? 0, leases: perPoint[name] ?? 0,
                                 interfaces: Array(idx?.leasesPerInterface.keys ?? [:].keys), needsResync: p.needsResync)
        }
        return Snapshot(points: pts, byState: byState, policyName: policy.name, labPolicy: policy.isLab, stats: stats)
    }
}

extension LeaseService {
    /// Reads the enforcement point's kernel state back (`nft list`/`tc class show` through netlink).
    public func observeKernel(_ point: String) throws -> KernelState {
        guard let p = points[point] else { return KernelState() }
        do { return try p.backend.observe() } catch { throw error }
    }

    /// Runs `body` with the point's backend on the service's executor (tests, diagnostics).
    public func withBackend<T: Sendable>(_ point: String, _ body: @Sendable (any EnforcementBackend) throws -> T) rethrows -> T? {
        guard let p = points[point] else { return nil }
        return try body(p.backend)
    }
}

extension LeaseService {
    /// Loads the journal (if any) and rebuilds the lease table from it; call before `start()`.
    public func recover() throws -> (restored: Int, dropped: Int, truncatedBytes: Int) {
        guard let journal else { return (0, 0, 0) }
        let now = clock.now()
        let (records, cut) = try journal.load(clock: now)
        if cut > 0 {
            logger.warning("cut a torn record off the end of the lease journal", metadata: ["bytes": "\(cut)"])
        }
        let dropped = restore(from: records)
        return (table.liveCount, dropped.count, cut)
    }

    /// Replaces the lease table with the journal's (start, before `start()` reconciles the kernel).
    /// Returns the leases that ended while the agent was down.
    public func restore(from records: [JournalRecord]) -> [Lease] {
        let now = clock.now()
        let (restored, dropped) = LeaseTable.replay(records, now: now.boot, groupSize: table.groupSize)
        table = restored
        deadlines = DeadlineQueue()
        for l in table.leases.values { deadlines.push(l.nextDeadline, l.id) }
        for l in dropped {
            let kind: LifecycleEvent.Kind = l.state == .draining && (l.drainEndsAt ?? l.deadline) < l.deadline ? .drained : .expired
            publish(kind, l, at: now, related: l.replacedBy, detail: JSON.Object(["while_agent_down": true]))
        }
        if let journal {
            let records: [JournalRecord] = dropped.map {
                .ended(id: $0.id, state: .expired, generation: $0.request.generation, at: now.wall, mark: $0.mark, point: $0.enforcementPoint)
            }
            if !records.isEmpty { try? journal.append(records, clock: now) }
            if journal.needsCompaction { compactJournal(journal) }
        }
        return dropped
    }

    /// Rewrites the journal as the live state. In the background (during service): the records
    /// are built from a copy of the table's leases, mark cursors and tombstones (`journalSource`;
    /// copy-on-write: their storage is copied only if the service changes them before the copy
    /// is dropped) and written on the journal's compaction
    /// thread, and `finishCompaction` puts them in place at the end of a later batch; otherwise
    /// (at start) right here.
    func compactJournal(_ journal: LeaseJournal, inBackground: Bool = false) {
        let now = clock.now()
        let source = table.journalSource, pointNames = points.keys.sorted(), defaultPoint = self.defaultPoint
        let snapshot: @Sendable () -> [JournalRecord] = {
            var records: [JournalRecord] = pointNames.map { .cursor(point: $0, nextSlot: source.nextSlots[$0] ?? 1) }
            records += source.leases.values.map { .lease($0) }
            // Tombstones keep the instant their retention counts from (`at`), so compaction
            // does not extend them.
            for t in source.tombstones {
                records.append(.ended(id: t.id, state: .expired, generation: t.generation, at: t.retainedFrom, mark: 0, point: defaultPoint))
            }
            return records
        }
        if inBackground {
            journal.beginCompaction(clock: now, snapshot)
            return
        }
        do {
            let records = snapshot()
            try journal.compact(records, clock: now)
            let took = now.boot.nanoseconds(until: clock.now().boot)
            stats.journalCompaction.record(nanoseconds: took)
            logger.info("compacted the lease journal", metadata: ["records": "\(records.count)", "took_us": "\(took / 1000)"])
        } catch {
            compactionFailed(error)
        }
    }

    func compactionFailed(_ error: LeaseJournal.JournalError) {
        stats.journalCompactionFailures += 1
        compactionRetryAt = clock.now().boot.adding(nanoseconds: Self.compactionRetryNs)
        logger.error("lease journal compaction failed; the journal keeps growing", metadata: [
            "error": "\(error)", "retry_in_s": "\(Self.compactionRetryNs / 1_000_000_000)"])
    }

    /// The switch to a compacted journal stops this thread (it copies what was appended since the
    /// compaction's thread last looked, at most ~64 KB, and fdatasyncs it: 0.1–0.3 ms measured at
    /// 100 000 leases, more when the disk stalls), so it waits for a batch after which no deadline
    /// falls within `compactionSwitchClearanceNs`, for `compactionSwitchMaxWaitNs` at most.
    static let compactionSwitchClearanceNs: UInt64 = 50_000_000
    static let compactionSwitchMaxWaitNs: UInt64 = 2_000_000_000

    /// Starts a background compaction now (tests; the service starts one when the journal has grown).
    func beginJournalCompaction() { if let journal { compactJournal(journal, inBackground: true) } }

    /// Tests: the journal's fdatasyncs (of admissions and revokes) take `ms` longer, and fail.
    func slowJournalSyncsForTesting(ms: UInt32, failing: Bool = false) {
        journal?.syncDelayForTestingMs = ms
        journal?.syncFailsForTesting = failing
    }
    var journalCompactionReady: Bool { journal?.compactionReady ?? false }
    var journalCompactionInFlight: Bool { journal?.compaction != nil }
    /// Tests: the journal is compacted once it is 4x its last snapshot, however small.
    func compactSmallJournalsForTesting() { journal?.compactionMinBytes = 0 }

    func compactionSwitchMayRun(at now: BootInstant) -> Bool {
        let since = compactionReadySince ?? now
        compactionReadySince = since
        guard let next = earliestDeadline() else { return true }
        return now.nanoseconds(until: next) > Self.compactionSwitchClearanceNs
            || since.nanoseconds(until: now) >= Self.compactionSwitchMaxWaitNs
    }

    /// Puts a background compaction's snapshot in the journal's place once it is written, with
    /// what was appended meanwhile (otherwise returns at once).
    func finishCompaction(_ journal: LeaseJournal) {
        let t0 = clock.now().boot
        do {
            guard try journal.finishCompaction() else { return }
            compactionReadySince = nil
            let switched = t0.nanoseconds(until: clock.now().boot)
            stats.journalCompaction.record(nanoseconds: switched)
            logger.info("compacted the lease journal", metadata: ["bytes": "\(journal.sizeBytes)", "switch_us": "\(switched / 1000)", "switch_copied_bytes": "\(journal.lastSwitchTailBytes)"])
        } catch {
            compactionReadySince = nil
            compactionFailed(error)
        }
    }
}

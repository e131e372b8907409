import AIPagingCore
import AIPagingKernel
import CAIPagingShim
import Foundation
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where the exporter measures one enforcement point.
public struct EvidencePoint: Sendable {
    public var name: String
    /// The point's namespace: probe sockets and the counter-reading nftables socket are opened
    /// there. Nil: the point has no kernel (the in-memory test backend): no probes, no counters.
    public var namespace: NetworkNamespace?
    public init(name: String, namespace: NetworkNamespace?) {
        self.name = name
        self.namespace = namespace
    }
}

/// Measures every live lease and writes its EVI window records, on one thread of its own (never
/// the agent's event loop): a STAMP session per lease (probes sent through the lease's HTB class
/// to the anchor's reflector), the lease's nftables counters (one batched dump per point and read),
/// and at each window's end plus the probe timeout one window record per lease.
///
/// Leases come in through `observe(_:lease:)`, which the lease service calls for every lifecycle
/// event (cheap: a queue append, and an eventfd write when the queue was empty).
public final class EvidenceExporter: Sendable {
    enum Command: Sendable {
        case upsert(Lease)
        case end(Lease, LifecycleEvent.Kind, WallTime)
        /// For tests: the thread stops for that long, as a starved thread would.
        case stall(milliseconds: Int)
    }

    struct Inbox: Sendable {
        var commands: [Command] = []
        var stopping = false
        /// When the measurement thread looks at the inbox next by itself (monotonic ns; 0: it is
        /// awake). A change that can wait until then (`wakeSlackNs` at most) wakes nobody.
        var nextLookNs: UInt64 = 0
        /// Times a change woke the thread.
        var wakes: UInt64 = 0
    }

    /// How long a lease change may wait for the measurement thread's own next wake-up before it
    /// wakes the thread: while leases are probed the thread ticks every 5 ms (at the default
    /// probe interval), so a stream of admissions costs the lease service no thread wake each.
    static let wakeSlackNs: UInt64 = 10_000_000

    /// Times a lease change woke the measurement thread (tests).
    public var inboxWakes: UInt64 { inbox.withLock { $0.wakes } }

    /// Live figures for /v1/status and /metrics.
    public struct Stats: Sendable {
        public var sessions = 0
        public var probing = 0
        /// Each lease probes every `probeStride`-th interval (1 unless `max_probe_rate` binds).
        public var probeStride = 1
        public var probesSent: UInt64 = 0
        public var probesReceived: UInt64 = 0
        public var windows: UInt64 = 0
        public var counterReads: UInt64 = 0
        /// How long the last full counter read (one read per point) took.
        public var lastCounterReadMs = 0.0
        public var lastError: String?
        public var priorityMode = "cmsg"
    }

    let settings: EvidenceSettings
    let points: [EvidencePoint]
    let log: EvidenceLog
    let metrics: AgentMetrics?
    let logger: Logger
    let inbox = Mutex(Inbox())
    let stats = Mutex(Stats())
    let wakeFD: Int32
    let finished = DispatchSemaphore(value: 0)
    let started = Atomic<Bool>(false)

    public init(settings: EvidenceSettings, points: [EvidencePoint], log: EvidenceLog, metrics: AgentMetrics?, logger: Logger) {
        self.settings = settings
        self.points = points
        self.log = log
        self.metrics = metrics
        self.logger = logger
        wakeFD = aip_eventfd()
    }

    deinit { if wakeFD >= 0 { close(wakeFD) } }

    /// Starts the measurement thread with `initial` leases (those live at start).
    public func start(initial: [Lease]) {
        guard !started.exchange(true, ordering: .acquiringAndReleasing) else { return }
        inbox.withLock { $0.commands = initial.map { .upsert($0) } + $0.commands }
        let this = self
        Thread.detachNewThread {
            aip_thread_set_name("aip-evidence")
            // Background work: on a small node the lease service (expiry, admissions) comes first.
            ThreadScheduling.enterBackground(.evidence)
            let loop = ExporterLoop(this)
            loop.run()
            this.finished.signal()
        }
    }

    /// Called by the lease service for every lifecycle event, on its thread: only queues.
    public func observe(_ e: LifecycleEvent, lease: Lease) {
        let cmd: Command
        switch e.kind {
        case .admitted, .switched, .renewed: cmd = .upsert(lease)
        // The lease's measurement ends when the service began removing its kernel state (its HTB
        // class among it), not when the removal was done: probes sent in between may be dropped
        // on the way out and are not counted.
        case .drained, .expired, .revoked: cmd = .end(lease, e.kind, lease.endedAt?.wall ?? e.wall)
        case .repaired: return
        }
        let now = DispatchTime.now().uptimeNanoseconds
        let signal = inbox.withLock { i -> Bool in
            guard !i.stopping else { return false }
            i.commands.append(cmd)
            guard i.nextLookNs > now + Self.wakeSlackNs else { return false }
            i.nextLookNs = 0
            i.wakes += 1
            return true
        }
        if signal { _ = aip_eventfd_signal(wakeFD) }
    }

    /// For tests: stops the measurement thread for `milliseconds` (a thread starved on a busy node).
    public func stallForTesting(milliseconds: Int) {
        inbox.withLock { $0.commands.append(.stall(milliseconds: milliseconds)) }
        _ = aip_eventfd_signal(wakeFD)
    }

    /// Ends measurement: every live lease gets its last (partial) window record; blocks until the
    /// thread has queued them.
    public func stop() {
        inbox.withLock { $0.stopping = true }
        _ = aip_eventfd_signal(wakeFD)
        if started.load(ordering: .acquiring) { finished.wait() }
    }

    public var currentStats: Stats { stats.withLock { $0 } }
}

/// The exporter's thread-confined state and loop. Created on, and only used by, the exporter
/// thread.
final class ExporterLoop {
    let owner: EvidenceExporter
    let settings: EvidenceSettings
    let windowNs: Int64
    let intervalNs: Int64
    let timeoutNs: Int64
    let tickNs: Int64

    struct WindowCounters {
        var window: Int64
        var delta = FlowCounters()
        var asOf: Int64 = 0
        var reset = false

        /// Adds a later window's counters (for a record that covers several windows).
        mutating func merge(_ o: WindowCounters) {
            delta += o.delta
            reset = reset || o.reset
            asOf = max(asOf, o.asOf)
        }
    }

    /// The counters of a session's open windows. One or two are open at a time: they are held
    /// inline (an array per session would be one more heap block per live lease); more, which a
    /// late loop or a log writer that fell behind could leave, spill into an array of at most
    /// `maxSpill`: past that, the oldest window's counters are merged into the next oldest (so a
    /// session that owes many windows holds four, and its record for them, which covers them all
    /// in one `coalesced_windows` range, still counts every packet).
    struct OpenWindows {
        private var a: WindowCounters?
        private var b: WindowCounters?
        private var spill: [WindowCounters] = []
        static let maxSpill = 2

        /// Applies `body` to the counters of `window` (opened if needed).
        mutating func update(_ window: Int64, _ body: (inout WindowCounters) -> Void) {
            if a?.window == window { body(&a!); return }
            if b?.window == window { body(&b!); return }
            if let i = spill.firstIndex(where: { $0.window == window }) { body(&spill[i]); return }
            var w = WindowCounters(window: window)
            body(&w)
            if a == nil { a = w } else if b == nil { b = w } else { spill.append(w) }
            if spill.count > Self.maxSpill { mergeOldest() }
        }

        /// Merges the oldest open window into the next oldest (which keeps its index).
        private mutating func mergeOldest() {
            var all = spill
            if let a { all.append(a) }
            if let b { all.append(b) }
            all.sort { $0.window < $1.window }
            var oldest = all.removeFirst()
            oldest.merge(all[0])
            oldest.window = all[0].window
            all[0] = oldest
            a = all.removeFirst()
            b = all.removeFirst()
            spill = all
        }

        /// Windows held (for tests).
        var count: Int { (a == nil ? 0 : 1) + (b == nil ? 0 : 1) + spill.count }

        mutating func take(_ window: Int64) -> WindowCounters? {
            if let x = a, x.window == window { a = nil; return x }
            if let x = b, x.window == window { b = nil; return x }
            guard let i = spill.firstIndex(where: { $0.window == window }) else { return nil }
            return spill.remove(at: i)
        }

        mutating func removeAll(before window: Int64) {
            if let x = a, x.window < window { a = nil }
            if let x = b, x.window < window { b = nil }
            if !spill.isEmpty { spill.removeAll { $0.window < window } }
        }
    }

    /// What a session shares with other sessions: its enforcement point, the lease's anchor, QoS
    /// binding and class interface. Leases share a few anchors, QoS bindings and interfaces, so
    /// sessions refer to one interned copy (`BindingPool`) instead of holding ~110 bytes each.
    final class Binding {
        struct Key: Hashable {
            var point: String
            var anchor: Anchor
            var qos: QoSBinding
            var interface: String
        }
        let key: Key
        /// Sessions referring to it (the pool drops it at 0).
        var users = 0
        init(_ key: Key) { self.key = key }
    }

    /// The interned bindings, counted by their sessions.
    struct BindingPool {
        private(set) var bindings = CompactDictionary<Binding.Key, Binding>()

        mutating func acquire(_ key: Binding.Key) -> Binding {
            let b: Binding
            if let found = bindings[key] { b = found } else { b = Binding(key); bindings[key] = b }
            b.users += 1
            return b
        }

        mutating func release(_ b: Binding) {
            b.users -= 1
            if b.users <= 0 { bindings[b.key] = nil }
        }
    }

    /// What a session needs of its lease (a whole `Lease` is several times larger, and there is
    /// one session per live lease): its own facts inline, the shared ones in `binding`.
    struct LeaseFacts {
        var id: LeaseID
        var aisi: AISI
        var binding: Binding
        var deadline: BootInstant
        var mark: UInt32
        /// The lease's HTB classid (also the probes' SO_PRIORITY).
        var classid: UInt32

        var anchor: Anchor { binding.key.anchor }
        var qos: QoSBinding { binding.key.qos }
        var qosClass: QoSClassRef {
            QoSClassRef(interface: binding.key.interface, major: UInt16(classid >> 16), minor: UInt16(classid & 0xffff))
        }

        static func key(_ l: Lease) -> Binding.Key {
            Binding.Key(point: l.enforcementPoint, anchor: l.request.anchor, qos: l.request.qos, interface: l.qosClass.interface)
        }
    }

    final class Session {
        // (Fields ordered so the small ones fill the padding after wider ones: there is a
        // session per live lease.)
        var lease: LeaseFacts
        /// The probe socket the session sends through (nil: not probing).
        var group: ProbeGroup?
        /// The STAMP bookkeeping of a probed session; nil for a lease that gets no probe session
        /// (probing off, or all 65 535 ids taken): the ledger is 64 bytes, and a box costs those
        /// leases 8.
        var probe: ProbeBox?
        let startNs: Int64
        /// Windows emitted up to (inclusive).
        var emittedThrough: Int64
        /// Counters as last read (cumulative kernel values) and per-window deltas.
        var last = FlowCounters()
        /// Per open window: the counter delta, when it was read, whether the counters restarted.
        var windows = OpenWindows()
        var endNs: Int64?
        var endKind: LifecycleEvent.Kind?
        var removed = false
        var haveBaseline = false
        var preExpiryDone = false
        /// Slot of the send wheel (its phase within the probe interval).
        let bucket: Int32
        var ssid: UInt16 = 0
        var finalizeAtNs: Int64?

        var point: String { lease.binding.key.point }
        /// The lease's HTB class (as SO_PRIORITY).
        var priority: UInt32 { lease.classid }
        /// The anchor probes go to.
        var anchor: IPAddress { lease.anchor.address }
        var family: IPAddress.Family { anchor.family }

        init(lease: LeaseFacts, startNs: Int64, bucket: Int, window: Int64) {
            self.lease = lease
            self.startNs = startNs
            self.bucket = Int32(bucket)
            emittedThrough = window - 1
        }
    }

    /// A probed session's ledger, boxed (see `Session.probe`).
    final class ProbeBox {
        var ledger: ProbeLedger
        init(_ ledger: ProbeLedger) { self.ledger = ledger }
    }

    /// One probe socket (a point and an address family) and its sessions.
    final class ProbeGroup {
        let point: String
        let socket: UDPBatchSocket
        /// Probing sessions by SSID (allocated densely from 1, so an array).
        var bySSID: [Session?] = [nil]
        var freeSSIDs: [UInt16] = []
        /// Leases refused a session because all 65 535 ids were taken.
        var unprobed = 0
        /// This tick's probes and, for each, its session and sequence number.
        var items: [UDPBatchSocket.Outgoing] = []
        var owners: [(Session, UInt32)] = []
        var stamps: [(UInt32, Int64)] = []

        init(point: String, socket: UDPBatchSocket) {
            self.point = point
            self.socket = socket
        }
    }

    struct PointIO {
        var nft: NFTablesSocket?
        var v4: ProbeGroup?
        var v6: ProbeGroup?
        /// Sockets per priority when the kernel does not take SO_PRIORITY per datagram.
        var perPriority: [UInt64: UDPBatchSocket] = [:]
    }

    var sessions = CompactDictionary<LeaseID, Session>()
    /// The send wheel: the probe interval in `wheel.count` ticks; each probing session sits in
    /// the slot of its phase, so a tick touches only the sessions due in it.
    var wheel: [[Session]]
    var lastTick: Int64
    /// Sessions that ended and wait for their last window's probe timeout.
    var ending: [Session] = []
    /// The earliest boot-clock instant at which some lease's pre-expiry counter read is due.
    /// Counter reads just before deadlines: (deadline - 150 ms, lease), earliest first; entries
    /// whose lease moved its deadline or ended are skipped when they surface.
    var preExpiry = DeadlineQueue()
    /// Live sessions per AISI (its metrics are released with the last one).
    var sessionsPerAISI = CompactDictionary<AISI, Int>()
    var bindings = BindingPool()
    /// Every probe socket.
    var groups: [ProbeGroup] = []
    /// (point, mark) -> lease id whose counters the mark's elements are.
    var byMark: [String: CompactDictionary<UInt32, LeaseID>] = [:]
    var io: [String: PointIO] = [:]
    var perDatagramPriority = true
    var nextBoundaryNs: Int64
    var nextCounterReadNs: Int64
    var counterReadNotBeforeNs: Int64 = 0
    /// Windows to finalize: (when, window index).
    var pendingFinalize: [(Int64, Int64)] = []
    var errorEstimate = STAMPErrorEstimate.systemClock()
    var lastEstimateNs: Int64 = 0
    var sendBuffer: [UInt8] = []
    /// The last counter dump of a point, by mark. Its storage is reused by the next read while it
    /// is small; past `scratchKeepLimit` entries it is freed after each read (6.5 MB at 100 000
    /// leases, held between reads for nothing; malloc maps and unmaps storage that large).
    let scratchKeepLimit = 4096
    /// Leases a point from which full counter reads go by key instead of one dump.
    let keyedReadFrom = 1024
    var counterScratch = CompactDictionary<UInt32, NFTQoSCounters>()
    /// Lets the threads controllers wait on run during long loops (see `CooperativeYield`).
    var yielder = CooperativeYield()

    init(_ owner: EvidenceExporter) {
        self.owner = owner
        settings = owner.settings
        windowNs = Int64(settings.windowMs) * 1_000_000
        intervalNs = Int64(settings.probeIntervalMs) * 1_000_000
        timeoutNs = Int64(settings.probeTimeoutMs) * 1_000_000
        let slots = max(1, min(20, settings.probeIntervalMs / 2))
        tickNs = intervalNs > 0 ? intervalNs / Int64(slots) : 50_000_000
        wheel = [[Session]](repeating: [], count: slots)
        let now = realtimeNanoseconds()
        lastTick = now / tickNs
        nextBoundaryNs = (now / windowNs + 1) * windowNs
        nextCounterReadNs = now + Int64(settings.counterIntervalMs) * 1_000_000
        for p in owner.points {
            var pio = PointIO()
            if let ns = p.namespace {
                do {
                    pio.nft = try NFTablesSocket(namespace: ns)
                } catch {
                    note("cannot open an nftables socket in \(ns) for counters: \(error)")
                }
                if settings.probeIntervalMs > 0 {
                    do {
                        let v4 = try UDPBatchSocket(family: .ipv4, namespace: ns)
                        let v6 = try UDPBatchSocket(family: .ipv6, namespace: ns)
                        try v4.enableSendTimestamps()
                        try v6.enableSendTimestamps()
                        pio.v4 = ProbeGroup(point: p.name, socket: v4)
                        pio.v6 = ProbeGroup(point: p.name, socket: v6)
                        groups += [pio.v4!, pio.v6!]
                    } catch {
                        let hint = [EAFNOSUPPORT, EPERM, EACCES].contains(error.errno)
                            ? " (IP sockets are not permitted here, e.g. systemd RestrictAddressFamilies= without AF_INET/AF_INET6;"
                              + " the shipped unit allows them)" : ""
                        note("cannot open probe sockets in \(ns): \(error)\(hint); no delay/loss probes at \(p.name), counters and records go on")
                    }
                }
            }
            io[p.name] = pio
        }
    }

    func note(_ message: String) {
        owner.logger.warning("evidence: \(message)")
        owner.stats.withLock { $0.lastError = message }
    }

    // MARK: loop

    /// The loop wakes once per tick (the probe interval / up to 20) or when leases change: it sends
    /// the probes of the tick's slot in one `sendmmsg` per socket, drains the replies that came
    /// meanwhile (their kernel receive timestamps make the delay independent of when they are
    /// read), reads counters when due, and finalizes windows.
    func run() {
        var pfds = [pollfd(fd: owner.wakeFD, events: Int16(POLLIN), revents: 0)]
        while true {
            let stopping = drainInbox()
            var now = realtimeNanoseconds()
            if stopping {
                finishAll(at: now)
                return
            }
            if now - lastEstimateNs > 10_000_000_000 {
                errorEstimate = STAMPErrorEstimate.systemClock()
                lastEstimateNs = now
            }
            receiveAll()
            yielder.check()
            sendDueProbes(now: now)
            yielder.check()
            if now >= nextBoundaryNs {
                timedCounterRead(attributeTo: nextBoundaryNs / windowNs - 1, now: now)
                pendingFinalize.append((nextBoundaryNs + timeoutNs, nextBoundaryNs / windowNs - 1))
                nextBoundaryNs += windowNs
                if nextBoundaryNs <= now { nextBoundaryNs = (now / windowNs + 1) * windowNs }
            } else if now >= counterReadNotBeforeNs && now >= nextCounterReadNs {
                timedCounterRead(attributeTo: now / windowNs, now: now)
            } else {
                let due = preExpiryDue()
                if !due.isEmpty { readCounters(attributeTo: now / windowNs, now: now, only: due) }
            }
            yielder.check()
            now = realtimeNanoseconds()
            runFinalizations(now: now)

            // Sleep until the next tick (or boundary, counter read, finalization).
            var next = min(nextBoundaryNs, nextCounterReadNs)
            if let f = pendingFinalize.map(\.0).min() { next = min(next, f) }
            if let p = nextPreExpiryNs() { next = min(next, p) }
            if passes.active { next = min(next, realtimeNanoseconds() + 1_000_000) }
            for s in ending { if let f = s.finalizeAtNs { next = min(next, f) } }
            if !sessions.isEmpty && settings.probeIntervalMs > 0 { next = min(next, (lastTick + 1) * tickNs) }
            var waitMs = Int32(clamping: max(0, min(1000, (next - realtimeNanoseconds() + 999_999) / 1_000_000)))
            // Changes queued from here on wake the thread only if it would not look by itself
            // within the slack; those queued meanwhile are taken at once.
            let lookAt = DispatchTime.now().uptimeNanoseconds + UInt64(waitMs) * 1_000_000
            let queued = owner.inbox.withLock { i -> Bool in
                i.nextLookNs = lookAt
                return !i.commands.isEmpty || i.stopping
            }
            if queued { waitMs = 0 }
            pfds[0].revents = 0
            if poll(&pfds, 1, waitMs) > 0 { aip_eventfd_drain(owner.wakeFD) }
        }
    }

    func receiveAll() {
        for g in groups { receive(g) }
    }

    /// Applies queued lease changes; true when the exporter is stopping.
    func drainInbox() -> Bool {
        let (cmds, stopping) = owner.inbox.withLock { i -> ([EvidenceExporter.Command], Bool) in
            let c = i.commands
            i.commands = []
            i.nextLookNs = 0   // awake
            return (c, i.stopping)
        }
        guard !cmds.isEmpty else { return stopping }
        let now = realtimeNanoseconds()
        for c in cmds {
            switch c {
            case .upsert(let lease): upsert(lease, now: now)
            case .end(let lease, let kind, let at): end(lease, kind, at: at.nanosecondsSinceEpoch, now: now)
            case .stall(let ms): usleep(useconds_t(ms) * 1000)
            }
            yielder.check()
        }
        if !cmds.isEmpty { updateProbeStride() }
        owner.stats.withLock {
            $0.sessions = sessions.count
            $0.probing = probingCount
            $0.probeStride = Int(probeStride)
            $0.priorityMode = perDatagramPriority ? "cmsg" : "socket-per-class"
        }
        return stopping
    }

    func upsert(_ lease: Lease, now: Int64) {
        if let s = sessions[lease.id] {
            // Renewal: new deadline, maybe new rates (the class stays); a delete+add of the qos
            // elements resets their counters, which the next read detects.
            if s.endNs == nil {
                let old = s.lease.binding
                s.lease = facts(lease)
                bindings.release(old)
                s.preExpiryDone = false
                schedulePreExpiry(lease)
            }
            return
        }
        let point = lease.enforcementPoint
        guard io[point] != nil else { return }
        // A probe stays in the ledger until its window is finalized (the window's end plus the
        // probe timeout): a window and a timeout of probes, plus one more timeout and 64 of slack
        // for a late loop (rounded up to a power of two by the ledger).
        let cap = Int((windowNs + 2 * timeoutNs) / max(1, intervalNs)) + 64
        var h: UInt64 = 1469598103934665603
        for b in lease.id.utf8 { h = (h ^ UInt64(b)) &* 1099511628211 }
        let s = Session(lease: facts(lease), startNs: now, bucket: Int(h % UInt64(wheel.count)), window: now / windowNs)
        if settings.probeIntervalMs > 0, let g = group(point, s.family), let ssid = allocateSSID(g) {
            s.probe = ProbeBox(ProbeLedger(mode: settings.reflectorMode, capacity: cap))
            s.ssid = ssid
            s.group = g
            g.bySSID[Int(ssid)] = s
            wheel[Int(s.bucket)].append(s)
        }
        sessions[lease.id] = s
        sessionsPerAISI[lease.aisi, default: 0] += 1
        if s.ssid != 0 { probingCount += 1 }
        byMark[point, default: [:]][lease.mark] = lease.id
        schedulePreExpiry(lease)
    }

    /// The session's facts of `lease`, its shared part interned (the caller owns one use of it).
    func facts(_ lease: Lease) -> LeaseFacts {
        LeaseFacts(id: lease.id, aisi: lease.aisi, binding: bindings.acquire(LeaseFacts.key(lease)), deadline: lease.deadline,
                   mark: lease.mark, classid: lease.qosClass.classid)
    }

    func schedulePreExpiry(_ lease: Lease) {
        preExpiry.push(BootInstant(nanoseconds: lease.deadline.nanoseconds &- 150_000_000), lease.id)
    }

    func end(_ lease: Lease, _ kind: LifecycleEvent.Kind, at: Int64, now: Int64) {
        guard let s = sessions[lease.id], s.endNs == nil else { return }
        s.endNs = max(at, s.startNs)
        s.endKind = kind
        if s.ssid != 0 { probingCount -= 1 }
        s.probe?.ledger.withdraw(sentAtOrAfter: s.endNs!)
        s.finalizeAtNs = now + timeoutNs
        ending.append(s)
        if byMark[s.point]?[lease.mark] == lease.id { byMark[s.point]?[lease.mark] = nil }
    }

    func group(_ point: String, _ family: IPAddress.Family) -> ProbeGroup? {
        family == .ipv4 ? io[point]?.v4 : io[point]?.v6
    }

    func allocateSSID(_ g: ProbeGroup) -> UInt16? {
        if let s = g.freeSSIDs.popLast() { return s }
        guard g.bySSID.count <= 0xFFFF else {
            // STAMP session ids are 16 bits: past 65 535 probing leases on one socket, further ones
            // get counters and records but no probes (said once, then every 10 000 leases).
            g.unprobed += 1
            if g.unprobed == 1 || g.unprobed % 10_000 == 0 {
                note("more than 65535 probe sessions on one socket at \(g.point): further leases are not probed (\(g.unprobed) so far)")
            }
            return nil
        }
        g.bySSID.append(nil)
        return UInt16(g.bySSID.count - 1)
    }

    func releaseSSID(_ s: Session) {
        guard s.ssid != 0, let g = s.group else { return }
        if g.bySSID[Int(s.ssid)] === s { g.bySSID[Int(s.ssid)] = nil }
        g.freeSSIDs.append(s.ssid)
        s.ssid = 0
        s.group = nil
    }

    // MARK: probes

    /// Leases with a probe session (counted when leases change).
    var probingCount = 0
    /// Each session probes every `probeStride`-th turn of the wheel (`max_probe_rate`).
    var probeStride: Int64 = 1

    func updateProbeStride() {
        guard settings.probeIntervalMs > 0 else { return }
        var stride: Int64 = 1
        if settings.maxProbeRate > 0 {
            // probes/s at full rate: probing × 1000 / interval; the smallest stride that fits.
            let wanted = Int64(probingCount) * 1000
            let budget = Int64(settings.maxProbeRate) * Int64(settings.probeIntervalMs)
            stride = max(1, (wanted + budget - 1) / budget)
        }
        if stride != probeStride {
            owner.logger.notice("evidence: probe rate limited", metadata: [
                "probing_leases": "\(probingCount)", "max_probe_rate": "\(settings.maxProbeRate)",
                "every_nth_interval": "\(stride)",
                "effective_interval_ms": "\(Int64(settings.probeIntervalMs) * stride)"])
            probeStride = stride
        }
    }

    func sendDueProbes(now: Int64) {
        guard settings.probeIntervalMs > 0 else { return }
        let tick = now / tickNs
        guard tick > lastTick else { return }
        // Every slot whose tick came since the last pass (at most one turn of the wheel).
        let from = max(lastTick + 1, tick - Int64(wheel.count) + 1)
        lastTick = tick
        sendBuffer.removeAll(keepingCapacity: true)
        let t1 = NTPTimestamp(unixNanoseconds: now)
        let window = now / windowNs
        let port = settings.probePort
        var packet = [UInt8](repeating: 0, count: STAMPSenderPacket.length)
        var any = false
        let stride = probeStride
        for t in from...tick {
            let b = Int(t % Int64(wheel.count))
            if wheel[b].contains(where: { $0.removed || $0.endNs != nil }) {
                wheel[b].removeAll { $0.removed || $0.endNs != nil }
            }
            let turn = t / Int64(wheel.count)
            for (k, s) in wheel[b].enumerated() {
                // Rate-limited: a slot's sessions take turns (k-th session on every stride-th turn).
                if stride > 1 && (turn + Int64(k)) % stride != 0 { continue }
                guard s.ssid != 0, let g = s.group, let box = s.probe else { continue }
                let seq = box.ledger.send(at: now, window: window)
                STAMPSenderPacket(sequence: seq, timestamp: t1, errorEstimate: errorEstimate, ssid: s.ssid).encode(into: &packet)
                g.items.append(UDPBatchSocket.Outgoing(offset: sendBuffer.count, length: packet.count, address: s.anchor,
                                                       port: port, priority: s.priority))
                g.owners.append((s, seq))
                sendBuffer.append(contentsOf: packet)
                any = true
            }
        }
        guard any else { return }
        var sent = 0
        for g in groups where !g.items.isEmpty {
            let sock = g.socket
            // Each probe's T1 is the kernel's timestamp of it entering the packet scheduler
            // (before the lease's HTB class); without one, the time just before the send call.
            let before = realtimeNanoseconds()
            for (s, seq) in g.owners { s.probe?.ledger.correctSendTime(seq, to: before) }
            let n = sendItems(g.point, sock, g.items)
            if perDatagramPriority && sock.lastAttempted < g.items.count {
                // The socket buffer was full: the rest never left (and are not counted).
                for (s, seq) in g.owners[sock.lastAttempted...] { s.probe?.ledger.withdraw(sequence: seq) }
            }
            if perDatagramPriority && sock.sendTimestamps {
                g.stamps.removeAll(keepingCapacity: true)
                sock.readSendTimestamps { g.stamps.append(($0, $1)) }
                let order = sock.lastSent
                if g.stamps.count == order.count {
                    g.stamps.sort { Int32(bitPattern: $0.0 &- $1.0) < 0 }
                    for (k, i) in order.enumerated() where i < g.owners.count {
                        let (s, seq) = g.owners[i]
                        s.probe?.ledger.correctSendTime(seq, to: g.stamps[k].1)
                    }
                }
            }
            sent += n
            g.items.removeAll(keepingCapacity: true)
            g.owners.removeAll(keepingCapacity: true)
        }
        owner.stats.withLock { $0.probesSent += UInt64(sent) }
    }

    /// Probes per `sendmmsg`: each call is kernel time no other thread on the CPU gets (see
    /// `UDPBatchSocket.send`), and the threads controllers wait on come first.
    static let probesPerSyscall = 16

    /// Sends with per-datagram priorities, or, on a kernel without SO_PRIORITY control messages,
    /// through one socket per priority.
    func sendItems(_ point: String, _ sock: UDPBatchSocket, _ items: [UDPBatchSocket.Outgoing]) -> Int {
        if perDatagramPriority {
            do {
                return try sock.send(items, buffer: sendBuffer, maxPerCall: Self.probesPerSyscall) { yielder.check() }
            } catch where error.errno == EINVAL {
                perDatagramPriority = false
                note("the kernel does not take SO_PRIORITY per datagram; using one probe socket per QoS class")
            } catch {
                note("sending probes at \(point): \(error)")
                return 0
            }
        }
        // Fallback: group by priority; each group through its own socket (bound to the shared
        // socket's port is not possible, so each class's probes come from a port of their own).
        var n = 0
        var groups: [UInt32: [UDPBatchSocket.Outgoing]] = [:]
        for it in items { groups[it.priority ?? 0, default: []].append(it) }
        for (prio, group) in groups {
            let key = UInt64(prio) << 1 | (sock.family == .ipv6 ? 1 : 0)
            var s = io[point]?.perPriority[key]
            if s == nil, let ns = owner.points.first(where: { $0.name == point })?.namespace {
                s = try? UDPBatchSocket(family: sock.family, namespace: ns)
                try? s?.setPriority(prio)
                io[point]?.perPriority[key] = s
            }
            guard let s else { continue }
            n += (try? s.send(group.map { var g = $0; g.priority = nil; return g }, buffer: sendBuffer,
                              maxPerCall: Self.probesPerSyscall) { yielder.check() }) ?? 0
        }
        return n
    }

    func receive(_ g: ProbeGroup) {
        let window = realtimeNanoseconds() / windowNs
        var received = 0
        let port = settings.probePort
        do {
            try g.socket.receive(max: 4096) { bytes, meta in
                guard meta.port == port, let reply = STAMPReflectorPacket(bytes: bytes), Int(reply.ssid) < g.bySSID.count,
                      let s = g.bySSID[Int(reply.ssid)], meta.address == s.anchor else { return }
                let t4 = meta.receiveNs != 0 ? meta.receiveNs : realtimeNanoseconds()
                if case .delay? = s.probe?.ledger.receive(reply, at: t4, currentWindow: window) { received += 1 }
            }
        } catch {
            note("receiving probe replies at \(g.point): \(error)")
        }
        if received > 0 { owner.stats.withLock { $0.probesReceived += UInt64(received) } }
    }

    // MARK: counters

    /// Whether some lease's deadline is under 150 ms away: the kernel removes a lease's counters
    /// with its elements at the deadline, so they are read just before.
    /// The leases whose pre-expiry read is due (they are read by key, not with a dump of all).
    func preExpiryDue() -> [LeaseID] {
        let boot = BootInstant(nanoseconds: aip_boottime_ns())
        let due = preExpiry.popDue(at: boot, isCurrent: preExpiryCurrent)
        for id in due { sessions[id]?.preExpiryDone = true }
        return due
    }

    func preExpiryCurrent(_ at: BootInstant, _ id: LeaseID) -> Bool {
        guard let s = sessions[id], s.endNs == nil, !s.preExpiryDone else { return false }
        return s.lease.deadline.nanoseconds &- 150_000_000 == at.nanoseconds
    }

    /// When (wall clock, ns) the next pre-expiry read is due, if any: the loop wakes for it
    /// (without probes nothing else would wake it in time).
    func nextPreExpiryNs() -> Int64? {
        guard let at = preExpiry.peek(isCurrent: preExpiryCurrent) else { return nil }
        let boot = aip_boottime_ns()
        return realtimeNanoseconds() &+ (at.nanoseconds > boot ? Int64(at.nanoseconds - boot) : 0)
    }

    /// A counter read, and when the next ones may come: a read of every lease's counters costs
    /// time (see `readCounters`: ~0.7 s at 100 000 leases here), so reads between window
    /// boundaries keep to a tenth of the thread (the next no sooner than nine times the last
    /// one's duration after it). A boundary read always happens: it closes the window's counters.
    func timedCounterRead(attributeTo window: Int64, now: Int64) {
        readCounters(attributeTo: window, now: now)
        let end = realtimeNanoseconds()
        counterReadNotBeforeNs = end + 9 * (end - now)
        nextCounterReadNs = max(now + Int64(settings.counterIntervalMs) * 1_000_000, counterReadNotBeforeNs)
        owner.stats.withLock { $0.lastCounterReadMs = Double(end - now) / 1e6 }
    }

    /// One read of the qos map's counters per point; each live lease's delta goes to `window`.
    /// Up to `keyedReadFrom` leases a point, one dump; from there on, by key (linear, where the
    /// dump is quadratic: see `readQoSCounters(marks:into:)`). `only`: just these leases (those
    /// whose deadline is near), by key.
    func readCounters(attributeTo window: Int64, now: Int64, only: [LeaseID]? = nil) {
        for (name, pio) in io {
            guard let nft = pio.nft, let marks = byMark[name], !marks.isEmpty else { continue }
            var wanted: [(UInt32, LeaseID)]? = nil
            if let only {
                wanted = only.compactMap { id in
                    guard let s = sessions[id], s.point == name, marks[s.lease.mark] == id else { return nil }
                    return (s.lease.mark, id)
                }
                if wanted!.isEmpty { continue }
            }
            do {
                if let wanted {
                    try nft.readQoSCounters(marks: wanted.map(\.0), into: &counterScratch)
                } else if marks.count >= keyedReadFrom {
                    try nft.readQoSCounters(marks: marks.keys, into: &counterScratch)
                } else {
                    try nft.readQoSCounters(into: &counterScratch)
                }
            } catch {
                note("reading counters at \(name): \(error)")
                continue
            }
            func attribute(_ mark: UInt32, _ id: LeaseID) {
                guard let s = sessions[id], let k = counterScratch[mark] else { return }
                var c = FlowCounters()
                c.originalPackets = k.originalPackets
                c.originalBytes = k.originalBytes
                c.replyPackets = k.replyPackets
                c.replyBytes = k.replyBytes
                var d = FlowCounters()
                if c.originalPackets < s.last.originalPackets || c.replyPackets < s.last.replyPackets
                    || c.originalBytes < s.last.originalBytes || c.replyBytes < s.last.replyBytes {
                    // The elements were replaced (renewal by delete+add): the counters restarted at 0.
                    d = c
                    s.windows.update(window) { $0.reset = true }
                } else {
                    d.originalPackets = c.originalPackets - s.last.originalPackets
                    d.originalBytes = c.originalBytes - s.last.originalBytes
                    d.replyPackets = c.replyPackets - s.last.replyPackets
                    d.replyBytes = c.replyBytes - s.last.replyBytes
                }
                s.last = c
                s.haveBaseline = true
                s.windows.update(window) { w in
                    w.delta += d
                    w.asOf = now
                }
            }
            if let wanted {
                for (mark, id) in wanted { attribute(mark, id); yielder.check() }
            } else {
                for (mark, id) in marks { attribute(mark, id); yielder.check() }
            }
        }
        if counterScratch.count > scratchKeepLimit { counterScratch.removeAll(keepingCapacity: false) }
        owner.stats.withLock { $0.counterReads += 1 }
    }

    // MARK: windows and records

    /// The window being written and its sessions (by lease id) still to emit. A window
    /// of 100 000 leases is emitted `finalizeChunk` records per loop turn, and only while the
    /// log's writer keeps up, so the records in memory stay bounded (all at once, they would be
    /// hundreds of MB of short-lived objects every window, and the heap would keep the holes).
    /// 512 rather than 2 048: at most five chunks are in flight, and at 100 000 leases the
    /// smaller ones left the agent's RSS 2 s after the bench's churn at 186-192 MB in six runs
    /// against 188-211 MB in nine.
    var passes = FinalizationPasses<Session>()
    func sessionsInOrder() -> [Session] { sessions.values.sorted(by: { $0.lease.id < $1.lease.id }) }
    let finalizeChunk = 512

    func runFinalizations(now: Int64) {
        var records: [EVIRecord] = []
        let newestDue = pendingFinalize.filter { $0.0 <= now }.map(\.1).max()
        pendingFinalize.removeAll { $0.0 <= now }
        if let w = newestDue {
            // Behind (the writer could not keep up, e.g. starved while admissions kept the cores
            // busy)? Then only the newest window is queued: each session's next record covers
            // every window it still owes up to it (`coalesced_windows`), so records per second,
            // the queue and the work owed at stop stay bounded however far behind it fell.
            passes.due(w, snapshot: sessionsInOrder)
        }
        if owner.log.backlog < 4 * finalizeChunk {
            // Ends that came in meanwhile first (a starved thread can get here long after this
            // loop turn began): a session must not have the window it ended in written as an
            // ordinary one, which would leave it without a final record.
            _ = drainInbox()
            while records.count < finalizeChunk, let (s, w) = passes.next(snapshot: sessionsInOrder) {
                yielder.check()
                guard !s.removed, w > s.emittedThrough else { continue }
                // An ending session's last windows are its final records (`finalRecords`).
                if s.endNs != nil { continue }
                records.append(windowRecord(s, windows: s.emittedThrough + 1...w, final: false))
                s.emittedThrough = w
            }
        }
        let done = ending.filter { ($0.finalizeAtNs ?? .max) <= now }
        if !done.isEmpty {
            ending.removeAll { ($0.finalizeAtNs ?? .max) <= now }
            for s in done.sorted(by: { $0.lease.id < $1.lease.id }) {
                records += finalRecords(s, end: s.endNs ?? now)
                remove(s)
                yielder.check()
            }
        }
        if !records.isEmpty {
            owner.log.append(records)
            owner.stats.withLock { $0.windows += UInt64(records.count) }
        }
    }

    /// A session's last records: the windows it still owes before its last one (in one record
    /// when there are several), then the last window, marked final.
    func finalRecords(_ s: Session, end: Int64) -> [EVIRecord] {
        var out: [EVIRecord] = []
        let last = end / windowNs
        let first = s.emittedThrough + 1
        if first < last { out.append(windowRecord(s, windows: first...(last - 1), final: false)) }
        if first <= last { out.append(windowRecord(s, windows: last...last, final: true)) }
        s.emittedThrough = last
        return out
    }

    func remove(_ s: Session) {
        s.removed = true
        if s.ssid != 0 && s.endNs == nil { probingCount -= 1 }
        releaseSSID(s)
        if byMark[s.point]?[s.lease.mark] == s.lease.id { byMark[s.point]?[s.lease.mark] = nil }
        sessions[s.lease.id] = nil
        bindings.release(s.lease.binding)
        let left = (sessionsPerAISI[s.lease.aisi] ?? 1) - 1
        sessionsPerAISI[s.lease.aisi] = left > 0 ? left : nil
        if left <= 0 { owner.metrics?.releaseAISI(s.lease.aisi) }
    }

    /// Every live lease's last window at stop; written before the log closes.
    func finishAll(at now: Int64) {
        readCounters(attributeTo: now / windowNs, now: now)
        // Let replies in flight arrive (bounded: the probe timeout, at most 1 s).
        let until = realtimeNanoseconds() + min(timeoutNs, 1_000_000_000)
        while realtimeNanoseconds() < until {
            // (Send timestamps still queued would make poll report POLLERR at once.)
            for g in groups { g.socket.readSendTimestamps { _, _ in } }
            var pfds = groups.map { pollfd(fd: $0.socket.fd, events: Int16(POLLIN), revents: 0) }
            guard !pfds.isEmpty, sessions.values.contains(where: { $0.ssid != 0 }) else { break }
            if poll(&pfds, nfds_t(pfds.count), 50) <= 0 { break }
            for (i, g) in groups.enumerated() where pfds[i].revents != 0 { receive(g) }
        }
        // Handed to the log in chunks, each once the log has written most of the previous ones:
        // sessions that fell behind (a writer starved while admissions kept a core busy) can owe
        // many windows each, and all of them at once would be gigabytes at 100 000 leases.
        var records: [EVIRecord] = []
        for s in sessions.values.sorted(by: { $0.lease.id < $1.lease.id }) {
            if s.endNs == nil {
                s.endNs = now
                s.endKind = nil
            }
            records += finalRecords(s, end: s.endNs!)
            if records.count >= finalizeChunk {
                // (Not forever: a writer that makes no progress for 5 s, stuck on its disk, gets
                // the rest queued.)
                var stalled = 0
                var last = owner.log.backlog
                while last >= 4 * finalizeChunk && stalled < 2_500 {
                    usleep(2_000)
                    let b = owner.log.backlog
                    stalled = b < last ? 0 : stalled + 1
                    last = b
                }
                owner.log.append(records)
                records.removeAll(keepingCapacity: true)
            }
        }
        owner.log.append(records)
    }

    /// The record of `range` (one window, or several a session owed after falling behind).
    func windowRecord(_ s: Session, windows range: ClosedRange<Int64>, final: Bool) -> EVIRecord {
        let w = range.upperBound
        let start = max(range.lowerBound * windowNs, s.startNs)
        let end = final ? min((w + 1) * windowNs, s.endNs ?? (w + 1) * windowNs) : (w + 1) * windowNs
        var stats = ProbeLedger.WindowStats()
        if let box = s.probe {
            for x in range { stats.merge(box.ledger.finalize(window: x)) }
        }
        var f = JSON.Object()
        var window = JSON.Object()
        window["start"] = .string(WallTime(nanosecondsSinceEpoch: start).rfc3339)
        window["end"] = .string(WallTime(nanosecondsSinceEpoch: end).rfc3339)
        window["ms"] = .int(max(0, (end - start) / 1_000_000))
        if range.count > 1 { window["coalesced_windows"] = .int(range.count) }
        f["window"] = .object(window)
        if final { f["end_reason"] = .string(s.endKind?.rawValue ?? "agent_stopped") }
        f["qos_class"] = .string("\(s.lease.qosClass.description)@\(s.lease.qosClass.interface)")
        if owner.points.first(where: { $0.name == s.point })?.namespace != nil && io[s.point]?.nft != nil {
            var taken: WindowCounters?
            for x in range {
                guard let t = s.windows.take(x) else { continue }
                if taken == nil { taken = t } else { taken!.merge(t) }
            }
            let d = taken?.delta ?? FlowCounters()
            var flow = JSON.Object()
            flow["client_to_anchor"] = ["packets": .int(d.originalPackets), "bytes": .int(d.originalBytes)]
            flow["anchor_to_client"] = ["packets": .int(d.replyPackets), "bytes": .int(d.replyBytes)]
            if taken?.reset == true { flow["counter_reset"] = true }
            if let asOf = taken?.asOf, asOf != 0, final || asOf < end - 50_000_000 {
                flow["counted_until"] = .string(WallTime(nanosecondsSinceEpoch: asOf).rfc3339)
            }
            f["flow"] = .object(flow)
        } else {
            f["flow"] = .null
        }
        // Older windows' counters that never got a record (none expected) are dropped.
        s.windows.removeAll(before: w)

        if s.ssid != 0 || stats.sent > 0 {
            var p = JSON.Object()
            p["sent"] = .int(stats.sent)
            p["received"] = .int(stats.received)
            let stateful = settings.reflectorMode == .stateful
            p["lost_forward"] = stateful ? .int(stats.lostForward) : .null
            p["lost_backward"] = stateful ? .int(stats.lostBackward) : .null
            p["lost_unknown"] = .int(stats.lostUnknown)
            if stats.duplicates > 0 { p["duplicates"] = .int(stats.duplicates) }
            if stats.reordered > 0 { p["reordered"] = .int(stats.reordered) }
            if stats.late > 0 { p["late"] = .int(stats.late) }
            f["probes"] = .object(p)
            var loss = JSON.Object()
            func ratio(_ a: Int, _ b: Int) -> JSON { b > 0 ? .double((Double(a) / Double(b) * 1e6).rounded() / 1e6) : .null }
            loss["ratio"] = ratio(stats.sent - stats.received, stats.sent)
            loss["forward"] = stateful ? ratio(stats.lostForward, stats.sent) : .null
            loss["backward"] = stateful ? ratio(stats.lostBackward, stats.received + stats.lostBackward) : .null
            f["loss"] = .object(loss)
            let summary = DelaySummary(samples: stats.delaysNs)
            f["delay_ms"] = summary?.json ?? .null
            f["jitter_ms"] = stats.jitterNs.map { .double(($0 / 1000).rounded() / 1000) } ?? .null
            var h = DelayHistogram()
            for d in stats.delaysNs { h.record(nanoseconds: d) }
            f["delay_hist"] = h.json
            owner.metrics?.observeWindow(aisi: s.lease.aisi, stats: stats, summary: summary, stateful: stateful)
        } else {
            f["probes"] = .null
        }
        let l = s.lease
        return EVIRecord(kind: .window, event: final ? "final" : nil, aisi: l.aisi, leaseID: l.id, enforcementPoint: s.point,
                         anchor: l.anchor, qos: l.qos, relatedLease: nil,
                         time: WallTime(nanosecondsSinceEpoch: end), monotonicNs: aip_boottime_ns(), fields: f)
    }
}

import AIPagingCore
import CAIPagingShim
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// The running agent: lease service, control server, expiry timer and evidence, wired together.
/// The executable builds one with kernel backends; tests build one with the in-memory backend.
public final class AgentRuntime: Sendable {
    public let config: AgentConfig
    public let service: LeaseService
    public let evidence: EvidenceStore
    public let server: ControlServer
    public let metrics: AgentMetrics
    public let clock: any AgentClock
    /// Where each enforcement point is measured (probes, counters).
    let evidencePoints: [EvidencePoint]
    let logger: Logger
    /// The lease service's thread (and, without `http_thread`, the control server's).
    let loopGroup: MultiThreadedEventLoopGroup
    /// Runs tasks on the lease service's thread (the reconcile loop and watchdog pings).
    let serviceExecutor: EventLoopTaskExecutor

    public init(config: AgentConfig, policy: Policy, points: [EnforcementPointConfig],
                backends: sending [String: any EnforcementBackend], clock: any AgentClock = SystemClock(),
                logger: Logger = Logger(label: "aipaging"), journal: sending LeaseJournal? = nil) {
        self.config = config
        self.clock = clock
        self.logger = logger
        let loopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.loopGroup = loopGroup
        let serviceLoop = loopGroup.next()
        serviceExecutor = EventLoopTaskExecutor(serviceLoop)
        serviceLoop.execute { ThreadScheduling.enterLatencyCritical(.lease) }
        // Points with a real kernel are measured in their namespace; others (the in-memory test
        // backend) get lifecycle records and windows without probes or counters.
        evidencePoints = points.map { p in
            EvidencePoint(name: p.name, namespace: backends[p.name] is KernelBackend ? (p.netns.map { .named($0) } ?? .current) : nil)
        }
        let service = LeaseService(points: points, backends: backends, policy: policy, clock: clock,
                                   groupSize: config.groupSize, logger: logger, loop: serviceLoop, journal: journal)
        self.service = service
        let evidence = EvidenceStore()
        self.evidence = evidence
        let metrics = AgentMetrics(maxAISI: config.evidence.metricsMaxAISI)
        self.metrics = metrics
        var limits = ServerLimits()
        limits.maxBodyBytes = config.maxBodyBytes
        limits.maxBatchBodyBytes = config.maxBatchBodyBytes
        limits.requestTimeout = .milliseconds(Int64(config.requestTimeoutMs))
        let api = ControlAPI(service: service, clock: clock, evidence: evidence, metrics: metrics)
        // With `http_thread` the server makes (and owns) a one-thread group of its own.
        self.server = ControlServer(api: api, limits: limits, group: config.httpThread ? nil : loopGroup, logger: logger)
    }

    /// Reconciles the kernel, then serves on `socket` until the task is cancelled. On the way
    /// out the run loop stops, and with `flush_on_exit` every piece of kernel state is removed.
    ///
    /// Under systemd (`notifier` enabled): `READY=1` with a `STATUS=` line once the journal is
    /// replayed, the first reconcile is done and the socket serves, `STATUS=` whenever the line
    /// changes, and with a `watchdog`, `WATCHDOG=1` every half watchdog timeout from the
    /// reconcile loop, each only after a round trip through the lease service (a hung service
    /// stops the pings). With `drift_repair`, the kernel is watched for changes by other
    /// processes from before the first reconcile on.
    public func run(socket: ListeningSocket, useTimer: Bool = true, notifier: SystemdNotifier = SystemdNotifier(address: nil),
                    watchdog: SystemdWatchdog? = nil, onReady: @escaping @Sendable () -> Void = {}) async throws {
        let exporter = try await startEvidence()
        let recovered: (restored: Int, dropped: Int, truncatedBytes: Int)
        do {
            recovered = try await service.recover()
        } catch {
            await stopEvidence(exporter)
            throw error
        }
        if recovered.restored + recovered.dropped > 0 {
            logger.notice("recovered leases from the journal",
                          metadata: ["live": "\(recovered.restored)", "ended_while_down": "\(recovered.dropped)"])
        }
        if config.driftRepair { await service.startWatching() }
        do {
            try await service.start()
        } catch {
            await service.stop(flush: false)
            await stopEvidence(exporter)
            throw error
        }
        exporter.start(initial: Array(await service.leaseStore().values))
        let timer: ExpiryTimer?
        do {
            timer = useTimer ? try ExpiryTimer { [service] in service.tick() } : nil
        } catch {
            await stop(exporter)
            throw error
        }
        if let timer {
            await service.setDeadlineObserver { timer.arm(at: $0) }
        }
        defer {
            timer?.stop()
            if let path = socket.path { unlink(path) }
        }
        let service = self.service, server = self.server, serviceExecutor = self.serviceExecutor
        let interval: Duration? = config.reconcileIntervalMs > 0 ? .milliseconds(config.reconcileIntervalMs) : nil
        let (served, servedCont) = AsyncStream<Void>.makeStream()
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await server.run(on: socket) {
                        onReady()
                        servedCont.yield()
                        servedCont.finish()
                    }
                }
                if interval != nil || notifier.isEnabled {
                    // On the agent's event loop, like the lease service: the loop's ticks and
                    // pings depend on that thread alone, not on the cooperative pool.
                    group.addTask(executorPreference: serviceExecutor) {
                        for await _ in served { break }
                        try await Self.reconcileLoop(service: service, loop: serviceExecutor.loop, interval: interval,
                                                     notifier: notifier, watchdog: watchdog)
                    }
                }
                _ = try await group.next()
                group.cancelAll()
            }
        } catch is CancellationError {
        } catch {
            await stop(exporter)
            throw error
        }
        await stop(exporter)
    }

    /// The background loop: `periodic()` every reconcile interval; under systemd, the status line
    /// and the watchdog pings. Ticks at the shorter of the reconcile interval and half the
    /// watchdog timeout, with timers of the agent's event loop `loop` (not `Task.sleep`, whose
    /// timers go through the cooperative pool): the pings depend on the agent's thread alone.
    static func reconcileLoop(service: LeaseService, loop: any EventLoop, interval: Duration?, notifier: SystemdNotifier,
                              watchdog: SystemdWatchdog?) async throws {
        let clock = ContinuousClock()
        var status = await service.statusLine()
        notifier.ready(status: status)
        let pingEvery = watchdog?.pingInterval
        let tick = [interval, pingEvery].compactMap { $0 }.min() ?? .seconds(1)
        if pingEvery != nil { notifier.watchdog() }
        var nextReconcile = interval.map { clock.now + $0 }
        var lastPing = clock.now
        while !Task.isCancelled {
            try await sleep(tick, on: loop)
            if let interval, let next = nextReconcile, clock.now >= next {
                await service.periodic()
                nextReconcile = clock.now + interval
            }
            guard notifier.isEnabled else { continue }
            // The awaited call runs on the service's executor: it returns only while the service
            // is processing, so a hung service stops the pings.
            let line = await service.statusLine()
            if line != status {
                status = line
                notifier.status(line)
            }
            if let pingEvery, clock.now - lastPing >= pingEvery - tick {
                notifier.watchdog()
                lastPing = clock.now
            }
        }
    }

    /// Sleeps for `duration` on a timer of `loop`; throws `CancellationError` when cancelled.
    static func sleep(_ duration: Duration, on loop: any EventLoop) async throws {
        let c = duration.components
        let scheduled = loop.scheduleTask(in: .nanoseconds(c.seconds * 1_000_000_000 + c.attoseconds / 1_000_000_000)) {}
        do {
            try await withTaskCancellationHandler {
                try await scheduled.futureResult.get()
            } onCancel: {
                scheduled.cancel()
            }
        } catch {
            throw CancellationError()
        }
    }

    func stop(_ exporter: EvidenceExporter) async {
        await service.stop(flush: config.flushOnExit)
        await server.shutdown()
        await stopEvidence(exporter)
        logger.notice("stopped", metadata: ["flush_on_exit": "\(config.flushOnExit)"])
    }

    /// Opens the evidence key and log, records the start, and routes lifecycle events into the
    /// log and the measurement exporter.
    func startEvidence() async throws -> EvidenceExporter {
        let key = try EvidenceKey.loadOrCreate(dir: config.stateDir)
        let log = try EvidenceLog(stateDir: config.stateDir, key: key, syncIntervalMs: config.evidence.syncIntervalMs,
                                  segmentBytes: config.evidence.segmentBytes, logger: logger)
        let exporter = EvidenceExporter(settings: config.evidence, points: evidencePoints, log: log, metrics: metrics, logger: logger)
        evidence.attach(log: log, exporter: exporter)
        let now = clock.now()
        var f = JSON.Object()
        f["version"] = .string(AgentVersion.string)
        f["public_key"] = .string(key.publicKeyBase64URL)
        f["settings"] = config.evidence.json
        f["points"] = .array(evidencePoints.map { p in
            ["name": .string(p.name), "measured": .bool(p.namespace != nil)]
        })
        if log.recoveredTornBytes > 0 { f["torn_bytes_dropped"] = .int(log.recoveredTornBytes) }
        log.append(EVIRecord(kind: .agent, event: "started", aisi: nil, leaseID: nil, enforcementPoint: nil, anchor: nil, qos: nil,
                             relatedLease: nil, time: now.wall, monotonicNs: now.boot.nanoseconds, fields: f))
        let evidence = self.evidence, metrics = self.metrics
        await service.setMetrics(metrics)
        await service.setLifecycleObserver { e, lease in
            evidence.record(e, lease: lease)
            exporter.observe(e, lease: lease)
            metrics.event(e.kind)
        }
        logger.info("evidence log open", metadata: ["dir": "\(log.directory)", "kid": "\(key.keyID)",
                                                    "head_seq": "\(log.status.headSeq)"])
        return exporter
    }

    /// Last windows of live leases, the stop record, and a final sync of the log.
    func stopEvidence(_ exporter: EvidenceExporter) async {
        await onThread { exporter.stop() }
        guard let log = evidence.log else { return }
        let now = clock.now()
        log.append(EVIRecord(kind: .agent, event: "stopped", aisi: nil, leaseID: nil, enforcementPoint: nil, anchor: nil, qos: nil,
                             relatedLease: nil, time: now.wall, monotonicNs: now.boot.nanoseconds))
        await onThread { log.close() }
    }
}

extension LeaseService {
    /// The one-line state for systemd's `STATUS=`: "serving 3 leases on 1 enforcement point",
    /// plus the points waiting for a resync. O(points).
    public func statusLine() -> String {
        let n = table.liveCount
        var line = "serving \(n) lease\(n == 1 ? "" : "s") on \(points.count) enforcement point\(points.count == 1 ? "" : "s")"
        let behind = points.filter { $0.value.needsResync }.map(\.key).sorted()
        if !behind.isEmpty { line += "; kernel resync pending at \(behind.joined(separator: ", "))" }
        return line
    }

    /// Background duty: end anything due (should the timer have been missed), retry a failed
    /// reconcile, and let each backend do its deferred housekeeping.
    public func periodic() {
        for p in points.values { p.backend.maintenance() }
        var work = false
        let now = clock.now().boot
        let next = earliestDeadline()
        if let next, next <= now {
            pending.append(.tick)
            work = true
        }
        if points.values.contains(where: \.needsResync) {
            pending.append(.resync)
            work = true
        }
        if work { scheduleFlush() }
        trimMemoryWhenIdle(now: now, nextDeadline: next)
    }

    /// After a burst of lease work (thousands of leases admitted, revoked or ended), gives the
    /// memory malloc kept from it back to the kernel: the burst's short-lived objects (request
    /// bodies, JSON, batch tasks) leave free holes that glibc does not return on its own (at
    /// 100 000 leases: ~100 MB of RSS). A trim takes milliseconds with malloc locked, so only
    /// when the service has been idle for a second, no deadline is due within 250 ms, and at
    /// most every 5 s. With 10 000 leases or more it also trims once a minute without churn: the
    /// evidence exporter's records of every window (100 000 a window at 100 000 leases) leave
    /// holes of their own (~13 MB of RSS at 100 000 leases without probes).
    func trimMemoryWhenIdle(now: BootInstant, nextDeadline: BootInstant?) {
        let periodic = table.liveCount >= 10_000 && now.nanoseconds &- lastTrimBoot.nanoseconds >= 60_000_000_000
        guard churnSinceTrim >= 1024 || periodic, let last = lastBatchBoot, now.nanoseconds &- last.nanoseconds >= 1_000_000_000,
              now.nanoseconds &- lastTrimBoot.nanoseconds >= 5_000_000_000 else { return }
        if let nextDeadline, nextDeadline.nanoseconds <= now.nanoseconds &+ 250_000_000 { return }
        aip_malloc_trim()
        churnSinceTrim = 0
        lastTrimBoot = clock.now().boot
        stats.memoryTrims += 1
        stats.lastTrimNs = lastTrimBoot.nanoseconds &- now.nanoseconds
    }
}

/// Process-wide settings the agent binary applies first thing.
public enum ProcessTuning {
    /// malloc for a long-running process with bursty large allocations: a fixed mmap threshold
    /// (transient arrays of a burst go back to the kernel when freed instead of fragmenting the
    /// heap). See `aip_malloc_tune`.
    public static func tuneMalloc() { aip_malloc_tune() }
}

import AIPagingCore
import Logging
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
    public let clock: any AgentClock
    let logger: Logger
    /// The agent's thread: control server I/O, request handling and the lease service.
    let loopGroup: MultiThreadedEventLoopGroup

    public init(config: AgentConfig, policy: Policy, points: [EnforcementPointConfig],
                backends: sending [String: any EnforcementBackend], clock: any AgentClock = SystemClock(),
                logger: Logger = Logger(label: "aipaging"), journal: sending LeaseJournal? = nil) {
        self.config = config
        self.clock = clock
        self.logger = logger
        let loopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.loopGroup = loopGroup
        let service = LeaseService(points: points, backends: backends, policy: policy, clock: clock,
                                   groupSize: config.groupSize, logger: logger, loop: loopGroup.next(), journal: journal)
        self.service = service
        let evidence = EvidenceStore()
        self.evidence = evidence
        var limits = ServerLimits()
        limits.maxBodyBytes = config.maxBodyBytes
        limits.maxBatchBodyBytes = config.maxBatchBodyBytes
        limits.requestTimeout = .milliseconds(Int64(config.requestTimeoutMs))
        let api = ControlAPI(service: service, clock: clock, evidence: evidence,
                             metrics: MetricsRenderer(service: service, evidence: evidence))
        self.server = ControlServer(api: api, limits: limits, group: loopGroup, logger: logger)
    }

    /// Reconciles the kernel, then serves on `socket` until the task is cancelled. On the way
    /// out the run loop stops, and with `flush_on_exit` every piece of kernel state is removed.
    public func run(socket: ListeningSocket, useTimer: Bool = true, onReady: @escaping @Sendable () -> Void = {}) async throws {
        let recovered = try await service.recover()
        if recovered.restored + recovered.dropped > 0 {
            logger.notice("recovered leases from the journal",
                          metadata: ["live": "\(recovered.restored)", "ended_while_down": "\(recovered.dropped)"])
        }
        try await service.start()
        let timer: ExpiryTimer? = useTimer ? try ExpiryTimer { [service] in service.tick() } : nil
        if let timer {
            await service.setDeadlineObserver { timer.arm(at: $0) }
        }
        defer {
            timer?.stop()
            if let path = socket.path { unlink(path) }
        }
        let service = self.service, evidence = self.evidence, server = self.server
        let interval = config.reconcileIntervalMs
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await evidence.follow(service.events) }
                group.addTask { try await server.run(on: socket, onReady: onReady) }
                if interval > 0 {
                    group.addTask {
                        while !Task.isCancelled {
                            try await Task.sleep(for: .milliseconds(interval))
                            await service.periodic()
                        }
                    }
                }
                _ = try await group.next()
                group.cancelAll()
            }
        } catch is CancellationError {
        } catch {
            await stop()
            throw error
        }
        await stop()
    }

    func stop() async {
        await service.stop(flush: config.flushOnExit)
        await server.shutdown()
        logger.notice("stopped", metadata: ["flush_on_exit": "\(config.flushOnExit)"])
    }
}

extension LeaseService {
    /// Background duty: end anything due (should the timer have been missed), retry a failed
    /// reconcile, and let each backend do its deferred housekeeping.
    public func periodic() {
        for p in points.values { p.backend.maintenance() }
        var work = false
        if let next = deadlines.peek(isCurrent: { [table] instant, id in table[id]?.nextDeadline == instant }),
           next <= clock.now().boot {
            pending.append(.tick)
            work = true
        }
        if points.values.contains(where: \.needsResync) {
            pending.append(.resync)
            work = true
        }
        if work { scheduleFlush() }
    }
}

import AIPagingAgent
import AIPagingCore
import ArgumentParser
import Dispatch
import Foundation
import Logging

@main
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aipaging-agent",
        abstract: "AI-Paging user-plane enforcement agent: COMMIT leases in, nftables steering and HTB QoS out.",
        discussion: """
        Runs in the foreground until SIGTERM/SIGINT. SIGHUP reloads the policy file without touching leases.
        Flags override the config file; --netns and --capacity-kbit configure the first enforcement point.
        Under systemd: Type=notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and socket activation
        (the control socket passed as fd 3 is used instead of binding --socket).
        """,
        version: AgentVersion.string)

    @Option(help: "Control socket path (HTTP/1.1 over a Unix stream socket).")
    var socket: String?
    @Option(help: "Network namespace (/run/netns/NAME) whose nftables and tc state the agent owns.")
    var netns: String?
    @Option(name: .customLong("state-dir"), help: "Directory for state that must survive a restart.")
    var stateDir: String?
    @Option(name: .customLong("capacity-kbit"), help: "Guaranteed-rate capacity of the enforcement point (kbit/s).")
    var capacityKbit: UInt64?
    @Option(help: "Agent config file (JSON).")
    var config: String?
    @Option(help: "Operator policy file (JSON). Without it the built-in lab policy applies.")
    var policy: String?
    @Flag(name: .customLong("flush-on-exit"), help: "Remove all kernel state on a clean stop (default: leave it; kernel timeouts end it).")
    var flushOnExit = false
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error.")
    var logLevel: String?

    func run() async throws {
        ProcessTuning.tuneMalloc()
        var cfg = AgentConfig()
        if let path = config {
            do {
                cfg = try AgentConfig.parse(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
            } catch {
                throw ValidationError("cannot load config \(path): \(error)")
            }
        }
        cfg.applyFlags(socket: socket, netns: netns, stateDir: stateDir, capacityKbit: capacityKbit,
                       policy: policy, flushOnExit: flushOnExit ? true : nil)
        do { try cfg.checkPointNamespaces() } catch { throw ValidationError("\(error) (--netns names the first point's namespace)") }
        let level = Logger.Level(rawValue: logLevel ?? cfg.logLevel) ?? .info
        LoggingSystem.bootstrap { JournalLogHandler(label: $0, level: level) }
        let logger = Logger(label: "aipaging")
        ThreadScheduling.configure(latencyNice: cfg.leaseThreadNice)   // before any thread starts

        let pol = try loadPolicy(cfg.policyPath, logger: logger)
        let points = cfg.effectivePoints(policy: pol, capacityFlag: capacityKbit)
        try FileManager.default.createDirectory(atPath: cfg.stateDir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o750])

        var backends: [String: any EnforcementBackend] = [:]
        for p in points {
            do {
                backends[p.name] = try KernelBackend(point: p, logger: logger)
            } catch {
                logger.critical("cannot open the kernel of enforcement point", metadata: ["point": "\(p.name)", "error": "\(error)"])
                throw ExitCode(2)
            }
        }
        let cfg0 = cfg
        let journal: LeaseJournal
        do {
            journal = try LeaseJournal(stateDir: cfg.stateDir)
        } catch {
            logger.critical("cannot open the lease journal", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }
        let runtime = AgentRuntime(config: cfg, policy: pol, points: points, backends: backends, logger: logger, journal: journal)
        let notifier = SystemdNotifier()
        let watchdog = SystemdWatchdog.fromEnvironment()
        let listening: ListeningSocket
        let socketPath: String
        do {
            if let activated = try SocketActivation.listeningSocket() {
                listening = activated.socket
                socketPath = activated.boundPath
                logger.info("using the control socket passed by systemd (socket activation)", metadata: ["socket": "\(socketPath)"])
            } else {
                listening = try openSocket(cfg, logger: logger)
                socketPath = cfg.socketPath
            }
        } catch {
            logger.critical("cannot open the control socket", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }
        if let watchdog { logger.info("systemd watchdog armed", metadata: ["timeout": "\(watchdog.timeout)"]) }

        let task = Task {
            try await runtime.run(socket: listening, notifier: notifier, watchdog: watchdog) {
                logger.notice("serving", metadata: ["socket": "\(socketPath)",
                                                     "points": "\(points.map { "\($0.name)@\($0.netns ?? "-")" }.joined(separator: ","))",
                                                     "policy": "\(pol.name)"])
            }
        }
        let signals = SignalHandlers()
        signals.on(SIGTERM) { logger.notice("SIGTERM: stopping"); notifier.stopping(); task.cancel() }
        signals.on(SIGINT) { logger.notice("SIGINT: stopping"); notifier.stopping(); task.cancel() }
        signals.on(SIGHUP) {
            notifier.reloading()
            do {
                let p = try loadPolicy(cfg0.policyPath, logger: logger)
                Task {
                    await runtime.service.updatePolicy(p)
                    logger.notice("policy reloaded", metadata: ["policy": "\(p.name)"])
                    notifier.ready(status: await runtime.service.statusLine())
                }
            } catch {
                logger.error("policy reload failed; keeping the current policy", metadata: ["error": "\(error)"])
                Task { notifier.ready(status: "\(await runtime.service.statusLine()); policy reload failed, see the log") }
            }
        }
        do {
            try await task.value
        } catch {
            logger.critical("agent failed", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        _ = signals
    }
}

func loadPolicy(_ path: String?, logger: Logger) throws -> Policy {
    guard let path else {
        logger.warning("no --policy given: running the built-in LAB policy (any anchor, unsigned leases accepted, root peers only, ttl up to one day)")
        return .lab
    }
    do {
        return try Policy.parse(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
    } catch {
        throw ValidationError("cannot load policy \(path): \(error)")
    }
}

func openSocket(_ cfg: AgentConfig, logger: Logger) throws -> ListeningSocket {
    let dir = (cfg.socketPath as NSString).deletingLastPathComponent
    if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755]) }
    var gid: gid_t?
    if let g = cfg.socketGroup {
        if let n = UInt32(g) { gid = n } else if let gr = getgrnam(g) { gid = gr.pointee.gr_gid } else {
            throw ValidationError("socket group \(g) does not exist")
        }
    }
    let mode = mode_t(cfg.socketMode ?? (gid == nil ? 0o600 : 0o660))
    return try ListeningSocket.bind(path: cfg.socketPath, mode: mode, group: gid)
}

/// Signal handlers on a dispatch queue (signals are blocked from default handling).
final class SignalHandlers: Sendable {
    private let queue = DispatchQueue(label: "aipaging.signals")
    private let sources = LockedBox<[any DispatchSourceSignal]>([])

    func on(_ sig: Int32, _ body: @escaping @Sendable () -> Void) {
        signal(sig, SIG_IGN)
        let s = DispatchSource.makeSignalSource(signal: sig, queue: queue)
        s.setEventHandler(handler: body)
        s.resume()
        sources.mutate { $0.append(s) }
    }
}

final class LockedBox<T>: @unchecked Sendable {
    // All access goes through `mutate`, serialized by the lock.
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func mutate(_ f: (inout T) -> Void) { lock.lock(); f(&value); lock.unlock() }
}

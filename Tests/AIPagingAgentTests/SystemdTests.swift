@testable import AIPagingAgent
import AIPagingCore
import AIPagingTestSupport
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// sd_notify, the watchdog settings and socket activation against real sockets (no systemd).
@Suite struct SystemdTests {
    /// A datagram socket standing in for systemd's notification socket.
    final class NotifyReceiver: Sendable {
        let fd: Int32
        let address: String
        let path: String?

        init(abstract: Bool, timeoutMs: Int = 2000) throws {
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let name = "aipaging-notify-test-\(UUID().uuidString.prefix(8))"
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            var bytes: [UInt8]
            if abstract {
                bytes = [0] + Array(name.utf8)
                address = "@" + name
                path = nil
            } else {
                let p = NSTemporaryDirectory() + name + ".sock"
                bytes = Array(p.utf8) + [0]
                address = p
                path = p
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
            let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
            guard rc == 0 else { throw ServerError("bind: \(String(cString: strerror(errno)))") }
            var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }

        func receive() -> String? {
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buf, buf.count, 0)
            return n < 0 ? nil : String(decoding: buf.prefix(n), as: UTF8.self)
        }

        deinit {
            close(fd)
            if let path { unlink(path) }
        }
    }

    @Test(arguments: [false, true])
    func notifySendsOneDatagramPerCall(abstract: Bool) throws {
        let r = try NotifyReceiver(abstract: abstract)
        let n = SystemdNotifier(address: r.address)
        #expect(n.isEnabled)
        n.ready(status: "serving 0 leases on 1 enforcement point")
        #expect(r.receive() == "READY=1\nSTATUS=serving 0 leases on 1 enforcement point")
        n.watchdog()
        #expect(r.receive() == "WATCHDOG=1")
        n.stopping()
        #expect(r.receive() == "STOPPING=1\nSTATUS=stopping")
        n.reloading()
        let reload = r.receive() ?? ""
        #expect(reload.hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
        #expect(reload.split(separator: "\n").count == 3)
    }

    @Test func notifyIsANoOpWithoutASocket() {
        let n = SystemdNotifier(address: nil)
        #expect(!n.isEnabled)
        #expect(!n.notify(["READY=1"]))
        #expect(!SystemdNotifier(address: "").isEnabled)
        // Nobody listens there: the send fails quietly.
        #expect(!SystemdNotifier(address: "/nonexistent/notify.sock").notify(["READY=1"]))
        #expect(!SystemdNotifier(address: "relative/path").notify(["READY=1"]))
    }

    @Test func watchdogFromTheEnvironmentValues() {
        #expect(SystemdWatchdog.parse(usec: "10000000", pid: nil, ownPID: 42) == SystemdWatchdog(timeout: .seconds(10)))
        #expect(SystemdWatchdog.parse(usec: "10000000", pid: nil, ownPID: 42)?.pingInterval == .seconds(5))
        #expect(SystemdWatchdog.parse(usec: "3000000", pid: "42", ownPID: 42) != nil)
        #expect(SystemdWatchdog.parse(usec: "3000000", pid: "43", ownPID: 42) == nil)   // for another process
        #expect(SystemdWatchdog.parse(usec: "0", pid: nil, ownPID: 42) == nil)
        #expect(SystemdWatchdog.parse(usec: "ten", pid: nil, ownPID: 42) == nil)
        #expect(SystemdWatchdog.parse(usec: nil, pid: nil, ownPID: 42) == nil)
    }

    /// Puts a socket at a free fd number >= 200 (standing in for fd 3) and returns that number.
    func placeAtHighFD(_ fd: Int32) -> Int32 {
        let high = fcntl(fd, F_DUPFD_CLOEXEC, 200)
        close(fd)
        return high
    }

    @Test func activationTakesTheListeningUnixSocket() throws {
        let path = NSTemporaryDirectory() + "aipaging-sa-\(UUID().uuidString.prefix(8)).sock"
        defer { unlink(path) }
        let bound = try ListeningSocket.bind(path: path)
        let fd = placeAtHighFD(bound.fd)
        defer { close(fd) }
        let pid = getpid()
        let a = try #require(try SocketActivation.listeningSocket(listenPID: "\(pid)", listenFDs: "1", names: "control",
                                                                 ownPID: pid, firstFD: fd))
        #expect(a.socket.fd == fd)
        #expect(a.socket.path == nil)   // systemd's file: not removed by the agent
        #expect(a.boundPath == path)
        #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
    }

    @Test func activationIgnoresVariablesMeantForAnotherProcess() throws {
        #expect(try SocketActivation.listeningSocket(listenPID: "1", listenFDs: "1", names: nil, ownPID: getpid(), firstFD: 3) == nil)
        #expect(try SocketActivation.listeningSocket(listenPID: nil, listenFDs: nil, names: nil, ownPID: getpid(), firstFD: 3) == nil)
        #expect(try SocketActivation.listeningSocket(listenPID: "\(getpid())", listenFDs: "0", names: nil, ownPID: getpid(), firstFD: 3) == nil)
    }

    @Test func activationRefusesWhatItCannotServeOn() throws {
        let pid = getpid()
        // A UDP socket.
        let udp = placeAtHighFD(socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0))
        #expect(throws: SocketActivation.ActivationError.self) {
            try SocketActivation.listeningSocket(listenPID: "\(pid)", listenFDs: "1", names: nil, ownPID: pid, firstFD: udp)
        }
        close(udp)
        // A Unix stream socket that is not listening (what Accept=yes would pass).
        let stream = placeAtHighFD(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0))
        do {
            _ = try SocketActivation.listeningSocket(listenPID: "\(pid)", listenFDs: "1", names: nil, ownPID: pid, firstFD: stream)
            Issue.record("accepted a socket that is not listening")
        } catch {
            #expect(error.description.contains("not listening"))
        }
        close(stream)
    }

    /// The runtime under a fake systemd: READY with the status line once serving, then
    /// WATCHDOG=1 every half timeout — and none while the lease service's thread is hung.
    @Test func watchdogPingsStopWhileTheServiceIsHung() async throws {
        let receiver = try NotifyReceiver(abstract: true, timeoutMs: 20)
        let dir = NSTemporaryDirectory() + "aipaging-wd-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var cfg = AgentConfig()
        cfg.socketPath = dir + "/agent.sock"
        cfg.stateDir = dir
        cfg.reconcileIntervalMs = 50
        let clock = ManualClock()
        let point = EnforcementPointConfig(name: "ep", netns: nil, capacityKbit: 1_000_000)
        let backend = InMemoryBackend(location: "memory") { clock.now().boot }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let runtime = AgentRuntime(config: cfg, policy: .lab, points: [point], backends: ["ep": backend], clock: clock, logger: logger)
        let socket = try ListeningSocket.bind(path: cfg.socketPath)
        let notifier = SystemdNotifier(address: receiver.address)
        let task = Task {
            try await runtime.run(socket: socket, useTimer: false, notifier: notifier,
                                  watchdog: SystemdWatchdog(timeout: .milliseconds(400)))
        }
        defer { task.cancel() }

        // Wait for READY (the test process's pool may be busy with other suites), then record
        // every message with its time for 2.2 s; the service's thread hangs from 0.8 s to 1.6 s.
        let ready = try await offPool { () -> String? in
            let until = Date().addingTimeInterval(60)
            while Date() < until { if let m = receiver.receive() { return m } }
            return nil
        }
        let loop = runtime.loopGroup.next()
        let recording = Thread.detachNewThreadWithResult { () -> [(Double, String)] in
            // Times count from when this thread runs (its start can be late on a loaded machine;
            // pings sent meanwhile wait in the socket and are read first, at once).
            let start = Date()
            var out: [(Double, String)] = []
            var hung = false
            while Date().timeIntervalSince(start) < 2.2 {
                if !hung && Date().timeIntervalSince(start) >= 0.8 {
                    loop.execute { Thread.sleep(forTimeInterval: 0.8) }
                    hung = true
                }
                if let m = receiver.receive() { out.append((Date().timeIntervalSince(start), m)) }
            }
            return out
        }
        let messages = [(0.0, ready ?? "")] + (await recording.value)
        let hungAt = 0.8
        let pings = messages.filter { $0.1 == "WATCHDOG=1" }.map(\.0)

        #expect(messages.first?.1 == "READY=1\nSTATUS=serving 0 leases on 1 enforcement point", "\(messages)")
        #expect(pings.filter { $0 < hungAt }.count >= 3, "pings before the hang: \(pings)")
        // At most a ping already on its way when the loop blocked; none for the rest of the hang.
        #expect(pings.filter { $0 > hungAt + 0.15 && $0 < hungAt + 0.8 }.isEmpty, "pinged while hung: \(pings), hung at \(hungAt)")
        #expect(pings.contains { $0 > hungAt + 0.8 }, "no ping after the hang: \(pings)")
        // Regular pings outside the hang (every ~0.2 s; the bound leaves room for a loaded machine).
        let outside = pings.filter { $0 < hungAt || $0 > hungAt + 0.85 }
        for (a, b) in zip(outside, outside.dropFirst()) where !(a < hungAt && b > hungAt) {
            #expect(b - a < 0.6, "gap of \(b - a) s between pings")
        }
        task.cancel()
        _ = try? await task.value
    }
}

extension Thread {
    /// Runs `body` on a new OS thread (not the cooperative pool) and awaits its result.
    static func detachNewThreadWithResult<T: Sendable>(_ body: @escaping @Sendable () -> T) -> Task<T, Never> {
        Task {
            await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
                Thread.detachNewThread { c.resume(returning: body()) }
            }
        }
    }
}

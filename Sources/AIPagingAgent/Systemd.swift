import CAIPagingShim
#if canImport(Glibc)
import Glibc
#endif

/// The systemd service protocol (`sd_notify(3)`): state lines sent as one datagram to the
/// `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or an abstract address written `@name`).
/// Without the variable (not started by systemd, or `Type=` other than notify) every call does
/// nothing, so the agent runs the same in a terminal, in the tests and under systemd.
///
/// What the agent sends, and when:
/// - `READY=1` + `STATUS=serving N leases on M enforcement points`: after the first reconcile of
///   every enforcement point (and the lease journal's replay, which runs before it) and once the
///   control socket accepts connections.
/// - `STATUS=...`: whenever that line changes (checked on every reconcile tick).
/// - `WATCHDOG=1`: from the reconcile loop, every half `WATCHDOG_USEC`, only after a round trip
///   through the lease service's executor — a hung service stops the pings and systemd restarts
///   the agent.
/// - `RELOADING=1` + `MONOTONIC_USEC=` on SIGHUP, then `READY=1` once the policy is swapped: the
///   `Type=notify-reload` protocol (systemd 253+). Under `Type=notify` with
///   `ExecReload=kill -HUP $MAINPID` (systemd 252, Debian 12) the same messages are understood.
/// - `STOPPING=1` on SIGTERM/SIGINT.
public struct SystemdNotifier: Sendable {
    /// The socket address as given in `$NOTIFY_SOCKET`; nil when notifications are off.
    public let address: String?

    /// Reads `$NOTIFY_SOCKET`. The variable stays set (the agent starts no child processes).
    public init() {
        self.init(address: getenv("NOTIFY_SOCKET").map { String(cString: $0) })
    }

    /// Sends to `address` (a path or `@abstract`); nil or empty disables notifications.
    public init(address: String?) {
        self.address = (address?.isEmpty ?? true) ? nil : address
    }

    public var isEnabled: Bool { address != nil }

    /// Sends `assignments` ("READY=1", "STATUS=...") as one datagram. Returns false when
    /// notifications are off or the send failed (systemd gone); the agent carries on either way.
    @discardableResult
    public func notify(_ assignments: [String]) -> Bool {
        guard let address, !assignments.isEmpty else { return false }
        let message = Array(assignments.joined(separator: "\n").utf8)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var path = Array(address.utf8)
        let abstract = path.first == UInt8(ascii: "@")
        if abstract { path[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard path.count < capacity, path.first == UInt8(ascii: "/") || abstract else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
        }
        // An abstract address is exactly as long as its name; a path is NUL-terminated.
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + (abstract ? 0 : 1))
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var sent = -1
        repeat {
            sent = message.withUnsafeBytes { m in
                withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        // Never block the caller (the agent's event loop) on a full queue.
                        sendto(fd, m.baseAddress, m.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT), $0, length)
                    }
                }
            }
        } while sent < 0 && errno == EINTR
        return sent == message.count
    }

    public func ready(status: String) { notify(["READY=1", "STATUS=\(status)"]) }
    public func status(_ line: String) { notify(["STATUS=\(line)"]) }
    public func watchdog() { notify(["WATCHDOG=1"]) }
    public func stopping(status: String = "stopping") { notify(["STOPPING=1", "STATUS=\(status)"]) }

    /// `RELOADING=1` with the `CLOCK_MONOTONIC` time systemd 253+ requires to match the reload.
    public func reloading(status: String = "reloading the policy") {
        notify(["RELOADING=1", "MONOTONIC_USEC=\(aip_monotonic_ns() / 1000)", "STATUS=\(status)"])
    }
}

/// The service watchdog (`WatchdogSec=`): systemd passes `WATCHDOG_USEC` (and `WATCHDOG_PID`)
/// and restarts the service when `WATCHDOG=1` does not come within that time.
public struct SystemdWatchdog: Sendable, Equatable {
    /// `WATCHDOG_USEC`: how long systemd waits for a ping.
    public let timeout: Duration

    public init(timeout: Duration) { self.timeout = timeout }

    /// Pings are due every half timeout (sd_watchdog_enabled(3)).
    public var pingInterval: Duration { timeout / 2 }

    /// The watchdog systemd armed for this process, or nil: no `WATCHDOG_USEC`, an unparsable
    /// or zero one, or a `WATCHDOG_PID` naming another process.
    public static func fromEnvironment(pid: pid_t = getpid()) -> SystemdWatchdog? {
        parse(usec: getenv("WATCHDOG_USEC").map { String(cString: $0) },
              pid: getenv("WATCHDOG_PID").map { String(cString: $0) }, ownPID: pid)
    }

    static func parse(usec: String?, pid: String?, ownPID: pid_t) -> SystemdWatchdog? {
        guard let usec, let us = UInt64(usec), us > 0 else { return nil }
        if let pid, let p = pid_t(pid), p != ownPID { return nil }
        return SystemdWatchdog(timeout: .microseconds(Int64(clamping: us)))
    }
}

/// Socket activation (`sd_listen_fds(3)`): systemd binds the control socket (the `.socket`
/// unit) and passes it as fd 3, with `LISTEN_PID` (this process), `LISTEN_FDS` (how many) and
/// `LISTEN_FDNAMES` (their `FileDescriptorName=`).
public enum SocketActivation {
    /// `SD_LISTEN_FDS_START`.
    public static let firstFD: Int32 = 3
    /// The `FileDescriptorName=` the agent's socket unit gives its control socket; without a
    /// name of that kind the first fd is used.
    public static let controlName = "control"

    /// What systemd handed over.
    public struct Activated: Sendable {
        /// The listening socket (its `path` is nil: the socket file belongs to systemd and is
        /// not removed when the agent stops).
        public var socket: ListeningSocket
        /// Where it is bound (`getsockname`), for the log.
        public var boundPath: String
    }

    /// systemd passed an fd the agent cannot serve on; the description says how to fix the unit.
    public struct ActivationError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// The control socket passed by systemd, or nil when the agent was not socket-activated (it
    /// then binds the path itself). Unsets `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` and
    /// marks the fds close-on-exec; extra fds are closed. Throws when systemd passed something
    /// the agent cannot serve on (not a listening `AF_UNIX` stream socket).
    public static func listeningSocket() throws(ActivationError) -> Activated? {
        func env(_ k: String) -> String? { getenv(k).map { String(cString: $0) } }
        let result = try listeningSocket(listenPID: env("LISTEN_PID"), listenFDs: env("LISTEN_FDS"),
                                         names: env("LISTEN_FDNAMES"), ownPID: getpid(), firstFD: firstFD)
        if env("LISTEN_PID") != nil || env("LISTEN_FDS") != nil {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        return result
    }

    /// The logic of `listeningSocket()` over explicit values (tests pass their own fds).
    static func listeningSocket(listenPID: String?, listenFDs: String?, names: String?, ownPID: pid_t,
                                firstFD: Int32) throws(ActivationError) -> Activated? {
        guard let listenPID, let listenFDs else { return nil }
        guard let pid = pid_t(listenPID), pid == ownPID else { return nil }   // meant for another process
        guard let count = Int32(listenFDs), count > 0 else { return nil }
        let fds = (0..<count).map { firstFD + $0 }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let nameList = names.map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        let index = nameList.firstIndex(of: controlName).map { Int32($0) } ?? 0
        let fd = firstFD + (index < count ? index : 0)
        for other in fds where other != fd { close(other) }

        func option(_ name: Int32) -> Int32? {
            var v: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, SOL_SOCKET, name, &v, &len) == 0 ? v : nil
        }
        let fix = "the .socket unit must have ListenStream=/path (a Unix stream socket) and Accept=no"
        guard let domain = option(SO_DOMAIN) else {
            throw ActivationError(description: "socket activation: fd \(fd) is not a socket (\(String(cString: strerror(errno)))); \(fix)")
        }
        guard domain == AF_UNIX else {
            throw ActivationError(description: "socket activation: fd \(fd) is not an AF_UNIX socket (domain \(domain)); \(fix)")
        }
        guard option(SO_TYPE) == Int32(SOCK_STREAM.rawValue) else {
            throw ActivationError(description: "socket activation: fd \(fd) is not a stream socket; \(fix)")
        }
        guard option(SO_ACCEPTCONN) == 1 else {
            throw ActivationError(description: "socket activation: fd \(fd) is not listening (Accept=yes passes connections, not the listener); \(fix)")
        }
        var addr = sockaddr_un()
        var len = socklen_t(MemoryLayout<sockaddr_un>.size)
        var path = "?"
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        if rc == 0 {
            path = withUnsafeBytes(of: &addr.sun_path) { raw in
                let n = max(0, min(raw.count, Int(len) - MemoryLayout<sa_family_t>.size))
                let bytes = Array(raw.prefix(n))
                if bytes.first == 0 { return "@" + String(decoding: bytes.dropFirst(), as: UTF8.self) }
                return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        return Activated(socket: ListeningSocket(fd: fd, path: nil), boundPath: path)
    }
}

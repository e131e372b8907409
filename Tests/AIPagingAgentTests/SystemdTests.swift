@testable import AIPagingAgent
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// sd_notify, the watchdog settings and socket activation against real sockets (no systemd).
@Suite struct SystemdTests {
    /// A datagram socket standing in for systemd's notification socket.
    final class NotifyReceiver {
        let fd: Int32
        let address: String
        let path: String?

        init(abstract: Bool) throws {
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
            var tv = timeval(tv_sec: 2, tv_usec: 0)
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
}

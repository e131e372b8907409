import Foundation

/// Test-side helpers: tests may use `ip`, `nft`, `tc` and `conntrack` to build labs and to read the
/// kernel back independently of the agent's own netlink code. The agent itself never forks them.
public enum Shell {
    public struct Failure: Error, CustomStringConvertible {
        public var command: [String]
        public var status: Int32
        public var stderr: String
        public init(command: [String], status: Int32, stderr: String) {
            self.command = command
            self.status = status
            self.stderr = stderr
        }
        public var description: String { "`\(command.joined(separator: " "))` exited \(status): \(stderr)" }
    }

    /// Runs a command and returns its stdout; throws with stderr when it exits non-zero.
    /// Output goes to temporary files, not pipes: a command that leaves a daemon behind (the lab's
    /// anchor services) may leak the pipe to it, and a pipe reader would then wait forever.
    @discardableResult
    public static func run(_ args: [String], input: String? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let base = NSTemporaryDirectory() + "aipaging-sh-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
        _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: base + ".out")
            try? FileManager.default.removeItem(atPath: base + ".err")
        }
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".out"))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".err"))
        p.standardOutput = out
        p.standardError = err
        if let input {
            let inp = Pipe()
            p.standardInput = inp
            try p.run()
            inp.fileHandleForWriting.write(Data(input.utf8))
            try inp.fileHandleForWriting.close()
        } else {
            p.standardInput = FileHandle.nullDevice
            try p.run()
        }
        p.waitUntilExit()
        try? out.close()
        try? err.close()
        let o = (try? Data(contentsOf: URL(fileURLWithPath: base + ".out"))) ?? Data()
        let e = (try? Data(contentsOf: URL(fileURLWithPath: base + ".err"))) ?? Data()
        if p.terminationStatus != 0 {
            throw Failure(command: args, status: p.terminationStatus, stderr: String(decoding: e, as: UTF8.self))
        }
        return String(decoding: o, as: UTF8.self)
    }

    public static func sh(_ script: String) throws -> String { try run(["sh", "-c", script]) }

    public static var isRoot: Bool { getuid() == 0 }
}

/// A throwaway network namespace with a unique name; `destroy()` removes it (and so every veth,
/// nftables table, qdisc and conntrack entry inside it). Always call `destroy` in a `defer`.
public final class TestNamespace: Sendable {
    public let name: String

    public init(prefix: String) throws {
        let suffix = String(UInt32.random(in: 0..<UInt32.max), radix: 36)
        name = "aipt-\(prefix)-\(suffix)"
        try Shell.run(["ip", "netns", "add", name])
        try Shell.run(["ip", "-n", name, "link", "set", "lo", "up"])
    }

    /// Runs a command inside the namespace (`ip netns exec NAME ...`).
    @discardableResult
    public func exec(_ args: [String], input: String? = nil) throws -> String {
        try Shell.run(["ip", "netns", "exec", name] + args, input: input)
    }

    @discardableResult
    public func sh(_ script: String) throws -> String { try exec(["sh", "-c", script]) }

    public func destroy() {
        _ = try? Shell.run(["ip", "netns", "del", name])
    }
}

/// Runs blocking work (a synchronous HTTP request, a command) on its own OS thread and awaits
/// it, so tests never block the cooperative pool the agent under test also runs on.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        Thread.detachNewThread {
            do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
        }
    }
}

import Foundation

/// Test-side helpers: tests may use `ip`, `nft`, `tc` and `conntrack` to build labs and to read the
/// kernel back independently of the agent's own netlink code. The agent itself never forks them.
enum Shell {
    struct Failure: Error, CustomStringConvertible {
        var command: [String]
        var status: Int32
        var stderr: String
        var description: String { "`\(command.joined(separator: " "))` exited \(status): \(stderr)" }
    }

    /// Runs a command and returns its stdout; throws with stderr when it exits non-zero.
    @discardableResult
    static func run(_ args: [String], input: String? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe(), err = Pipe()
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
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            throw Failure(command: args, status: p.terminationStatus, stderr: String(decoding: e, as: UTF8.self))
        }
        return String(decoding: o, as: UTF8.self)
    }

    static func sh(_ script: String) throws -> String { try run(["sh", "-c", script]) }

    static var isRoot: Bool { getuid() == 0 }
}

/// A throwaway network namespace with a unique name; `destroy()` removes it (and so every veth,
/// nftables table, qdisc and conntrack entry inside it). Always call `destroy` in a `defer`.
final class TestNamespace: Sendable {
    let name: String

    init(prefix: String) throws {
        let suffix = String(UInt32.random(in: 0..<UInt32.max), radix: 36)
        name = "aipt-\(prefix)-\(suffix)"
        try Shell.run(["ip", "netns", "add", name])
        try Shell.run(["ip", "-n", name, "link", "set", "lo", "up"])
    }

    /// Runs a command inside the namespace (`ip netns exec NAME ...`).
    @discardableResult
    func exec(_ args: [String], input: String? = nil) throws -> String {
        try Shell.run(["ip", "netns", "exec", name] + args, input: input)
    }

    @discardableResult
    func sh(_ script: String) throws -> String { try exec(["sh", "-c", script]) }

    func destroy() {
        _ = try? Shell.run(["ip", "netns", "del", name])
    }
}

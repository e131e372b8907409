import Foundation

/// The namespace lab of `scripts/lab.sh` under a unique prefix, with helpers to send traffic
/// (`scripts/flow.py`) and read the enforcement namespace back with `nft`, `tc` and `conntrack`.
/// `destroy()` removes every namespace (and so every veth, table, qdisc and conntrack entry).
public final class ScriptLab: Sendable {
    public let prefix: String
    public static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public init(services: Bool = true) throws {
        prefix = "aipt" + String(UInt32.random(in: 0..<UInt32.max) % 46656, radix: 36)
        do {
            try Shell.run([ScriptLab.repoRoot + "/scripts/lab.sh", "up", prefix] + (services ? ["--services"] : []))
        } catch {
            destroy()
            throw error
        }
    }

    public func destroy() {
        _ = try? Shell.run([ScriptLab.repoRoot + "/scripts/lab.sh", "down", prefix])
    }

    /// Full namespace name of a lab role: client, client2, enforce, edge, cloud.
    public func ns(_ role: String) -> String { "\(prefix)-\(role)" }

    @discardableResult
    public func exec(_ role: String, _ args: [String]) throws -> String {
        try Shell.run(["ip", "netns", "exec", ns(role)] + args)
    }

    /// Which anchor answered each of `count` requests from `role` to addr:port ("-" for none).
    public func probe(from role: String = "client", _ addr: String, _ port: Int = 7000, count: Int = 3, tcp: Bool = false,
                      timeout: Double = 0.4) -> [String] {
        var args = ["python3", ScriptLab.repoRoot + "/scripts/flow.py", "probe", addr, String(port), "--count", String(count),
                    "--timeout", String(timeout)]
        if tcp { args.append("--tcp") }
        let out = (try? Shell.run(["ip", "netns", "exec", ns(role)] + args)) ?? ""
        let line = out.split(separator: "\n").last.map(String.init) ?? ""
        if line.isEmpty { return [String](repeating: "-", count: count) }
        return line.split(separator: " ").map(String.init)
    }

    /// Sends UDP at `mbit` for `seconds`; returns the steady-state delivered rate (Mbit/s).
    public func blast(from role: String = "client", _ addr: String, _ port: Int = 7000, mbit: Double, seconds: Double) throws -> Double {
        let out = try exec(role, ["python3", ScriptLab.repoRoot + "/scripts/flow.py", "blast", addr, String(port),
                                  "--mbit", String(mbit), "--seconds", String(seconds)])
        // "sent X Mbit/s, delivered Y Mbit/s ..."
        guard let r = out.range(of: "delivered "), let v = Double(out[r.upperBound...].prefix { $0 == "." || $0.isNumber }) else {
            throw Shell.Failure(command: ["flow.py", "blast"], status: 0, stderr: "unexpected output: \(out)")
        }
        return v
    }

    /// `nft list table inet aipaging` in the enforcement namespace ("" if there is none).
    public func nftTable() -> String {
        (try? exec("enforce", ["nft", "list", "table", "inet", "aipaging"])) ?? ""
    }

    /// Number of elements in the agent's maps (0 when there is no table).
    public func nftElementCount() -> Int {
        guard let json = try? exec("enforce", ["nft", "-j", "list", "table", "inet", "aipaging"]),
              let obj = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let items = obj["nftables"] as? [[String: Any]] else { return 0 }
        var n = 0
        for item in items {
            if let map = item["map"] as? [String: Any], let elems = map["elem"] as? [Any] { n += elems.count }
        }
        return n
    }

    /// `tc class show dev IF` lines in the enforcement namespace.
    public func tcClasses(_ dev: String) -> [String] {
        ((try? exec("enforce", ["tc", "class", "show", "dev", dev])) ?? "").split(separator: "\n").map(String.init)
    }

    /// `tc -s class show dev IF` parsed: classid -> sent packets.
    public func tcSentPackets(_ dev: String) -> [String: Int] {
        // `nsenter --net` only joins the network namespace (tc needs no /sys of it), so it avoids
        // the mount-namespace setup of `ip netns exec`, which fails now and then while other tests
        // add and delete namespaces.
        var text = ""
        for attempt in 0..<10 {
            if let t = try? Shell.run(["nsenter", "--net=/run/netns/" + ns("enforce"), "tc", "-s", "class", "show", "dev", dev]),
               t.contains("class ") { text = t; break }
            Thread.sleep(forTimeInterval: 0.05 * Double(attempt + 1))
        }
        var out: [String: Int] = [:]
        var current: String?
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.first == "class", parts.count > 2 { current = String(parts[2]) }
            if let c = current, let i = parts.firstIndex(of: "Sent"), i + 3 < parts.count, let p = Int(parts[i + 3]) {
                out[c] = p
                current = nil
            }
        }
        return out
    }

    /// Conntrack entries in the enforcement namespace whose mark is a lease mark.
    public func leaseConntrackEntries() -> [String] {
        let text = (try? exec("enforce", ["conntrack", "-L", "-m", "0xa1000000/0xff000000"])) ?? ""
        return text.split(separator: "\n").map(String.init).filter { $0.contains("src=") }
    }
}

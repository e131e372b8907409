import AIPagingCore
import AIPagingClient
import ArgumentParser
import Crypto
#if canImport(Glibc)
import Glibc
#endif

@main
struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aipagingctl",
        abstract: "Client of aipaging-agent's control socket.",
        version: "0.1.0",
        subcommands: [Commit.self, Revoke.self, List.self, Show.self, Status.self, Evidence.self, Events.self,
                      Keygen.self, Sign.self])
}

struct Connection: ParsableArguments {
    @Option(help: "Agent control socket (default: $AIPAGING_SOCKET or /run/aipaging/agent.sock).")
    var socket: String?
    @Flag(help: "Print the agent's JSON instead of a table.")
    var json = false

    var client: UnixHTTPClient {
        UnixHTTPClient(path: socket ?? (getenv("AIPAGING_SOCKET").map { String(cString: $0) }) ?? "/run/aipaging/agent.sock")
    }

    /// Performs the request; on an error response prints the cause and exits non-zero.
    func call(_ method: String, _ target: String, body: [UInt8]? = nil, contentType: String = "application/json") throws -> JSON {
        let r: UnixHTTPClient.Response
        do {
            r = try client.request(method, target, body: body, contentType: contentType)
        } catch {
            printErr("aipagingctl: \(error)")
            throw ExitCode(3)
        }
        let value = (try? JSON.parse(r.body)) ?? .string(String(decoding: r.body, as: UTF8.self))
        guard (200..<300).contains(r.status) else {
            if json {
                print(value.serialized())
            } else if let cause = value["error"]?["cause"]?.stringValue {
                printErr("error \(r.status) \(cause): \(value["error"]?["message"]?.stringValue ?? "")")
            } else {
                printErr("error \(r.status): \(value.serialized())")
            }
            throw ExitCode(r.status >= 500 ? 5 : 4)
        }
        return value
    }
}

func printErr(_ s: String) {
    var line = s + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func readInput(_ path: String) throws -> [UInt8] {
    if path == "-" {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(0, $0.baseAddress, 65536) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }
    guard let f = fopen(path, "rb") else { throw ValidationError("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, 65536, f)
        if n == 0 { break }
        out += buf[0..<n]
    }
    return out
}

func loadPrivateKey(_ path: String) throws -> Curve25519.Signing.PrivateKey {
    let text = String(decoding: try readInput(path), as: UTF8.self).trimmingCharacters(in: "\n")
    guard let raw = Base64URL.decode(text.split(whereSeparator: \.isNewline).first ?? ""), raw.count == 32 else {
        throw ValidationError("\(path) is not an aipagingctl private key (base64url of 32 bytes)")
    }
    return try Curve25519.Signing.PrivateKey(rawRepresentation: raw)
}

// MARK: table rendering

func table(_ header: [String], _ rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
            .joined(separator: "  ")
    }
    return ([line(header)] + rows.map(line)).joined(separator: "\n")
}

func leaseRow(_ l: JSON) -> [String] {
    let c = l["classifier"], a = l["anchor"], q = l["qos"], k = l["kernel"]
    let remaining = l["remaining_ms"]?.int64Value.map { String(format2($0)) } ?? "-"
    return [
        l["lease_id"]?.stringValue ?? "?", l["aisi"]?.stringValue ?? "?", l["state"]?.stringValue ?? "?",
        "\(a?["id"]?.stringValue ?? "?") \(a?["address"]?.stringValue ?? "?"):\(a?["port"]?.int64Value ?? 0)",
        "\(c?["client"]?.stringValue ?? "?")->\(c?["service"]?.stringValue ?? "?") \(c?["protocol"]?.stringValue ?? "?")/\(c?["port"]?.int64Value ?? 0)",
        "\(q?["rate_kbit"]?.int64Value ?? 0)/\(q?["ceil_kbit"]?.int64Value ?? 0)k p\(q?["priority"]?.int64Value ?? 0)",
        remaining,
        "\(k?["mark"]?.stringValue ?? "-") \(k?["class"]?.stringValue ?? "-")@\(k?["interface"]?.stringValue ?? "-")",
    ]
}

let leaseHeader = ["LEASE", "AISI", "STATE", "ANCHOR", "CLASSIFIER", "QOS", "REMAINING", "KERNEL"]

func format2(_ ms: Int64) -> String {
    if ms >= 3_600_000 { return "\(ms / 3_600_000)h\((ms / 60_000) % 60)m" }
    if ms >= 60_000 { return "\(ms / 60_000)m\((ms / 1000) % 60)s" }
    return "\(ms / 1000).\(String(format3(ms % 1000)))s"
}

func format3(_ v: Int64) -> String {
    let s = String(v)
    return String(repeating: "0", count: max(0, 3 - s.count)) + s
}

// MARK: commands

struct Commit: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Admit (or renew / relocate) a COMMIT lease.",
        discussion: "Give the lease as a JSON file (--file, - for stdin) or with flags. --key/--kid send it signed (JWS, EdDSA).")
    @OptionGroup var conn: Connection
    @Option(help: "Lease JSON file (CONTRACT.md body), or - for stdin.") var file: String?
    @Option(name: .customLong("lease-id")) var leaseID: String?
    @Option var aisi: String?
    @Option var aist: String = "lab-token"
    @Option(name: .customLong("ttl-ms")) var ttlMs: UInt64?
    @Option(name: .customLong("expires-at"), help: "RFC 3339 expiry instead of --ttl-ms.") var expiresAt: String?
    @Option var client: String?
    @Option var service: String?
    @Option(name: .customLong("protocol")) var proto: String = "udp"
    @Option var port: UInt16?
    @Option(name: .customLong("anchor-id")) var anchorID: String?
    @Option(name: .customLong("anchor-address")) var anchorAddress: String?
    @Option(name: .customLong("anchor-port"), help: "Defaults to --port.") var anchorPort: UInt16?
    @Option(name: .customLong("rate-kbit")) var rateKbit: UInt64 = 1000
    @Option(name: .customLong("ceil-kbit"), help: "Defaults to --rate-kbit.") var ceilKbit: UInt64?
    @Option var priority: UInt8 = 4
    @Option(name: .customLong("latency-ms")) var latencyMs: Double?
    @Option var relocates: String?
    @Option(name: .customLong("drain-ms")) var drainMs: UInt64?
    @Option var generation: UInt64?
    @Option(name: .customLong("enforcement-point")) var enforcementPoint: String?
    @Option(help: "Sign with this private key file (aipagingctl keygen).") var key: String?
    @Option(help: "Key id (kid) the policy knows the key by.") var kid: String?

    func body() throws -> [UInt8] {
        if let file { return try readInput(file) }
        guard let leaseID, let aisi, let client, let service, let port, let anchorID, let anchorAddress else {
            throw ValidationError("give --file, or --lease-id --aisi --client --service --port --anchor-id --anchor-address")
        }
        var o = JSON.Object()
        o["lease_id"] = .string(leaseID)
        o["aisi"] = .string(aisi)
        o["aist"] = .string(aist)
        if let expiresAt { o["expires_at"] = .string(expiresAt) } else { o["ttl_ms"] = .int(ttlMs ?? 30_000) }
        o["classifier"] = ["client": .string(client), "service": .string(service), "protocol": .string(proto), "port": .int(port)]
        o["anchor"] = ["id": .string(anchorID), "address": .string(anchorAddress), "port": .int(anchorPort ?? port)]
        var q = JSON.Object(["rate_kbit": .int(rateKbit), "ceil_kbit": .int(ceilKbit ?? rateKbit), "priority": .int(priority)])
        if let latencyMs { q["latency_ms"] = .double(latencyMs) }
        o["qos"] = .object(q)
        o["relocates"] = .optional(relocates)
        if let drainMs { o["drain_ms"] = .int(drainMs) }
        if let generation { o["generation"] = .int(generation) }
        if let enforcementPoint { o["enforcement_point"] = .string(enforcementPoint) }
        return Array(JSON.object(o).serialized().utf8)
    }

    func run() throws {
        let payload = try body()
        guard let parsed = try? JSON.parse(payload), let id = parsed["lease_id"]?.stringValue else {
            throw ValidationError("the lease must be a JSON object with a lease_id")
        }
        var sendBody = payload
        var type = "application/json"
        if let key {
            guard let kid else { throw ValidationError("--key needs --kid") }
            sendBody = Array(try JWS.sign(payload: payload, kid: kid, privateKey: loadPrivateKey(key)).utf8)
            type = "application/jose"
        }
        let r = try conn.call("PUT", "/v1/leases/\(id)", body: sendBody, contentType: type)
        if conn.json { print(r.serialized()); return }
        print(table(leaseHeader, [leaseRow(r)]))
        var notes = ["\(r["result"]?.stringValue ?? "ok") at \(r["switched_at"]?.stringValue ?? "?"), expires \(r["expires_at"]?.stringValue ?? "?")"]
        if let old = r["relocated"], let end = r["drain_ends_at"]?.stringValue {
            notes.append("relocated from \(old["lease_id"]?.stringValue ?? "?") (\(old["anchor"]?["id"]?.stringValue ?? "?")); its drain ends at \(end)")
        }
        print(notes.joined(separator: "\n"))
    }
}

struct Revoke: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Revoke a lease: its kernel state is gone when this returns.")
    @OptionGroup var conn: Connection
    @Argument var leaseID: String
    func run() throws {
        let r = try conn.call("DELETE", "/v1/leases/\(leaseID)")
        if conn.json { print(r.serialized()) } else { print("revoked \(leaseID) at \(r["ended_at"]?.stringValue ?? "?")") }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List live leases.")
    @OptionGroup var conn: Connection
    @Option var aisi: String?
    @Option var state: String?
    func run() throws {
        var q: [String] = []
        if let aisi { q.append("aisi=\(aisi)") }
        if let state { q.append("state=\(state)") }
        let r = try conn.call("GET", "/v1/leases" + (q.isEmpty ? "" : "?" + q.joined(separator: "&")))
        if conn.json { print(r.serialized()); return }
        let rows = (r["leases"]?.arrayValue ?? []).map(leaseRow)
        print(table(leaseHeader, rows))
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one lease.")
    @OptionGroup var conn: Connection
    @Argument var leaseID: String
    func run() throws {
        let r = try conn.call("GET", "/v1/leases/\(leaseID)")
        if conn.json { print(r.serialized()); return }
        for (k, v) in r.objectValue?.pairs ?? [] {
            let text = v.stringValue ?? v.serialized()
            print("\(k + ":")\(String(repeating: " ", count: max(1, 20 - k.count)))\(text)")
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Agent health, lease counts and enforcement points.")
    @OptionGroup var conn: Connection
    func run() throws {
        let r = try conn.call("GET", "/v1/status")
        if conn.json { print(r.serialized()); return }
        print("status: \(r["status"]?.stringValue ?? "?")  version: \(r["version"]?.stringValue ?? "?")  policy: \(r["policy"]?.stringValue ?? "?")\((r["lab_policy"]?.boolValue ?? false) ? " (LAB)" : "")")
        let leases = r["leases"]?.objectValue?.pairs.map { "\($0.0)=\($0.1.int64Value ?? 0)" }.joined(separator: " ") ?? ""
        print("leases: \(leases)")
        let rows = (r["enforcement_points"]?.arrayValue ?? []).map { p in
            [p["name"]?.stringValue ?? "?", p["netns"]?.stringValue ?? "-", "\(p["guaranteed_kbit"]?.int64Value ?? 0)/\(p["capacity_kbit"]?.int64Value ?? 0)",
             "\(p["leases"]?.int64Value ?? 0)", (p["interfaces"]?.arrayValue ?? []).compactMap(\.stringValue).joined(separator: ","),
             (p["in_sync"]?.boolValue ?? false) ? "yes" : "NO"]
        }
        print(table(["POINT", "NETNS", "GUARANTEED/CAPACITY kbit", "LEASES", "INTERFACES", "IN-SYNC"], rows))
    }
}

struct Evidence: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Query evidence (EVI) records.")
    @OptionGroup var conn: Connection
    @Option var aisi: String?
    @Option var lease: String?
    @Option(help: "RFC 3339") var since: String?
    @Option(help: "RFC 3339") var until: String?
    @Option var limit: Int?
    func run() throws {
        var q: [String] = []
        if let aisi { q.append("aisi=\(aisi)") }
        if let lease { q.append("lease_id=\(lease)") }
        if let since { q.append("since=\(since)") }
        if let until { q.append("until=\(until)") }
        if let limit { q.append("limit=\(limit)") }
        let r = try conn.call("GET", "/v1/evidence" + (q.isEmpty ? "" : "?" + q.joined(separator: "&")))
        if conn.json { print(r.serialized()); return }
        let rows = (r["records"]?.arrayValue ?? []).map { e in
            [String(e["seq"]?.int64Value ?? 0), e["time"]?.stringValue ?? "?", e["kind"]?.stringValue ?? "?", e["event"]?.stringValue ?? "-",
             e["aisi"]?.stringValue ?? "?", e["lease_id"]?.stringValue ?? "?", e["anchor"]?["id"]?.stringValue ?? "?",
             e["related_lease_id"]?.stringValue ?? "-"]
        }
        print(table(["SEQ", "TIME", "KIND", "EVENT", "AISI", "LEASE", "ANCHOR", "RELATED"], rows))
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Follow lease lifecycle events (NDJSON).")
    @OptionGroup var conn: Connection
    @Option(help: "Start after this sequence number.") var since: UInt64 = 0
    @Flag(help: "Keep streaming new events.") var follow = false
    func run() throws {
        let r = try conn.client.request("GET", "/v1/events?since=\(since)&follow=\(follow)") { chunk in
            _ = chunk.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            return true
        }
        if !r.body.isEmpty { _ = r.body.withUnsafeBytes { write(1, $0.baseAddress, $0.count) } }
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make an Ed25519 controller key pair for signed leases (lab use).",
        discussion: "Writes the private key (base64url, mode 0600) and prints the policy entry with the public key.")
    @Option(help: "Where to write the private key.") var out: String
    @Option var kid: String = "ctl-1"
    func run() throws {
        let k = Curve25519.Signing.PrivateKey()
        let fd = open(out, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw ValidationError("cannot create \(out): \(String(cString: strerror(errno))) (it must not exist)") }
        let text = Array((Base64URL.encode(k.rawRepresentation) + "\n").utf8)
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let entry: JSON = ["kid": .string(kid), "alg": "EdDSA", "public_key": .string(Base64URL.encode(k.publicKey.rawRepresentation))]
        print(entry.serialized())
    }
}

struct Sign: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Sign a lease JSON file as a JWS (prints the compact serialization).")
    @Option(help: "Private key file (aipagingctl keygen).") var key: String
    @Option var kid: String = "ctl-1"
    @Argument(help: "Lease JSON file or -.") var file: String = "-"
    func run() throws {
        let payload = try readInput(file)
        guard (try? JSON.parse(payload))?.objectValue != nil else { throw ValidationError("\(file) is not a JSON object") }
        print(try JWS.sign(payload: payload, kid: kid, privateKey: loadPrivateKey(key)))
    }
}

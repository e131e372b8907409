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
    static let configuration = CommandConfiguration(
        abstract: "Evidence (EVI) records: query them, verify their chain, audit delay tails.",
        subcommands: [EvidenceQueryCommand.self, EvidenceVerify.self, EvidenceAudit.self],
        defaultSubcommand: EvidenceQueryCommand.self)
}

struct EvidenceQueryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "query", abstract: "Query evidence records (the default).")
    @OptionGroup var conn: Connection
    @Option var aisi: String?
    @Option var lease: String?
    @Option(help: "RFC 3339") var since: String?
    @Option(help: "RFC 3339") var until: String?
    @Option(help: "event, window, agent, or an event name") var kind: String?
    @Option(name: .customLong("after-seq")) var afterSeq: UInt64?
    @Option var limit: Int?
    func run() throws {
        var q: [String] = []
        if let aisi { q.append("aisi=\(aisi)") }
        if let lease { q.append("lease_id=\(lease)") }
        if let since { q.append("since=\(since)") }
        if let until { q.append("until=\(until)") }
        if let kind { q.append("kind=\(kind)") }
        if let afterSeq { q.append("after_seq=\(afterSeq)") }
        if let limit { q.append("limit=\(limit)") }
        let r = try conn.call("GET", "/v1/evidence" + (q.isEmpty ? "" : "?" + q.joined(separator: "&")))
        if conn.json { print(r.serialized()); return }
        func ms(_ v: JSON?) -> String { v?.doubleValue.map { String(format3ms($0)) } ?? "-" }
        let rows = (r["records"]?.arrayValue ?? []).map { e -> [String] in
            var summary = "-"
            if e["kind"]?.stringValue == "window" {
                let p = e["probes"], d = e["delay_ms"], f = e["flow"]
                let lost = p?["sent"]?.int64Value.map { sent in "\(sent - (p?["received"]?.int64Value ?? 0))/\(sent)" } ?? "-"
                let pk = f?["client_to_anchor"]?["packets"]?.int64Value.map { "\($0)/\(f?["anchor_to_client"]?["packets"]?.int64Value ?? 0) pkt" } ?? "-"
                summary = "\(e["window"]?["ms"]?.int64Value ?? 0)ms \(pk) lost \(lost) p50 \(ms(d?["p50"])) p99 \(ms(d?["p99"])) max \(ms(d?["max"]))"
            }
            return [String(e["seq"]?.int64Value ?? 0), e["time"]?.stringValue ?? "?", e["kind"]?.stringValue ?? "?", e["event"]?.stringValue ?? "-",
                    e["aisi"]?.stringValue ?? "-", e["lease_id"]?.stringValue ?? "-", e["anchor"]?["id"]?.stringValue ?? "-",
                    e["related_lease_id"]?.stringValue ?? "-", summary]
        }
        print(table(["SEQ", "TIME", "KIND", "EVENT", "AISI", "LEASE", "ANCHOR", "RELATED", "WINDOW (flow up/down, probes lost/sent, delay ms)"], rows))
        if r["truncated"]?.boolValue == true { print("(more records match: page with --after-seq)") }
    }
}

func format3ms(_ v: Double) -> String {
    let us = Int64((v * 1000).rounded())
    let sign = us < 0 ? "-" : ""
    return "\(sign)\(abs(us) / 1000).\(format3(abs(us) % 1000))"
}

struct EvidenceVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the evidence chain: every record's signature, its link to the one before, no gaps, no cut end.",
        discussion: """
        --file takes the state dir, its evidence/ dir or one segment file; the public key is then read from \
        STATE_DIR/evidence.pub unless --key gives it, and the signed HEAD checkpoint next to the segments, if there \
        is one, says where the chain must end. --from-agent reads the raw records and the key from the agent. \
        Exits 0 when the chain is intact, 1 with every finding (edited record N, records missing between N and M, \
        bad signature at N, records cut off after N) and where it is.
        """)
    @OptionGroup var conn: Connection
    @Option(help: "State dir, evidence dir or segment file to verify.") var file: String?
    @Flag(name: .customLong("from-agent"), help: "Verify the records the agent serves (GET /v1/evidence/log).") var fromAgent = false
    @Option(help: "Ed25519 public key: base64url text or a file holding it.") var key: String?

    func run() throws {
        guard (file != nil) != fromAgent else { throw ValidationError("give exactly one of --file PATH or --from-agent") }
        var findings: [EvidenceChain.Finding] = []
        var records = 0
        var firstSeq: UInt64?
        var lastSeq: UInt64?
        var keyID = ""
        if let file {
            let (segments, dir) = try EvidenceVerify.segments(file)
            let pub = try publicKey(explicit: key, stateDir: dir.map { NSStringLike($0).parent })
            var v = EvidenceChain.Verifier(key: pub)
            keyID = v.keyID
            for path in segments {
                let bytes = try readInput(path)
                let name = path.split(separator: "/").last.map(String.init) ?? path
                var lineNo = 0
                for line in bytes.split(separator: 0x0A, omittingEmptySubsequences: false) {
                    lineNo += 1
                    if line.isEmpty { continue }
                    v.feed(line: Array(line), location: "\(name):\(lineNo)")
                    if firstSeq == nil { firstSeq = v.lastSeq }
                }
                if let last = bytes.last, last != 0x0A, !bytes.isEmpty {
                    // (the writer ends every record with a newline: a missing one is a cut line, already reported)
                    _ = last
                }
            }
            var headSeq: UInt64?
            var headHash: [UInt8]?
            if let dir, let h = try? readInput(dir + "/HEAD"), let line = h.split(separator: 0x0A).first {
                if let p = try? EvidenceChain.parse(line: Array(line)), p.signatureIsValid(pub) {
                    headSeq = p.seq
                    headHash = p.prev
                } else {
                    findings.append(EvidenceChain.Finding(kind: .badSignature, seq: nil, location: "HEAD",
                                                          message: "the HEAD checkpoint is not signed by this key: it was edited or replaced"))
                }
            }
            v.finish(headSeq: headSeq, headHash: headHash)
            findings = v.findings + findings
            records = v.records
            lastSeq = v.lastSeq
        } else {
            let info = try conn.call("GET", "/v1/evidence/key")
            let pubText = key ?? info["public_key"]?.stringValue ?? ""
            let pub = try publicKey(explicit: pubText, stateDir: nil)
            var v = EvidenceChain.Verifier(key: pub)
            keyID = v.keyID
            let headSeq = info["head"]?["seq"]?.int64Value.map { UInt64($0) }
            let headHash = info["head"]?["hash"]?.stringValue.flatMap(EvidenceChain.unhex)
            var after: UInt64 = 0
            var lineNo = 0
            while true {
                let r = try conn.client.request("GET", "/v1/evidence/log?after_seq=\(after)&limit=10000")
                guard r.status == 200 else { throw ValidationError("the agent answered \(r.status) to GET /v1/evidence/log") }
                let lines = r.body.split(separator: 0x0A)
                if lines.isEmpty { break }
                var progressed = false
                for line in lines {
                    lineNo += 1
                    v.feed(line: Array(line), location: "agent log line \(lineNo)")
                    if firstSeq == nil { firstSeq = v.lastSeq }
                    if let s = v.lastSeq, s > after { after = s; progressed = true }
                }
                if !progressed || lines.count < 10000 { break }
            }
            v.finish(headSeq: headSeq, headHash: headSeq == v.lastSeq ? headHash : nil)
            findings = v.findings
            records = v.records
            lastSeq = v.lastSeq
        }
        if conn.json {
            print(JSON.object(JSON.Object(["ok": .bool(findings.isEmpty), "records": .int(records), "kid": .string(keyID),
                                           "first_seq": firstSeq.map { .int($0) } ?? .null, "last_seq": lastSeq.map { .int($0) } ?? .null,
                                           "findings": .array(findings.map(\.json))])).serialized())
        } else if findings.isEmpty {
            print("OK: \(records) records, seq \(firstSeq ?? 0)...\(lastSeq ?? 0), every signature valid and every record covered by one (key \(keyID)), chain unbroken")
        } else {
            print("FAILED: \(findings.count) problem\(findings.count == 1 ? "" : "s") in \(records) records (key \(keyID))")
            for f in findings { print("  \(f.location): \(f.kind.rawValue): \(f.message)") }
        }
        if !findings.isEmpty { throw ExitCode(1) }
    }

    /// The segment files to read, in order, and the evidence dir (where HEAD is).
    static func segments(_ path: String) throws -> ([String], String?) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw ValidationError("\(path): \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) != S_IFDIR {
            let dir = NSStringLike(path).parent
            return ([path], dir)
        }
        var dir = path
        var sub = stat()
        if stat(path + "/evidence", &sub) == 0, (sub.st_mode & S_IFMT) == S_IFDIR { dir = path + "/evidence" }
        guard let d = opendir(dir) else { throw ValidationError("cannot read \(dir)") }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix("segment-") && name.hasSuffix(".ndjson") { names.append(name) }
        }
        guard !names.isEmpty else { throw ValidationError("no evidence segments (segment-*.ndjson) in \(dir)") }
        return (names.sorted().map { dir + "/" + $0 }, dir)
    }

    func publicKey(explicit: String?, stateDir: String?) throws -> Curve25519.Signing.PublicKey {
        var text = explicit
        if let t = text, !t.isEmpty, t.contains("/") || (t.count != 43) {
            text = String(decoding: try readInput(t), as: UTF8.self)
        }
        if text == nil, let stateDir {
            text = (try? readInput(stateDir + "/evidence.pub")).map { String(decoding: $0, as: UTF8.self) }
        }
        guard let t = text?.split(whereSeparator: \.isWhitespace).first, let raw = Base64URL.decode(String(t)), raw.count == 32,
              let k = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else {
            throw ValidationError("no evidence public key: give --key (base64url, as in STATE_DIR/evidence.pub or GET /v1/evidence/key)")
        }
        return k
    }
}

/// The parent directory of a path, without Foundation.
struct NSStringLike {
    let s: String
    init(_ s: String) { self.s = s }
    var parent: String {
        guard let i = s.lastIndex(of: "/") else { return "." }
        return i == s.startIndex ? "/" : String(s[..<i])
    }
}

struct EvidenceAudit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Tail audit of an AISI's delay: p99 and p99.9 with confidence intervals, against its latency_ms.")
    @OptionGroup var conn: Connection
    @Option var aisi: String?
    @Option var lease: String?
    @Option(help: "RFC 3339") var since: String?
    @Option(help: "RFC 3339") var until: String?
    @Option(help: "Quantile the verdict is about (default 0.999).") var quantile: Double?
    @Option(help: "Confidence level (default 0.95).") var confidence: Double?
    @Option(name: .customLong("target-ms"), help: "Latency target instead of the leases' qos.latency_ms.") var targetMs: Double?
    func run() throws {
        guard aisi != nil || lease != nil else { throw ValidationError("give --aisi (or --lease)") }
        var q: [String] = []
        if let aisi { q.append("aisi=\(aisi)") }
        if let lease { q.append("lease_id=\(lease)") }
        if let since { q.append("since=\(since)") }
        if let until { q.append("until=\(until)") }
        if let quantile { q.append("quantile=\(quantile)") }
        if let confidence { q.append("confidence=\(confidence)") }
        if let targetMs { q.append("target_ms=\(targetMs)") }
        let r = try conn.call("GET", "/v1/evidence/audit?" + q.joined(separator: "&"))
        if conn.json { print(r.serialized()); return }
        let d = r["delay"]
        print("AISI \(r["aisi"]?.stringValue ?? "-")  windows \(r["windows"]?.int64Value ?? 0)  delay samples \(d?["samples"]?.int64Value ?? 0)  leases \((r["leases"]?.arrayValue ?? []).compactMap { $0["lease_id"]?.stringValue }.joined(separator: ","))")
        let p = r["probes"], l = r["loss"]
        func pct(_ v: JSON?) -> String { v?.doubleValue.map { "\(format3ms($0 * 100))%" } ?? "-" }
        print("probes sent \(p?["sent"]?.int64Value ?? 0) received \(p?["received"]?.int64Value ?? 0); loss \(pct(l?["ratio"])) (to anchor \(pct(l?["forward"])), back \(pct(l?["backward"])))")
        func row(_ e: JSON) -> [String] {
            func v(_ k: String) -> String { e[k]?.doubleValue.map(format3ms) ?? "-" }
            return ["p" + String(format3ms((e["quantile"]?.doubleValue ?? 0) * 100)).replacingZeros, e["method"]?.stringValue ?? "?", v("value_ms"), "[\(v("ci_low_ms")), \(v("ci_high_ms"))]"]
        }
        var rows = (d?["estimates"]?.arrayValue ?? []).map(row)
        rows += (d?["empirical"]?.arrayValue ?? []).map { row($0) + ["(empirical)"] }.map { Array($0.prefix(4)) }
        print(table(["QUANTILE", "METHOD", "DELAY ms", "CI (\(Int((d?["confidence"]?.doubleValue ?? 0.95) * 100))%)"], rows))
        if let pot = d?["pot"], pot.objectValue != nil {
            print("GPD over \(pot["threshold_ms"]?.doubleValue.map(format3ms) ?? "-") ms: \(pot["exceedances"]?.int64Value ?? 0) exceedances, xi \(pot["xi"]?.doubleValue ?? 0), sigma \(pot["sigma_ms"]?.doubleValue ?? 0) ms")
        }
        let target = d?["target_ms"]?.doubleValue.map { "\(format3ms($0)) ms (\(r["target_source"]?.stringValue ?? "-"))" } ?? "none"
        print("target \(target) at p\(format3ms((d?["target_quantile"]?.doubleValue ?? 0.999) * 100).replacingZeros): \(r["verdict"]?.stringValue ?? "?")")
    }
}

extension String {
    /// "99.900" -> "99.9"
    var replacingZeros: String {
        guard contains(".") else { return self }
        var s = self
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
        return s
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

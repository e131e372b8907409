import AIPagingCore
import CAIPagingShim

/// The credentials of the process on the other end of the control socket (SO_PEERCRED).
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public init(pid: Int32, uid: UInt32, gid: UInt32) { self.pid = pid; self.uid = uid; self.gid = gid }
    public var description: String { "pid=\(pid) uid=\(uid) gid=\(gid)" }
}

/// A request as the control API sees it, independent of the HTTP library.
public struct APIRequest: Sendable {
    public var method: String
    public var path: String
    public var query: [String: String]
    public var contentType: String?
    public var body: [UInt8]
    public var peer: PeerCredentials

    public init(method: String, target: String, contentType: String? = nil, body: [UInt8] = [], peer: PeerCredentials) {
        self.method = method
        let parts = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        self.path = parts.isEmpty ? "/" : String(parts[0])
        var q: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let k = APIRequest.percentDecode(String(kv[0]))
                q[k] = kv.count == 2 ? APIRequest.percentDecode(String(kv[1])) : ""
            }
        }
        self.query = q
        self.contentType = contentType
        self.body = body
        self.peer = peer
    }

    static func percentDecode(_ s: String) -> String {
        var out = [UInt8]()
        var it = Array(s.utf8)[...]
        while let c = it.first {
            it = it.dropFirst()
            if c == UInt8(ascii: "%"), it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) {
                out.append(v)
                it = it.dropFirst(2)
            } else if c == UInt8(ascii: "+") {
                out.append(0x20)
            } else {
                out.append(c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A response: a status and a JSON/text body, or a stream of chunks (NDJSON events).
public struct APIResponse: Sendable {
    public enum Body: Sendable {
        case bytes([UInt8])
        case stream(AsyncStream<[UInt8]>)
    }
    public var status: Int
    public var contentType: String
    public var body: Body
    public var headers: [(String, String)] = []

    public static func json(_ status: Int, _ value: JSON) -> APIResponse {
        APIResponse(status: status, contentType: "application/json", body: .bytes({ var b = value.bytes(reserving: 512); b.append(0x0A); return b }()))
    }
    public static func error(_ e: LeaseError) -> APIResponse { json(e.status, e.body) }
    public static func text(_ status: Int, _ s: String, contentType: String = "text/plain; charset=utf-8") -> APIResponse {
        APIResponse(status: status, contentType: contentType, body: .bytes(Array(s.utf8)))
    }

    public var bodyBytes: [UInt8]? { if case .bytes(let b) = body { return b } else { return nil } }
}

/// Routes control requests to the lease service. This is the whole HTTP surface of the agent;
/// `routes` lists it and a test holds the OpenAPI document to it.
public struct ControlAPI: Sendable {
    public let service: LeaseService
    public let clock: any AgentClock
    public let evidence: EvidenceStore
    public let metrics: AgentMetrics
    public let version: String

    public init(service: LeaseService, clock: any AgentClock, evidence: EvidenceStore, metrics: AgentMetrics, version: String = AgentVersion.string) {
        self.service = service
        self.clock = clock
        self.evidence = evidence
        self.metrics = metrics
        self.version = version
    }

    /// Every (method, path template) the API serves.
    public static let routes: [(method: String, path: String)] = [
        ("PUT", "/v1/leases/{lease_id}"),
        ("POST", "/v1/leases"),
        ("GET", "/v1/leases"),
        ("GET", "/v1/leases/{lease_id}"),
        ("DELETE", "/v1/leases/{lease_id}"),
        ("GET", "/v1/evidence"),
        ("GET", "/v1/evidence/audit"),
        ("GET", "/v1/evidence/key"),
        ("GET", "/v1/evidence/log"),
        ("GET", "/v1/events"),
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
    ]

    public func handle(_ req: APIRequest) async -> APIResponse {
        let policy = service.currentPolicy
        guard policy.allowsPeer(uid: req.peer.uid, gid: req.peer.gid) else {
            return fail(LeaseError(.unauthorizedPeer, "peer \(req.peer) is not allowed by the policy (peers.uids/gids)"))
        }
        let segments = req.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        switch (req.method, segments.count, segments.first) {
        case (_, 3, "v1") where segments[1] == "evidence":
            guard req.method == "GET" else { return methodNotAllowed(req, allowed: "GET") }
            switch segments[2] {
            case "audit": return await evidenceAudit(req)
            case "key": return .json(200, evidence.keyInfo)
            case "log": return await evidenceLog(req)
            default: break
            }
        case (_, 3, "v1") where segments[1] == "leases":
            let id = APIRequest.percentDecode(segments[2])
            switch req.method {
            case "PUT": return await put(id: id, req, policy: policy)
            case "GET": return await show(id: id)
            case "DELETE": return await revoke(id: id)
            default: return methodNotAllowed(req, allowed: "GET, PUT, DELETE")
            }
        case (_, 2, "v1"):
            switch (segments[1], req.method) {
            case ("leases", "GET"): return await list(req)
            case ("leases", "POST"): return await batch(req, policy: policy)
            case ("evidence", "GET"): return await evidenceQuery(req)
            case ("events", "GET"): return events(req)
            case ("status", "GET"): return await status()
            case ("leases", _): return methodNotAllowed(req, allowed: "GET, POST")
            case ("evidence", _), ("events", _), ("status", _): return methodNotAllowed(req, allowed: "GET")
            default: break
            }
        case ("GET", 1, "metrics"):
            return .text(200, await metrics.render(service: service, evidence: evidence), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case (_, 1, "metrics"):
            return methodNotAllowed(req, allowed: "GET")
        default:
            break
        }
        return fail(LeaseError(.notFound, "no such endpoint: \(req.method) \(req.path)"))
    }

    /// A request refused by the API itself (the lease service counts the ones it refuses).
    func fail(_ e: LeaseError) -> APIResponse {
        service.recordRejection(e.cause)
        return .error(e)
    }

    func methodNotAllowed(_ req: APIRequest, allowed: String) -> APIResponse {
        var r = fail(LeaseError(.methodNotAllowed, "\(req.method) is not allowed on \(req.path) (allowed: \(allowed))"))
        r.headers.append(("Allow", allowed))
        return r
    }

    // MARK: leases

    func put(id: String, _ req: APIRequest, policy: Policy) async -> APIResponse {
        let media = (req.contentType ?? "application/json").split(separator: ";").first.map { $0.trimmingSpaces.lowercased() } ?? ""
        let payload: [UInt8]
        switch media {
        case "application/json", "":
            guard policy.acceptUnsigned else {
                return fail(LeaseError(.signatureRequired, "this policy accepts only signed leases: send the lease as a JWS (Content-Type: application/jose)"))
            }
            payload = req.body
        case "application/jose", "application/jws":
            do { payload = try JWS.verify(req.body, keys: policy.keys).payload } catch { return fail(error) }
        default:
            return fail(LeaseError(.unsupportedMediaType, "Content-Type must be application/json or application/jose, not \(media)"))
        }
        let request: CommitRequest
        do { request = try CommitDecoder.decode(payload) } catch { return fail(error) }
        guard request.leaseID == id else {
            return fail(LeaseError(.leaseIdMismatch, "the path names lease \(id) but the body's lease_id is \(request.leaseID)", field: "lease_id"))
        }
        do {
            let outcome = try await service.commit(request)
            let status: Int
            if case .renewal = outcome.kind { status = 200 } else { status = 201 }
            return .json(status, Views.commit(outcome, now: clock.now()))
        } catch let e as LeaseError {
            return .error(e)
        } catch {
            return fail(LeaseError(.enforcementFailed, "\(error)"))
        }
    }

    /// `POST /v1/leases`: many COMMITs in one request, `{"leases": [lease, ...]}` where each item
    /// is a lease object (plain JSON, if the policy accepts unsigned leases) or a JWS compact
    /// string. Every item is admitted (or refused) on its own, exactly as a PUT would, but all
    /// of them travel in the same batch: one nftables transaction, one reply once the kernel
    /// state of every admitted item exists. 200 with `{"results": [...]}` in request order, each
    /// `{"lease_id", "status", "lease"}` or `{"lease_id", "status", "error"}`.
    func batch(_ req: APIRequest, policy: Policy) async -> APIResponse {
        let media = (req.contentType ?? "application/json").split(separator: ";").first.map { $0.trimmingSpaces.lowercased() } ?? ""
        guard media == "application/json" || media.isEmpty else {
            return fail(LeaseError(.unsupportedMediaType, "a batch is application/json: {\"leases\": [...]}"))
        }
        let root: JSON
        do { root = try JSON.parse(req.body) } catch {
            return fail(LeaseError(.malformedJSON, "the body is not valid JSON (\(error.description))"))
        }
        guard let items = root["leases"]?.arrayValue, root.objectValue?.count == 1 else {
            return fail(LeaseError(.malformedJSON, "a batch body is {\"leases\": [lease, ...]}"))
        }
        guard items.count <= ControlAPI.maxBatch else {
            return fail(LeaseError(.payloadTooLarge, "at most \(ControlAPI.maxBatch) leases per batch"))
        }
        var decoded: [Result<CommitRequest, LeaseError>] = []
        decoded.reserveCapacity(items.count)
        for item in items {
            do {
                if let token = item.stringValue {
                    let payload = try JWS.verify(Array(token.utf8), keys: policy.keys).payload
                    decoded.append(.success(try CommitDecoder.decode(payload)))
                } else {
                    guard policy.acceptUnsigned else {
                        throw LeaseError(.signatureRequired, "this policy accepts only signed leases: send each as a JWS string")
                    }
                    decoded.append(.success(try CommitDecoder.decode(item)))
                }
            } catch let e as LeaseError {
                service.recordRejection(e.cause)
                decoded.append(.failure(e))
            } catch {
                service.recordRejection(.badRequest)
                decoded.append(.failure(LeaseError(.badRequest, "\(error)")))
            }
        }
        let service = self.service
        let outcomes = await withTaskGroup(of: (Int, Result<CommitOutcome, LeaseError>).self) { group in
            for (i, d) in decoded.enumerated() {
                guard case .success(let r) = d else { continue }
                group.addTask {
                    do { return (i, .success(try await service.commit(r))) } catch let e as LeaseError {
                        return (i, .failure(e))
                    } catch {
                        return (i, .failure(LeaseError(.enforcementFailed, "\(error)")))
                    }
                }
            }
            var out = [Result<CommitOutcome, LeaseError>?](repeating: nil, count: decoded.count)
            for await (i, r) in group { out[i] = r }
            return out
        }
        let now = clock.now()
        var results: [JSON] = []
        results.reserveCapacity(decoded.count)
        for (i, d) in decoded.enumerated() {
            var o = JSON.Object()
            let result: Result<CommitOutcome, LeaseError>
            switch d {
            case .failure(let e):
                result = .failure(e)
                o["lease_id"] = items[i]["lease_id"] ?? .null
            case .success(let r):
                result = outcomes[i] ?? .failure(LeaseError(.enforcementFailed, "no result"))
                o["lease_id"] = .string(r.leaseID)
            }
            switch result {
            case .success(let c):
                if case .renewal = c.kind { o["status"] = 200 } else { o["status"] = 201 }
                o["lease"] = Views.commit(c, now: now)
            case .failure(let e):
                o["status"] = .int(e.status)
                o["error"] = e.body["error"]
            }
            results.append(.object(o))
        }
        return .json(200, ["results": .array(results)])
    }

    /// Largest batch of `POST /v1/leases`.
    public static let maxBatch = 10_000

    func show(id: String) async -> APIResponse {
        guard let l = await service.lease(id) else {
            return fail(LeaseError(.leaseNotFound, "no live lease \(id)"))
        }
        return .json(200, Views.lease(l, now: clock.now()))
    }

    func list(_ req: APIRequest) async -> APIResponse {
        let store = await service.leaseStore()
        let now = clock.now()
        // Filtering, sorting and rendering run off the event loop, which is the lease service's
        // thread too (all of it there took ~0.9 s at 100 000 leases, during which no deadline
        // was met and no request served); the copy of the leases shares their storage.
        return await Task.detached(priority: .utility) {
            var leases = Array(store.values.filter { l in
                req.query["aisi"].map { l.aisi == $0 } ?? true
                    && req.query["state"].map { l.state.rawValue == $0 } ?? true
                    && req.query["enforcement_point"].map { l.enforcementPoint == $0 } ?? true
            })
            leases.sort { ($0.admittedAt.boot, $0.id) < ($1.admittedAt.boot, $1.id) }
            var limited = leases[...]
            if let l = req.query["limit"], let n = Int(l), n >= 0 { limited = limited.prefix(n) }
            return APIResponse.json(200, ["count": .int(leases.count), "leases": .array(limited.map { Views.lease($0, now: now) })])
        }.value
    }

    func revoke(id: String) async -> APIResponse {
        do {
            let l = try await service.revoke(id)
            return .json(200, Views.lease(l, now: clock.now()))
        } catch let e as LeaseError {
            return .error(e)
        } catch {
            return fail(LeaseError(.enforcementFailed, "\(error)"))
        }
    }

    // MARK: evidence, events, status

    /// The filters common to the evidence endpoints: aisi, lease_id (or lease), since, until,
    /// kind, after_seq, limit.
    func evidenceFilters(_ req: APIRequest) -> Result<EvidenceQuery, LeaseError> {
        var q = EvidenceQuery()
        q.aisi = req.query["aisi"]
        q.leaseID = req.query["lease_id"] ?? req.query["lease"]
        if let s = req.query["since"] {
            guard let t = WallTime(rfc3339: s) else { return .failure(LeaseError(.badRequest, "since must be RFC 3339, e.g. 2026-01-02T03:04:05Z", field: "since")) }
            q.since = t
        }
        if let s = req.query["until"] {
            guard let t = WallTime(rfc3339: s) else { return .failure(LeaseError(.badRequest, "until must be RFC 3339, e.g. 2026-01-02T03:04:05Z", field: "until")) }
            q.until = t
        }
        if let k = req.query["kind"] { q.kind = k }
        if let a = req.query["after_seq"] {
            guard let n = UInt64(a) else { return .failure(LeaseError(.badRequest, "after_seq must be a record sequence number", field: "after_seq")) }
            q.afterSeq = n
        }
        if let l = req.query["limit"] {
            guard let n = Int(l), n >= 0 else { return .failure(LeaseError(.badRequest, "limit must be a non-negative integer", field: "limit")) }
            q.limit = n
        }
        return .success(q)
    }

    func evidenceQuery(_ req: APIRequest) async -> APIResponse {
        let q: EvidenceQuery
        switch evidenceFilters(req) {
        case .success(let v): q = v
        case .failure(let e): return .error(e)
        }
        let (records, truncated) = await evidence.query(q)
        var o = JSON.Object()
        o["count"] = .int(records.count)
        if truncated { o["truncated"] = true }
        o["records"] = .array(records.map { .object($0) })
        return .json(200, .object(o))
    }

    func evidenceAudit(_ req: APIRequest) async -> APIResponse {
        let q: EvidenceQuery
        switch evidenceFilters(req) {
        case .success(let v): q = v
        case .failure(let e): return .error(e)
        }
        guard q.aisi != nil || q.leaseID != nil else {
            return .error(LeaseError(.badRequest, "give aisi (and optionally lease_id, since, until) to audit", field: "aisi"))
        }
        var quantile = 0.999
        if let s = req.query["quantile"] {
            guard let v = Double(s), v > 0.5, v < 1 else { return .error(LeaseError(.badRequest, "quantile must be in (0.5, 1), e.g. 0.999", field: "quantile")) }
            quantile = v
        }
        var confidence = 0.95
        if let s = req.query["confidence"] {
            guard let v = Double(s), v >= 0.5, v < 1 else { return .error(LeaseError(.badRequest, "confidence must be in [0.5, 1), e.g. 0.95", field: "confidence")) }
            confidence = v
        }
        var target: Double?
        if let s = req.query["target_ms"] {
            guard let v = Double(s), v > 0 else { return .error(LeaseError(.badRequest, "target_ms must be a positive number", field: "target_ms")) }
            target = v
        }
        return .json(200, await evidence.audit(q, targetQuantile: quantile, confidence: confidence, targetMs: target))
    }

    /// The raw, signed log lines (NDJSON) after `after_seq`, at most `limit` (default 10 000):
    /// what `aipagingctl evidence verify --from-agent` checks byte for byte.
    func evidenceLog(_ req: APIRequest) async -> APIResponse {
        let after = req.query["after_seq"].flatMap { UInt64($0) } ?? 0
        let limit = req.query["limit"].flatMap { Int($0) }.map { max(1, min($0, 100_000)) } ?? 10_000
        let bytes = await evidence.rawLines(afterSeq: after, limit: limit)
        return APIResponse(status: 200, contentType: "application/x-ndjson", body: .bytes(bytes))
    }

    func events(_ req: APIRequest) -> APIResponse {
        let since = req.query["since"].flatMap { UInt64($0) } ?? 0
        let follow = req.query["follow"].map { $0 != "false" && $0 != "0" } ?? true
        let bus = service.events
        if !follow {
            var out = [UInt8]()
            for e in bus.history(after: since) { out += Array((e.json.serialized() + "\n").utf8) }
            return APIResponse(status: 200, contentType: "application/x-ndjson", body: .bytes(out))
        }
        let source = bus.subscribe(after: since)
        let stream = AsyncStream<[UInt8]> { cont in
            let task = Task {
                for await e in source { cont.yield(Array((e.json.serialized() + "\n").utf8)) }
                cont.finish()
            }
            cont.onTermination = { _ in task.cancel() }
        }
        return APIResponse(status: 200, contentType: "application/x-ndjson", body: .stream(stream))
    }

    func status() async -> APIResponse {
        let now = clock.now()
        let snapshot = await service.snapshot()
        var points: [JSON] = []
        for p in snapshot.points {
            var o = JSON.Object()
            o["name"] = .string(p.config.name)
            o["netns"] = .optional(p.config.netns)
            o["capacity_kbit"] = .int(p.config.capacityKbit)
            o["guaranteed_kbit"] = .int(p.guaranteedKbit)
            o["leases"] = .int(p.leases)
            o["interfaces"] = .array(p.interfaces.sorted().map { .string($0) })
            o["in_sync"] = .bool(!p.needsResync)
            points.append(.object(o))
        }
        var byState = JSON.Object()
        for s in LeaseState.allCases where s.isLive { byState[s.rawValue] = .int(snapshot.byState[s] ?? 0) }
        var o = JSON.Object()
        o["status"] = .string(snapshot.points.allSatisfy { !$0.needsResync } ? "ok" : "degraded")
        o["version"] = .string(version)
        o["policy"] = .string(snapshot.policyName)
        o["lab_policy"] = .bool(snapshot.labPolicy)
        o["leases"] = .object(byState)
        o["enforcement_points"] = .array(points)
        o["time"] = .string(now.wall.rfc3339)
        o["events_seq"] = .int(service.events.lastSeq)
        o["latency"] = ["install": snapshot.stats.installLatencies.summary,
                        "expiry_lateness": snapshot.stats.expiryLateness.summary,
                        "journal_sync": snapshot.stats.journalSync.summary,
                        "journal_wait": snapshot.stats.journalWait.summary,
                        "journal_compaction": snapshot.stats.journalCompaction.summary]
        o["journal"] = ["compaction_failures": .int(snapshot.stats.journalCompactionFailures)]
        o["evidence"] = evidenceStatus()
        // malloc's figures off the event loop (the lease service's thread): mallinfo2 walks every
        // free chunk of every arena, ~20 ms at 100 000 leases right after a burst of large
        // responses, until the idle trim.
        let stats = snapshot.stats
        o["memory"] = await Task.detached(priority: .utility) { Self.memoryStatus(stats) }.value
        o["scheduling"] = ThreadScheduling.status
        return .json(200, .object(o))
    }
}

extension ControlAPI {
    /// Resident set (from /proc) and malloc's view: bytes in use and bytes free inside its arenas
    /// (freed but not returned to the kernel), for operators sizing a node.
    static func memoryStatus(_ stats: LeaseService.Stats) -> JSON {
        var inUse: UInt64 = 0, free: UInt64 = 0, rss: UInt64 = 0
        aip_malloc_usage(&inUse, &free, &rss)
        return ["rss_bytes": .int(rss), "heap_in_use_bytes": .int(inUse), "heap_free_bytes": .int(free),
                "trims": .int(stats.memoryTrims), "last_trim_ms": .double(Double(stats.lastTrimNs) / 1e6)]
    }

    /// `/v1/status`'s `evidence` member: the key, the log's head and the measurement figures.
    func evidenceStatus() -> JSON {
        guard case .object(var o) = evidence.keyInfo else { return .null }
        if let st = evidence.log?.status {
            o["records_written"] = .int(st.recordsWritten)
            o["bytes_written"] = .int(st.bytesWritten)
            o["segments"] = .int(st.segments)
            if let e = st.lastError { o["last_write_error"] = .string(e) }
        }
        if let ex = evidence.exporter?.currentStats {
            o["measurement"] = ["sessions": .int(ex.sessions), "probing": .int(ex.probing), "probe_stride": .int(ex.probeStride),
                                "probes_sent": .int(ex.probesSent),
                                "probes_received": .int(ex.probesReceived), "window_records": .int(ex.windows),
                                "counter_reads": .int(ex.counterReads), "last_counter_read_ms": .double(ex.lastCounterReadMs),
                                "priority_mode": .string(ex.priorityMode), "last_error": .optional(ex.lastError)]
        }
        return .object(o)
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}

public enum AgentVersion {
    public static let string = "0.1.0"
}

@testable import AIPagingAgent
import AIPagingClient
import AIPagingCore
import AIPagingTestSupport
import Crypto
import Foundation
import Synchronization
import Testing

@Suite(.serialized) struct ControlAPITests {
    @Test func commitListShowRevoke() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        let (s, body) = try await agent.call("PUT", "/v1/leases/L1", json: lease())
        #expect(s == 201)
        #expect(body["result"]?.stringValue == "admitted")
        #expect(body["state"]?.stringValue == "active")
        #expect(body["kernel"]?["mark"]?.stringValue == "0xa1000001")
        #expect(body["remaining_ms"]?.int64Value == 30_000)
        let k = try await agent.kernel()
        #expect(k.steering.count == 1 && k.anchors.count == 1 && k.qos.count == 1 && k.leafCount == 1)

        let (ls, list) = try await agent.call("GET", "/v1/leases")
        #expect(ls == 200 && list["count"]?.int64Value == 1)
        let (ss, show) = try await agent.call("GET", "/v1/leases/L1")
        #expect(ss == 200 && show["aisi"]?.stringValue == "aisi-1")
        #expect(try await agent.call("GET", "/v1/leases?aisi=nope").1["count"]?.int64Value == 0)

        let (rs, revoked) = try await agent.call("DELETE", "/v1/leases/L1")
        #expect(rs == 200 && revoked["state"]?.stringValue == "revoked")
        #expect(try await agent.kernel().isEmpty)
        let (gs, gone) = try await agent.call("GET", "/v1/leases/L1")
        #expect(gs == 404 && gone["error"]?["cause"]?.stringValue == "lease_not_found")
        #expect(try await agent.call("DELETE", "/v1/leases/L1").0 == 404)
    }

    /// Bad requests get a clear 4xx with a cause, and change neither the lease table nor the kernel.
    /// With `http_thread` the control server runs on a thread of its own and hops to the lease
    /// service's: single, concurrent and batched requests are answered as on the shared thread,
    /// and the status reports the agent's memory.
    @Test func separateHTTPThreadServesTheSameAPI() async throws {
        let agent = try await TestAgent { $0.httpThread = true }
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/L1", json: lease()).0 == 201)
        let statuses = try await withThrowingTaskGroup(of: Int.self) { g in
            for i in 0..<16 {
                g.addTask { try await agent.call("PUT", "/v1/leases/C\(i)", json: lease("C\(i)", client: "198.18.1.\(i + 10)")).0 }
            }
            return try await g.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(statuses == Array(repeating: 201, count: 16))
        let batch: JSON = ["leases": .array((0..<3).map { lease("B\($0)", client: "198.18.1.\($0 + 40)") })]
        let (bs, bb) = try await agent.call("POST", "/v1/leases", json: batch)
        #expect(bs == 200 && bb["results"]?.arrayValue?.allSatisfy { $0["status"]?.int64Value == 201 } == true)
        let k = try await agent.kernel()
        #expect(k.steering.count == 20 && k.leafCount == 20)
        let (ss, status) = try await agent.call("GET", "/v1/status")
        #expect(ss == 200 && (status["memory"]?["rss_bytes"]?.int64Value ?? 0) > 0)
        #expect((status["memory"]?["heap_in_use_bytes"]?.int64Value ?? 0) > 0)
        #expect(try await agent.call("DELETE", "/v1/leases/L1").0 == 200)
        #expect(try await agent.kernel().steering.count == 19)
    }

    @Test func badRequestsChangeNothing() async throws {
        let agent = try await TestAgent(policy: .lab, capacityKbit: 10_000) { $0.maxBodyBytes = 4096 }
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/keep", json: lease("keep")).0 == 201)
        let before = try await agent.kernel()
        let leasesBefore = try await agent.call("GET", "/v1/leases").1

        let cases: [(String, [UInt8], String, Int, String)] = [
            ("/v1/leases/x", Array("{not json".utf8), "application/json", 400, "malformed_json"),
            ("/v1/leases/x", Array("[]".utf8), "application/json", 400, "malformed_json"),
            ("/v1/leases/other", Array(lease("x").serialized().utf8), "application/json", 400, "lease_id_mismatch"),
            ("/v1/leases/x", Array(lease("x", client: "198.18.1.999").serialized().utf8), "application/json", 422, "invalid_address"),
            ("/v1/leases/x", Array(lease("x", rate: 5000, ceil: 10).serialized().utf8), "application/json", 422, "rate_exceeds_ceil"),
            ("/v1/leases/x", Array(lease("x", ttlMs: 0).serialized().utf8), "application/json", 422, "invalid_ttl"),
            ("/v1/leases/x", Array(lease("x", ttlMs: 86_400_001).serialized().utf8), "application/json", 422, "ttl_exceeds_policy"),
            ("/v1/leases/x", Array(lease("x", client: "198.18.1.9", rate: 20_000, ceil: 20_000).serialized().utf8), "application/json", 503, "insufficient_capacity"),
            ("/v1/leases/x", Array(lease("x", aisi: "other").serialized().utf8), "application/json", 409, "classifier_conflict"),
            ("/v1/leases/x", Array(lease("x", client: "198.18.1.9").serialized().utf8), "text/plain", 415, "unsupported_media_type"),
            ("/v1/leases/x", Array("eyJhbGciOiJub25lIn0.e30.".utf8), "application/jose", 400, "malformed_jws"),
            ("/v1/leases/x", [UInt8](repeating: 0x20, count: 5000), "application/json", 413, "payload_too_large"),
        ]
        for (path, body, type, status, cause) in cases {
            let (s, b) = try await agent.raw("PUT", path, body: body, contentType: type)
            #expect(s == status, "\(cause)")
            #expect(b["error"]?["cause"]?.stringValue == cause)
            let message = b["error"]?["message"]?.stringValue ?? ""
            #expect(!message.isEmpty)
        }
        #expect(try await agent.call("PATCH", "/v1/leases").0 == 405)
        #expect(try await agent.call("POST", "/v1/leases/x").0 == 405)
        #expect(try await agent.call("GET", "/v2/nothing").1["error"]?["cause"]?.stringValue == "not_found")
        // Malformed HTTP: the codec answers 400 and closes.
        let garbage = try await agent.rawSocket(Array("NOT-HTTP\r\n\r\n".utf8))
        #expect(garbage.hasPrefix("HTTP/1.1 400"))

        #expect(try await agent.kernel() == before)
        #expect(try await agent.call("GET", "/v1/leases").1["count"] == leasesBefore["count"])
        let metrics = try await agent.text("/metrics")
        #expect(metrics.contains("aipaging_rejections_total{cause=\"insufficient_capacity\"} 1"))
    }

    @Test func slowRequestsTimeOut() async throws {
        let agent = try await TestAgent { $0.requestTimeoutMs = 300 }
        defer { Task { await agent.stop() } }
        let start = ContinuousClock.now
        let reply = try await agent.rawSocket(Array("PUT /v1/leases/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{\"lea".utf8))
        #expect(reply.hasPrefix("HTTP/1.1 408"))
        #expect(reply.contains("request_timeout"))
        #expect(ContinuousClock.now - start < .seconds(4))
        #expect(try await agent.kernel().isEmpty)
    }

    @Test func refusedPeerGets403AndChangesNothing() async throws {
        let policy = try Policy.parse(Array(#"{"peers":{"uids":[4242]},"accept_unsigned":true}"#.utf8))
        let agent = try await TestAgent(policy: policy)
        defer { Task { await agent.stop() } }
        // This test process (root) is not uid 4242.
        let (s, b) = try await agent.call("PUT", "/v1/leases/L1", json: lease())
        #expect(s == 403 && b["error"]?["cause"]?.stringValue == "unauthorized_peer")
        #expect(try await agent.call("GET", "/v1/leases").0 == 403)
        #expect(await agent.service.leaseStore().isEmpty)
        #expect(try await agent.kernel().isEmpty)
    }

    @Test(.enabled(if: getuid() == 0)) func peerCheckedBySOPeerCred() async throws {
        // A non-root process in an allowed group may use the socket; the agent sees its real ids.
        let policy = try Policy.parse(Array(#"{"peers":{"uids":[0],"gids":[65534]},"accept_unsigned":true}"#.utf8))
        let agent = try await TestAgent(policy: policy, socketMode: 0o666)
        defer { Task { await agent.stop() } }
        chmod(agent.dir, 0o755)
        let out = try await runProcessOffPool(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "-o", "/dev/null",
                                  "-w", "%{http_code}", "--unix-socket", agent.socketPath, "http://agent/v1/status"])
        #expect(out == "200")
        let denied = try await TestAgent(policy: try Policy.parse(Array(#"{"peers":{"uids":[0]},"accept_unsigned":true}"#.utf8)), socketMode: 0o666)
        defer { Task { await denied.stop() } }
        chmod(denied.dir, 0o755)
        let out2 = try await runProcessOffPool(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s",
                                   "--unix-socket", denied.socketPath, "http://agent/v1/status"])
        #expect(out2.contains("unauthorized_peer") && out2.contains("uid=65534"))
    }

    @Test func socketIsCreatedPrivate() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        var st = stat()
        #expect(stat(agent.socketPath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
    }

    @Test func signedLeases() async throws {
        let key = Curve25519.Signing.PrivateKey()
        let pub = Base64URL.encode(key.publicKey.rawRepresentation)
        let policy = try Policy.parse(Array(#"{"accept_unsigned":false,"controller_keys":[{"kid":"ctl-1","public_key":"\#(pub)"}]}"#.utf8))
        let agent = try await TestAgent(policy: policy)
        defer { Task { await agent.stop() } }
        let body = Array(lease().serialized().utf8)
        let (s1, b1) = try await agent.raw("PUT", "/v1/leases/L1", body: body)
        #expect(s1 == 401 && b1["error"]?["cause"]?.stringValue == "signature_required")
        let bad = try JWS.sign(payload: body, kid: "ctl-1", privateKey: Curve25519.Signing.PrivateKey())
        let (s2, b2) = try await agent.raw("PUT", "/v1/leases/L1", body: Array(bad.utf8), contentType: "application/jose")
        #expect(s2 == 401 && b2["error"]?["cause"]?.stringValue == "bad_signature")
        let good = try JWS.sign(payload: body, kid: "ctl-1", privateKey: key)
        let (s3, _) = try await agent.raw("PUT", "/v1/leases/L1", body: Array(good.utf8), contentType: "application/jose")
        #expect(s3 == 201)
        // A replay of an older generation is refused.
        let g2 = try JWS.sign(payload: Array(lease(generation: 2).serialized().utf8), kid: "ctl-1", privateKey: key)
        #expect(try await agent.raw("PUT", "/v1/leases/L1", body: Array(g2.utf8), contentType: "application/jose").0 == 200)
        let (s4, b4) = try await agent.raw("PUT", "/v1/leases/L1", body: Array(good.utf8), contentType: "application/jose")
        #expect(s4 == 409 && b4["error"]?["cause"]?.stringValue == "replay")
    }

    @Test func expiryRemovesStateAndEmitsEvents() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/L1", json: lease(ttlMs: 1000)).0 == 201)
        agent.clock.advance(milliseconds: 999)
        await agent.service.processTick()
        #expect(await agent.service.lease("L1") != nil)
        agent.clock.advance(milliseconds: 1)
        await agent.service.processTick()
        #expect(await agent.service.lease("L1") == nil)
        #expect(try await agent.kernel().isEmpty)
        let events = try await agent.text("/v1/events?follow=false")
        let lines = events.split(separator: "\n").map { try? JSON.parse(String($0)) }
        #expect(lines.map { $0?["event"]?.stringValue } == ["admitted", "expired"])
        #expect(lines.last??["lease_id"]?.stringValue == "L1")
        // The expiry event says when the lease was due and how late its state was gone (the
        // manual clock stood still at the deadline).
        #expect(lines.last??["deadline_monotonic_ns"]?.int64Value == lines.last??["monotonic_ns"]?.int64Value)
        #expect(lines.last??["late_us"]?.int64Value == 0)
        let ev = try await agent.call("GET", "/v1/evidence?aisi=aisi-1&kind=event").1
        #expect(ev["count"]?.int64Value == 2)
    }

    @Test func failedInstallLeavesNothingAndRefusesWithCause() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/A", json: lease("A")).0 == 201)
        let before = try await agent.kernel()
        // The kernel refuses B's state after its classes were added (a half-applied change).
        let b3 = Classifier(client: IPAddress("198.18.1.3")!, service: IPAddress("198.18.100.10")!, proto: .udp, port: 7000)
        _ = await agent.service.withBackend("ep") { backend in
            let fake = backend as! InMemoryBackend
            fake.failAfterSteps = 2
            fake.failWhen = { plan in plan.nft.contains { if case .addSteer(b3, _, _) = $0 { return true } else { return false } } }
        }
        let (s, b) = try await agent.call("PUT", "/v1/leases/B", json: lease("B", client: "198.18.1.3"))
        #expect(s == 503 && b["error"]?["cause"]?.stringValue == "enforcement_failed")
        #expect(try await agent.kernel() == before)
        #expect(await agent.service.lease("B") == nil)
        #expect(await agent.service.lease("A")?.state == .active)
        // A transient failure is retried once: the lease is admitted.
        _ = await agent.service.withBackend("ep") { backend in
            let fake = backend as! InMemoryBackend
            fake.failWhen = nil
            fake.failNextApplyAfterSteps = 1
        }
        #expect(try await agent.call("PUT", "/v1/leases/C", json: lease("C", client: "198.18.1.4")).0 == 201)
        // The next one goes through normally.
        #expect(try await agent.call("PUT", "/v1/leases/B", json: lease("B", client: "198.18.1.3")).0 == 201)
    }

    @Test func relocationThroughTheAPI() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/old", json: lease("old")).0 == 201)
        let (s, b) = try await agent.call("PUT", "/v1/leases/new", json: lease("new", anchorID: "cloud-1", anchor: "198.18.3.2", relocates: "old", drainMs: 500))
        #expect(s == 201)
        #expect(b["result"]?.stringValue == "relocated")
        #expect(b["relocated"]?["state"]?.stringValue == "draining")
        #expect(b["drain_ends_at"]?.stringValue != nil)
        let k = try await agent.kernel()
        #expect(k.steering.count == 1 && k.anchors.count == 2)
        agent.clock.advance(milliseconds: 500)
        await agent.service.processTick()
        #expect(await agent.service.lease("old") == nil)
        let k2 = try await agent.kernel()
        #expect(k2.anchors.count == 1 && k2.steering.values.first?.mark == k2.anchors.keys.first)
    }

    @Test func concurrentCommitsAreBatched() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        let client = agent.client
        // Blocking clients on their own threads (not the cooperative pool the agent runs on).
        let statuses = await onThreads(64) { i in
            let body = Array(lease("c\(i)", client: "198.18.\(1 + i / 200).\(10 + i % 200)").serialized().utf8)
            return (try? client.request("PUT", "/v1/leases/c\(i)", body: body).status) ?? -1
        }
        #expect(statuses == [Int](repeating: 201, count: 64))
        let snap = await agent.service.snapshot()
        #expect(snap.byState[.active] == 64)
        #expect(try await agent.kernel().steering.count == 64)
    }

    @Test func aStreamOfDeadlinesDoesNotHoldQueuedCommitsBack() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        let clock = agent.clock
        // A slow kernel: every change takes 10 ms (the manual clock advances).
        await agent.slowKernel { plan in plan.nft.isEmpty ? 0 : 10 }
        // A is due 1 000 ms from now, B 1 015 ms (each install takes 10 ms).
        #expect(try await agent.call("PUT", "/v1/leases/A", json: lease("A", ttlMs: 1000)).0 == 201)
        #expect(try await agent.call("PUT", "/v1/leases/B", json: lease("B", client: "198.18.1.3", ttlMs: 1005)).0 == 201)
        let (committed, _) = try await agent.commitsQueuedOnHeldLoop(2) {
            clock.advance(milliseconds: 990)   // A is due, B in 5 ms: due once A's removal took 10
        }
        #expect(committed == [true, true])
        let events = try await agent.events()
        // A ended first; then a queued commit went in before B's expiry, which was due by then.
        let a = events.index("expired", "A"), b = events.index("expired", "B")
        let first = [events.index("admitted", "q0"), events.index("admitted", "q1")].compactMap { $0 }.min()
        #expect(a != nil && b != nil && first != nil)
        if let a, let b, let first { #expect(a < first && first < b) }
    }

    @Test func dueLeasesEndAheadOfQueuedCommitsAndBatchesStopShortOfTheNextDeadline() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        let clock = agent.clock
        // A slow kernel: each lease it installs takes 10 ms (the manual clock advances).
        await agent.slowKernel { plan in 10 * UInt64(plan.installs) }
        // E's deadline is 1 000 ms from now, F's 1 050 ms (each install takes 10 ms).
        #expect(try await agent.call("PUT", "/v1/leases/E", json: lease("E", ttlMs: 1000)).0 == 201)
        #expect(try await agent.call("PUT", "/v1/leases/F", json: lease("F", client: "198.18.1.3", ttlMs: 1040)).0 == 201)
        // The service's loop is held while 8 commits queue up and E falls due.
        let (committed, plansBefore) = try await agent.commitsQueuedOnHeldLoop(8) {
            clock.advance(milliseconds: 1000)   // E is due, F in 30 ms
        }
        #expect(committed == [Bool](repeating: true, count: 8))
        let events = try await agent.events()
        let admittedQueued = (0..<8).compactMap { events.index("admitted", "q\($0)") }
        #expect(admittedQueued.count == 8)
        // E ended before any of the queued leases was installed; F, due while they were being
        // installed (80 ms of kernel time), before the last of them.
        #expect(events.index("expired", "E").map { $0 < admittedQueued.min()! } == true)
        #expect(events.index("expired", "F").map { $0 < admittedQueued.max()! } == true)
        // The queued commits went in more than one batch.
        let plans = await agent.service.withBackend("ep") { ($0 as! InMemoryBackend).appliedPlans } ?? []
        let installing = plans.dropFirst(plansBefore).filter { $0.installs > 0 }
        #expect(installing.count >= 2)
        #expect(await agent.service.lease("E") == nil)
        #expect(await agent.service.lease("F") == nil)
    }
}

extension ControlAPITests {
    /// The loop that runs the batches also reads the requests, and under load reads many after
    /// each batch before it runs the timer's tick: a deadline that passes meanwhile is met when
    /// the next request arrives, with requests already queued, not after the reads.
    @Test func aDeadlineThatPassesWhileRequestsAreReadIsMetAtTheNextRequest() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/X", json: lease("X", ttlMs: 1000)).0 == 201)
        let service = agent.service
        // The loop is held while two requests and then a look at X queue up on it, in this
        // order, and X falls due (no timer tick: the manual clock only moves).
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let blocker = Task { await service.withBackend("ep") { _ in entered.signal(); release.wait() } }
        try await offPool { entered.wait() }
        let q0 = Task { (try? await service.commit(TestAgent.queued(0))) != nil }
        _ = try await offPool { usleep(20_000) }
        let q1 = Task { (try? await service.commit(TestAgent.queued(1))) != nil }
        _ = try await offPool { usleep(20_000) }
        let look = Task { await service.lease("X")?.state }
        _ = try await offPool { usleep(20_000) }
        agent.clock.advance(milliseconds: 1000)
        release.signal()
        _ = await blocker.value
        #expect(await q0.value)
        #expect(await q1.value)
        // X ended when q1 arrived (q0 queued), before the look that came next and so before the
        // batch of q0 and q1, which the loop runs after it.
        let seen = await look.value
        #expect(seen != .active, "X was \(seen.map { "\($0)" } ?? "gone") when the look ran")
        let events = try await agent.events()
        #expect(events.index("expired", "X").map { $0 < events.index("admitted", "q0")! } == true)
    }

    /// A batch waits for its fdatasync before it answers (a slow one took 31 ms here); a lease
    /// that falls due meanwhile ends then, not after the batch.
    @Test func aLeaseDueWhileABatchWaitsForTheDiskEndsMeanwhile() async throws {
        let agent = try await TestAgent(journal: true)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/X", json: lease("X", ttlMs: 1000)).0 == 201)
        await agent.service.slowJournalSyncsForTesting(ms: 1000)
        let before = agent.journalBytes()
        let y = Task { try await agent.call("PUT", "/v1/leases/Y", json: lease("Y", client: "198.18.1.3", ttlMs: 60_000)).0 }
        // Y's batch has written its record and waits for the disk.
        for _ in 0..<500 where agent.journalBytes() == before { _ = try await offPool { usleep(1000) } }
        agent.clock.advance(milliseconds: 1000)     // X is due (no timer tick: a manual clock)
        #expect(try await y.value == 201)
        let events = try await agent.events()
        let expired = try #require(events.index("expired", "X"))
        #expect(expired < events.index("admitted", "Y")!, "X ended after Y's batch")
        #expect(events[expired]["late_us"]?.int64Value == 0)
        #expect(await agent.service.lease("X") == nil)
    }

    /// A renewal whose fdatasync fails is rolled back, and the lease's old deadline, which
    /// passed while the batch waited for the disk (the lease looked renewed then), still ends it.
    @Test func aRenewalThatCannotBeJournaledLeavesTheOldDeadlineInForce() async throws {
        let agent = try await TestAgent(journal: true)
        defer { Task { await agent.stop() } }
        #expect(try await agent.call("PUT", "/v1/leases/R", json: lease("R", ttlMs: 1000)).0 == 201)
        await agent.service.slowJournalSyncsForTesting(ms: 1000, failing: true)
        let before = agent.journalBytes()
        let renewal = Task { try await agent.call("PUT", "/v1/leases/R", json: lease("R", ttlMs: 60_000)).0 }
        // The renewal's batch has written its record and waits for the disk.
        for _ in 0..<500 where agent.journalBytes() == before { _ = try await offPool { usleep(1000) } }
        agent.clock.advance(milliseconds: 1000)     // R's old deadline passes meanwhile
        #expect(try await renewal.value == 503)   // enforcement_failed: not recorded durably
        await agent.service.slowJournalSyncsForTesting(ms: 0)
        await agent.service.processTick()
        #expect(await agent.service.lease("R") == nil)
        let events = try await agent.events()
        #expect(events.index("expired", "R") != nil && events.index("renewed", "R") == nil)
    }

    @Test func requestsWaitForADeadlineThatOneRequestsKernelWorkWouldOverrun() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        let clock = agent.clock
        // A slow kernel: each lease it installs takes 10 ms (the manual clock advances), as an
        // HTB class add at 100 000 leases can.
        await agent.slowKernel { plan in 10 * UInt64(plan.installs) }
        // Five leases teach the service what an install takes (its moving average: 7.6 ms).
        try await agent.admitW(5)
        // G is due 100 ms after its admission, 90 ms after its install.
        #expect(try await agent.call("PUT", "/v1/leases/G", json: lease("G", ttlMs: 100)).0 == 201)
        // A revoke costs this kernel nothing, and the service learns that too.
        #expect(try await agent.call("DELETE", "/v1/leases/W4").0 == 200)
        let (done, _) = try await agent.commitsQueuedOnHeldLoop(2, first: [{ (try? await $0.revoke("W3")) != nil }]) {
            clock.advance(milliseconds: 87)   // G is due in 3 ms: one more install would end 7 ms late
        } released: {
            _ = try await offPool { usleep(200_000) }
            // The revoke queued first went ahead; the commits wait for G's deadline.
            #expect(await agent.service.lease("W3") == nil)
            #expect(await agent.service.lease("q0") == nil)
            #expect(await agent.service.lease("G")?.state == .active)
            clock.advance(milliseconds: 3)
            agent.service.tick()   // the expiry timer's tick at G's deadline
        }
        #expect(done == [true, true, true])
        let events = try await agent.events()
        let g = events.index("expired", "G"), q0 = events.index("admitted", "q0"), q1 = events.index("admitted", "q1")
        #expect(g != nil && q0 != nil && q1 != nil)
        if let g, let q0, let q1 { #expect(g < q0 && g < q1) }
        #expect(g.map { events[$0]["late_us"]?.int64Value } == 0)   // gone at the deadline, not after an install
    }

    @Test func aRenewalIsNotHeldPastTheDeadlineOfTheLeaseItRenews() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        let clock = agent.clock
        // A class add takes 50 ms (an estimate of ~38 ms per commit after five); a renewal, which
        // adds none, takes no time.
        await agent.slowKernel { plan in 50 * UInt64(plan.leafAdds) }
        try await agent.admitW(5)
        #expect(try await agent.call("PUT", "/v1/leases/G", json: lease("G", ttlMs: 200)).0 == 201)
        // G's renewal is queued first, 18 ms before G is due (its elements' kernel timeouts,
        // shortened by the margin that slow transactions widen, still run): it goes ahead, where
        // a commit that does not renew G would wait for G's deadline.
        var renewal = try #require(await agent.service.lease("G")).request
        renewal.lifetime = .ttl(milliseconds: 60_000)
        let (done, _) = try await agent.commitsQueuedOnHeldLoop(1, first: [{ [renewal] in (try? await $0.commit(renewal)) != nil }]) {
            clock.advance(milliseconds: 132)
        } released: {
            _ = try await offPool { usleep(200_000) }
            let admittedRenewal = try await agent.events().index("renewed", "G") != nil
            #expect(admittedRenewal)
            if !admittedRenewal { clock.advance(milliseconds: 18); agent.service.tick() }   // held: let the test end
        }
        #expect(done == [true, true])
        #expect(try await agent.events().index("expired", "G") == nil)
        #expect(await agent.service.lease("G")?.state == .active)
    }

    /// A compaction that fails (here: its temp file's path is taken by a directory) is tried
    /// again only `compactionRetryNs` later, not after every batch; the journal goes on growing
    /// meanwhile and the leases are served.
    @Test func aFailedCompactionIsRetriedOnlyAfterAPause() async throws {
        let agent = try await TestAgent(journal: true)
        defer { Task { await agent.stop() } }
        let service = agent.service
        let tmp = agent.dir + "/leases.journal.tmp"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: false)
        await service.compactSmallJournalsForTesting()
        func waitUntilReady() async throws {
            for _ in 0..<200 where !(await service.journalCompactionReady) { _ = try await offPool { usleep(5_000) } }
            #expect(await service.journalCompactionReady)
        }
        #expect(try await agent.call("PUT", "/v1/leases/L", json: lease("L", ttlMs: 600_000)).0 == 201)
        #expect(await service.journalCompactionInFlight)
        try await waitUntilReady()
        // The next batch finds it failed, and starts none.
        #expect(try await agent.call("PUT", "/v1/leases/E", json: lease("E", client: "198.18.1.3", ttlMs: 600_000)).0 == 201)
        #expect(await service.stats.journalCompactionFailures == 1)
        #expect(await service.journalCompactionInFlight == false)
        #expect(try await agent.call("PUT", "/v1/leases/F", json: lease("F", client: "198.18.1.4", ttlMs: 600_000)).0 == 201)
        #expect(await service.journalCompactionInFlight == false)
        // After the pause the next batch tries again, and this time the disk takes it.
        try FileManager.default.removeItem(atPath: tmp)
        agent.clock.advance(milliseconds: LeaseService.compactionRetryNs / 1_000_000)
        #expect(try await agent.call("PUT", "/v1/leases/G", json: lease("G", client: "198.18.1.5", ttlMs: 600_000)).0 == 201)
        #expect(await service.journalCompactionInFlight)
        try await waitUntilReady()
        #expect(try await agent.call("PUT", "/v1/leases/H", json: lease("H", client: "198.18.1.6", ttlMs: 600_000)).0 == 201)
        #expect(await service.stats.journalCompaction.count == 1)
        #expect(await service.stats.journalCompactionFailures == 1)
        let (_, status) = try await agent.call("GET", "/v1/status")
        #expect(status["journal"]?["compaction_failures"]?.int64Value == 1)
        let live = Set(try LeaseJournal(stateDir: agent.dir).load(clock: agent.clock.now()).records.compactMap { if case .lease(let l) = $0 { l.id } else { nil } })
        #expect(live == ["L", "E", "F", "G", "H"])
    }

    @Test func theJournalCompactionSwitchWaitsForAGapBetweenDeadlines() async throws {
        let agent = try await TestAgent(journal: true)
        defer { Task { await agent.stop() } }
        let service = agent.service
        #expect(try await agent.call("PUT", "/v1/leases/L", json: lease("L")).0 == 201)
        #expect(try await agent.call("PUT", "/v1/leases/D", json: lease("D", client: "198.18.1.3", ttlMs: 30)).0 == 201)
        await service.beginJournalCompaction()
        for _ in 0..<200 where !(await service.journalCompactionReady) { _ = try await offPool { usleep(10_000) } }
        #expect(await service.journalCompactionReady)
        // A batch with D due in 30 ms: the switch waits.
        #expect(try await agent.call("PUT", "/v1/leases/E", json: lease("E", client: "198.18.1.4")).0 == 201)
        #expect(await service.stats.journalCompaction.count == 0)
        // D ends; after that batch no deadline is near, and the switch runs.
        agent.clock.advance(milliseconds: 30)
        await service.processTick()
        #expect(await service.lease("D") == nil)
        #expect(await service.stats.journalCompaction.count == 1)
        #expect(await service.journalCompactionReady == false)
        // The compacted journal holds what the switch waited through (E) and D's end.
        let records = try LeaseJournal(stateDir: agent.dir).load(clock: agent.clock.now()).records
        let live = Set(records.compactMap { if case .lease(let l) = $0 { l.id } else { nil } })
        #expect(live.isSuperset(of: ["L", "E"]))
    }

    @Test func aStallDoesNotHoldRequestsBackForLongerThanTheHoldLimit() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        let clock = agent.clock
        // One install stalls for 2 s: the service's estimate of an install jumps to ~0.5 s.
        let stall = Mutex(true)
        await agent.slowKernel { plan in plan.installs > 0 && stall.withLock({ let s = $0; $0 = false; return s }) ? 2000 : 0 }
        #expect(try await agent.call("PUT", "/v1/leases/S", json: lease("S")).0 == 201)
        // H is due in 100 ms, far beyond the hold limit (20 ms): a queued commit goes ahead.
        #expect(try await agent.call("PUT", "/v1/leases/H", json: lease("H", client: "198.18.1.3", ttlMs: 100)).0 == 201)
        let (done, _) = try await agent.commitsQueuedOnHeldLoop(1) {} released: {
            _ = try await offPool { usleep(200_000) }
            let admitted = await agent.service.lease("q0")?.state == .active
            #expect(admitted)
            if !admitted { clock.advance(milliseconds: 100); agent.service.tick() }   // held: let the test end
        }
        #expect(done == [true])
        #expect(await agent.service.lease("H")?.state == .active)
    }
}

extension TestAgent {
    /// Makes the in-memory kernel slow: each apply advances the manual clock by `ms(plan)`.
    func slowKernel(_ ms: @escaping @Sendable (PointPlan) -> UInt64) async {
        let clock = self.clock
        _ = await service.withBackend("ep") { backend in
            (backend as! InMemoryBackend).onApply = { plan in clock.advance(milliseconds: ms(plan)) }
        }
    }

    /// Admits leases `W0` ... (clients 198.18.1.10 ...), as the service's first requests.
    func admitW(_ n: Int) async throws {
        for i in 0..<n {
            #expect(try await call("PUT", "/v1/leases/W\(i)", json: lease("W\(i)", client: "198.18.1.\(10 + i)")).0 == 201)
        }
    }

    /// Holds the lease service's loop, queues `n` commits (`q0`, `q1`, ...) straight to the
    /// service meanwhile (each a job on the held loop, so all of them are pending when it runs
    /// again; the requests of `first` queued before them, in order), runs `meanwhile`, lets the
    /// loop go, runs `released` and waits for all of them. Returns whether each commit, then each
    /// of `first`, succeeded, and how many plans the in-memory kernel had applied before.
    func commitsQueuedOnHeldLoop(_ n: Int, first: [@Sendable (LeaseService) async -> Bool] = [], meanwhile: () -> Void,
                                 released: () async throws -> Void = {}) async throws -> (succeeded: [Bool], plansBefore: Int) {
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let plansBefore = Mutex(0)
        let service = self.service
        let blocker = Task {
            await service.withBackend("ep") { backend in
                plansBefore.withLock { $0 = (backend as! InMemoryBackend).appliedPlans.count }
                entered.signal()
                release.wait()
            }
        }
        try await offPool { entered.wait() }
        var firsts: [Task<Bool, Never>] = []
        for request in first {
            firsts.append(Task { await request(service) })
            _ = try await offPool { usleep(20_000) }   // queued in this order
        }
        let commits = (0..<n).map { i in
            Task { (try? await service.commit(Self.queued(i))) != nil }
        }
        _ = try await offPool { usleep(200_000) }   // the commits are queued
        meanwhile()
        release.signal()
        _ = await blocker.value
        try await released()
        var succeeded: [Bool] = []
        for c in commits { succeeded.append(await c.value) }
        for r in firsts { succeeded.append(await r.value) }
        return (succeeded, plansBefore.withLock { $0 })
    }

    /// The commit of lease `q<i>` (client 198.18.2.<10+i>).
    static func queued(_ i: Int) -> CommitRequest {
        CommitRequest(leaseID: "q\(i)", aisi: "aisi-q\(i)", aist: "t", lifetime: .ttl(milliseconds: 60_000),
                      classifier: Classifier(client: IPAddress("198.18.2.\(10 + i)")!, service: IPAddress("198.18.100.10")!, proto: .udp, port: 7000),
                      anchor: Anchor(id: "edge-1", address: IPAddress("198.18.2.2")!, port: 7000),
                      qos: QoSBinding(rateKbit: 10, ceilKbit: 20, priority: 1))
    }

    /// The lifecycle events so far (`GET /v1/events?follow=false`).
    func events() async throws -> [JSON] {
        try await text("/v1/events?follow=false").split(separator: "\n").compactMap { try? JSON.parse(String($0)) }
    }
}

extension [JSON] {
    /// Where event `event` of lease `id` is among these events.
    func index(_ event: String, _ id: String) -> Int? {
        firstIndex { $0["event"]?.stringValue == event && $0["lease_id"]?.stringValue == id }
    }
}

extension PointPlan {
    /// Leases whose steering the plan installs.
    var installs: Int { nft.filter { if case .addSteer = $0 { return true } else { return false } }.count }
    /// HTB leaf classes the plan adds (a renewal adds none).
    var leafAdds: Int { tcBefore.filter { if case .addLeaf = $0 { return true } else { return false } }.count }
}

func runProcessOffPool(_ args: [String]) async throws -> String {
    try await offPool { try runProcess(args) }
}

func runProcess(_ args: [String]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// Runs `body(i)` for i in 0..<n, each on its own OS thread, and returns the results in order.
func onThreads<T: Sendable>(_ n: Int, _ body: @escaping @Sendable (Int) -> T) async -> [T] {
    await withCheckedContinuation { (c: CheckedContinuation<[T], Never>) in
        let results = Mutex([T?](repeating: nil, count: n))
        let group = DispatchGroup()
        for i in 0..<n {
            group.enter()
            Thread.detachNewThread {
                let r = body(i)
                results.withLock { $0[i] = r }
                group.leave()
            }
        }
        group.notify(queue: .global()) { c.resume(returning: results.withLock { $0.map { $0! } }) }
    }
}

@Suite struct BatchAPITests {
    @Test func batchAdmitsEachItemOnItsOwn() async throws {
        let agent = try await TestAgent()
        defer { Task { await agent.stop() } }
        var items: [JSON] = (0..<20).map { lease("b\($0)", client: "198.18.9.\($0 + 1)") }
        items.insert(lease("bad", rate: 9000, ceil: 10), at: 3)
        items.append(lease("dup", client: "198.18.9.1"))   // the classifier of b0
        items.append(["lease_id": "broken"])
        let (s, body) = try await agent.call("POST", "/v1/leases", json: ["leases": .array(items)])
        #expect(s == 200)
        let results = try #require(body["results"]?.arrayValue)
        #expect(results.count == 23)
        #expect(results[0]["status"]?.int64Value == 201 && results[0]["lease"]?["state"]?.stringValue == "active")
        #expect(results[3]["status"]?.int64Value == 422 && results[3]["error"]?["cause"]?.stringValue == "rate_exceeds_ceil")
        #expect(results[3]["lease_id"]?.stringValue == "bad")
        #expect(results[21]["error"]?["cause"]?.stringValue == "classifier_conflict")
        #expect(results[22]["error"]?["cause"]?.stringValue == "missing_field")
        #expect(results.filter { $0["status"]?.int64Value == 201 }.count == 20)
        #expect(try await agent.kernel().steering.count == 20)
        #expect(try await agent.call("POST", "/v1/leases", json: ["nope": 1]).0 == 400)
        #expect(try await agent.call("DELETE", "/v1/leases").0 == 405)
    }
}

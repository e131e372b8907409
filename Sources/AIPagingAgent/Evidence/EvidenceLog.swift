import AIPagingCore
import CAIPagingShim
import Crypto
import Foundation
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why the evidence log cannot be used; the message says what to fix.
public struct EvidenceError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The agent's Ed25519 evidence key: `STATE_DIR/evidence.key` (base64url of the 32-byte private
/// key, mode 0600, made on first start) and `STATE_DIR/evidence.pub` (the public key, 0644).
public struct EvidenceKey: Sendable {
    /// Raw private key bytes (kept as bytes: the Crypto key type is not Sendable).
    let privateRaw: [UInt8]
    public let publicRaw: [UInt8]
    public let keyID: String

    public var privateKey: Curve25519.Signing.PrivateKey { try! Curve25519.Signing.PrivateKey(rawRepresentation: privateRaw) }
    public var publicKeyBase64URL: String { Base64URL.encode(publicRaw) }

    public init(privateKey: Curve25519.Signing.PrivateKey) {
        privateRaw = Array(privateKey.rawRepresentation)
        publicRaw = Array(privateKey.publicKey.rawRepresentation)
        keyID = EvidenceChain.keyID(privateKey.publicKey)
    }

    /// Loads the key from `dir`, or creates it (O_EXCL, 0600) if there is none. Refuses a key
    /// file that group or others can read.
    public static func loadOrCreate(dir: String) throws(EvidenceError) -> EvidenceKey {
        let path = dir + "/evidence.key"
        var st = stat()
        if stat(path, &st) == 0 {
            guard st.st_mode & 0o077 == 0 else {
                throw EvidenceError("\(path) is readable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))): run `chmod 600 \(path)`")
            }
            guard let data = FileManager.default.contents(atPath: path),
                  let raw = Base64URL.decode(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
                  raw.count == 32, let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
                throw EvidenceError("\(path) is not an evidence key (base64url of 32 bytes); move it away to make a new key (older evidence then verifies only with the old public key)")
            }
            let k = EvidenceKey(privateKey: key)
            writePublic(dir: dir, k)
            return k
        }
        let key = Curve25519.Signing.PrivateKey()
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw EvidenceError("cannot create \(path): \(String(cString: strerror(errno))); is the state dir writable?")
        }
        let text = Array((Base64URL.encode(Array(key.rawRepresentation)) + "\n").utf8)
        let ok = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == text.count && fsync(fd) == 0
        Glibc.close(fd)
        guard ok else { throw EvidenceError("cannot write \(path): \(String(cString: strerror(errno)))") }
        let k = EvidenceKey(privateKey: key)
        writePublic(dir: dir, k)
        return k
    }

    static func writePublic(dir: String, _ k: EvidenceKey) {
        let path = dir + "/evidence.pub"
        let text = k.publicKeyBase64URL + "\n"
        if (try? String(contentsOfFile: path, encoding: .utf8)) == text { return }
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o644])
    }
}

/// The durable, append-only, hash-chained and signed evidence log in `STATE_DIR/evidence/`.
///
/// Records are sealed (sequence number, previous hash, signature; see `EvidenceChain`) and
/// written by one writer thread, in segments `segment-NNNNNNNN.ndjson` of up to
/// `segmentBytes`, one record per line.
///
/// **Write-behind.** The first record after a pause wakes the writer and is written at once; while
/// records keep coming, the writer looks again `writeBehindNs` (5 ms) after each write instead of
/// being woken for each record, so a stream of admissions costs the lease service no thread wake
/// per event and the writer one signature per 5 ms, not per record. A query (`flush()`) wakes the
/// writer, so it always sees every record queued before it.
///
/// **fsync policy: group commit.** Every batch of records queued since the last write goes out in
/// one `write(2)`; `fdatasync(2)` runs at
/// most every `syncInterval` (default 1 s) and on stop, after which `HEAD` — a signed checkpoint of
/// the last durable record — is replaced. Window records come in bursts at window boundaries and
/// event records at admission rate, so one sync per interval keeps the disk cost constant
/// whatever the lease count, while a power loss costs at most the last interval's records: the
/// chain after a restart continues from the last record that reached the disk, and HEAD never
/// names a record that did not. A torn last line (a crash in the middle of a write) is cut off at
/// start and the `agent started` record says how many bytes were dropped.
public final class EvidenceLog: Sendable {
    public let directory: String
    public let key: EvidenceKey
    let syncIntervalNs: UInt64
    let segmentBytes: Int
    let logger: Logger

    struct Segment: Sendable {
        var path: String
        var firstSeq: UInt64
        var lastSeq: UInt64
        var firstTime: WallTime?
        var lastTime: WallTime?
    }

    struct Shared: Sendable {
        var queue: [EVIRecord] = []
        var enqueued: UInt64 = 0
        var written: UInt64 = 0
        var waiters: [(UInt64, CheckedContinuation<Void, Never>)] = []
        var stopping = false
        var stopped = false
        /// The writer waits for a signal (or the next due sync), not for the end of a
        /// write-behind nap: the next record must wake it.
        var writerParked = false
        /// Times a producer (or a flush) woke the writer.
        var wakes: UInt64 = 0
        var headSeq: UInt64 = 0
        var headHash: [UInt8] = EvidenceChain.genesisHash
        var durableSeq: UInt64 = 0
        var segments: [Segment] = []
        var bytesWritten: UInt64 = 0
        var recordsWritten: UInt64 = 0
        var syncs: UInt64 = 0
        var writeErrors: UInt64 = 0
        var lastError: String?

        /// True (once) when the writer is parked: whoever queued must wake it.
        mutating func unpark() -> Bool {
            guard writerParked else { return false }
            writerParked = false
            wakes += 1
            return true
        }
    }

    let shared: Mutex<Shared>
    let wake = DispatchSemaphore(value: 0)
    /// How long after a write the writer looks at the queue again without being woken.
    let writeBehindNs: UInt64
    let finished = DispatchSemaphore(value: 0)
    /// Bytes cut off the end at start (a torn last line), reported in the start record.
    public let recoveredTornBytes: Int

    /// Opens (or creates) the log in `stateDir/evidence`, recovers its head and starts the writer.
    public init(stateDir: String, key: EvidenceKey, syncIntervalMs: Int = 1000, segmentBytes: Int = 64 << 20,
                writeBehindMs: Int = 5, logger: Logger) throws(EvidenceError) {
        directory = stateDir + "/evidence"
        self.key = key
        writeBehindNs = UInt64(max(0, writeBehindMs)) * 1_000_000
        syncIntervalNs = UInt64(max(0, syncIntervalMs)) * 1_000_000
        self.segmentBytes = max(4096, segmentBytes)
        self.logger = logger
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o750])
        } catch {
            throw EvidenceError("cannot create \(directory): \(error)")
        }
        var s = Shared()
        let recovered = try EvidenceLog.recover(directory: directory, key: key, into: &s, logger: logger)
        recoveredTornBytes = recovered
        shared = Mutex(s)
        let this = self
        Thread.detachNewThread {
            aip_thread_set_name("aip-evi-log")   // (15 characters at most)
            ThreadScheduling.enterBackground(.evidenceLog)   // the lease service comes first
            this.writerLoop()
        }
    }

    // MARK: producers

    /// Queues a record; it is sealed and written by the writer thread.
    public func append(_ r: EVIRecord) { append([r]) }

    /// Records queued and not yet written.
    public var backlog: Int { shared.withLock { Int($0.enqueued &- $0.written) } }

    public func append(_ rs: [EVIRecord]) {
        guard !rs.isEmpty else { return }
        let signal = shared.withLock { s -> Bool in
            guard !s.stopping else { return false }
            s.queue += rs
            s.enqueued += UInt64(rs.count)
            return s.unpark()
        }
        if signal { wake.signal() }
    }

    /// Returns once every record queued before the call is written (not necessarily synced).
    public func flush() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let (resumeNow, signal) = shared.withLock { s -> (Bool, Bool) in
                if s.written >= s.enqueued || s.stopped { return (true, false) }
                s.waiters.append((s.enqueued, c))
                s.writerParked = false
                s.wakes += 1
                return (false, true)   // (a napping writer too: the caller waits for it)
            }
            if signal { wake.signal() }
            if resumeNow { c.resume() }
        }
    }

    /// Writes and syncs what is queued, then stops the writer (blocking; call once, at the end).
    public func close() {
        let already = shared.withLock { s -> Bool in
            let a = s.stopping
            s.stopping = true
            return a
        }
        guard !already else { return }
        wake.signal()
        finished.wait()
    }

    public struct Status: Sendable {
        public var headSeq: UInt64
        public var headHash: [UInt8]
        public var durableSeq: UInt64
        public var recordsWritten: UInt64
        public var bytesWritten: UInt64
        public var syncs: UInt64
        public var writeErrors: UInt64
        public var lastError: String?
        public var segments: Int
        public var queued: Int
        /// Times a producer or a query woke the writer (the rest it found by itself, after a write).
        public var wakes: UInt64
        /// The writer waits to be woken (it napped after its last write and found nothing).
        public var writerParked: Bool
    }

    public var status: Status {
        shared.withLock { s in
            Status(headSeq: s.headSeq, headHash: s.headHash, durableSeq: s.durableSeq, recordsWritten: s.recordsWritten,
                   bytesWritten: s.bytesWritten, syncs: s.syncs, writeErrors: s.writeErrors, lastError: s.lastError,
                   segments: s.segments.count, queued: s.queue.count, wakes: s.wakes,
                   writerParked: s.writerParked)
        }
    }

    // MARK: recovery

    static func segmentPaths(_ directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("segment-") && $0.hasSuffix(".ndjson") }.sorted().map { directory + "/" + $0 }
    }

    static func segmentPath(_ directory: String, _ n: Int) -> String {
        let s = String(n)
        return directory + "/segment-" + String(repeating: "0", count: max(0, 8 - s.count)) + s + ".ndjson"
    }

    /// Reads each segment's first and last record, cuts a torn tail, finds the head.
    static func recover(directory: String, key: EvidenceKey, into s: inout Shared, logger: Logger) throws(EvidenceError) -> Int {
        var torn = 0
        let paths = segmentPaths(directory)
        for (i, path) in paths.enumerated() {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw EvidenceError("cannot read \(path): check the permissions of \(directory)")
            }
            var bytes = [UInt8](data)
            if i == paths.count - 1, let lastNL = bytes.lastIndex(of: 0x0A), lastNL != bytes.count - 1 {
                torn = bytes.count - lastNL - 1
                bytes.removeLast(torn)
                if truncate(path, off_t(bytes.count)) != 0 {
                    throw EvidenceError("cannot cut the torn last record of \(path): \(String(cString: strerror(errno)))")
                }
                logger.warning("evidence log ended in a partial record (a crash during a write); cut it off",
                               metadata: ["file": "\(path)", "bytes": "\(torn)"])
            } else if i == paths.count - 1, bytes.lastIndex(of: 0x0A) == nil, !bytes.isEmpty {
                torn = bytes.count
                bytes = []
                _ = truncate(path, 0)
            }
            let lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: true)
            var seg = Segment(path: path, firstSeq: 0, lastSeq: 0)
            if let first = lines.first.flatMap({ try? EvidenceChain.parse(line: Array($0)) }) {
                seg.firstSeq = first.seq
                seg.firstTime = first.object["time"]?.stringValue.flatMap(WallTime.init(rfc3339:))
            }
            // The last intact record: scan back over lines that are not records.
            for line in lines.reversed() {
                if let p = try? EvidenceChain.parse(line: Array(line)) {
                    seg.lastSeq = p.seq
                    seg.lastTime = p.object["time"]?.stringValue.flatMap(WallTime.init(rfc3339:))
                    if p.seq >= s.headSeq {
                        s.headSeq = p.seq
                        s.headHash = p.hash
                        if p.keyID != key.keyID {
                            logger.warning("the evidence log was signed with another key; records before this start verify only with it",
                                           metadata: ["previous_kid": "\(p.keyID)", "kid": "\(key.keyID)"])
                        }
                    }
                    break
                }
            }
            s.segments.append(seg)
        }
        s.durableSeq = s.headSeq
        return torn
    }

    // MARK: writer thread

    private func writerLoop() {
        let signingKey = key.privateKey
        var fd: Int32 = -1
        var segmentSize = 0
        var pending: [UInt8] = []
        var pendingCount: UInt64 = 0
        var dirty = false
        var lastSync = DispatchTime.now().uptimeNanoseconds
        var (seq, hash) = shared.withLock { ($0.headSeq, $0.headHash) }

        func openSegment(new: Bool) -> Bool {
            let existing = shared.withLock { $0.segments }
            var path: String
            if !new, let last = existing.last {
                path = last.path
            } else {
                let n = (existing.last.flatMap { Int($0.path.split(separator: "-").last?.prefix(8) ?? "") } ?? 0) + 1
                path = EvidenceLog.segmentPath(directory, n)
                shared.withLock { $0.segments.append(Segment(path: path, firstSeq: seq + 1, lastSeq: seq)) }
            }
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            guard fd >= 0 else {
                recordError("open \(path): \(String(cString: strerror(errno)))")
                return false
            }
            var st = stat()
            fstat(fd, &st)
            segmentSize = Int(st.st_size)
            if new { syncDirectory() }
            return true
        }

        func recordError(_ m: String) {
            logger.error("evidence log write failed; retrying", metadata: ["error": "\(m)"])
            shared.withLock { $0.writeErrors += 1; $0.lastError = m }
        }

        func writeHead() {
            let t = WallTime(nanosecondsSinceEpoch: Int64(clock_realtime()))
            var body = JSON.Object()
            body["kind"] = "head"
            body["time"] = .string(t.rfc3339)
            guard let (line, _) = try? EvidenceChain.seal(body: body, seq: seq, prev: hash, key: signingKey, keyID: key.keyID) else { return }
            let tmp = directory + "/HEAD.tmp"
            let hfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
            guard hfd >= 0 else { return }
            let data = line + [0x0A]
            _ = data.withUnsafeBytes { write(hfd, $0.baseAddress, $0.count) }
            _ = fdatasync(hfd)
            Glibc.close(hfd)
            rename(tmp, directory + "/HEAD")
        }

        func syncDirectory() {
            let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dfd >= 0 { fsync(dfd); Glibc.close(dfd) }
        }

        func sync() {
            guard dirty, fd >= 0 else { return }
            if fdatasync(fd) != 0 { recordError("fdatasync: \(String(cString: strerror(errno)))"); return }
            dirty = false
            lastSync = DispatchTime.now().uptimeNanoseconds
            let s = seq
            shared.withLock { $0.durableSeq = s; $0.syncs += 1 }
            writeHead()
        }

        /// Writes the sealed lines in `pending`. The writer seals at most 1 024 records between
        /// writes, so a burst of records never builds a large buffer.
        func writePending() {
            guard !pending.isEmpty else { return }
            if fd < 0 { _ = openSegment(new: false) }
            if fd >= 0 && segmentSize > 0 && segmentSize + pending.count > segmentBytes {
                sync()
                Glibc.close(fd)
                fd = -1
                _ = openSegment(new: true)
                // Records already counted in the old segment's metadata belong to the new one
                // when they were sealed before the roll: fix the first sequence number.
                let first = seq - pendingCount + 1
                shared.withLock { s in
                    if let i = s.segments.indices.last { s.segments[i].firstSeq = first }
                }
            }
            if fd >= 0 {
                var off = 0
                var failed = false
                pending.withUnsafeBytes { raw in
                    while off < raw.count {
                        let n = write(fd, raw.baseAddress! + off, raw.count - off)
                        if n < 0 {
                            if errno == EINTR { continue }
                            failed = true
                            break
                        }
                        off += n
                    }
                }
                if failed {
                    recordError("write: \(String(cString: strerror(errno)))")
                    pending.removeFirst(off)
                } else {
                    let n = pending.count
                    let c = pendingCount
                    segmentSize += n
                    pending.removeAll(keepingCapacity: pending.capacity <= 4 << 20)
                    pendingCount = 0
                    dirty = true
                    let s = seq, h = hash
                    let ready = shared.withLock { st -> [CheckedContinuation<Void, Never>] in
                        st.headSeq = s
                        st.headHash = h
                        st.bytesWritten += UInt64(n)
                        st.recordsWritten += c
                        st.written += c
                        let due = st.waiters.filter { $0.0 <= st.written }.map(\.1)
                        st.waiters.removeAll { $0.0 <= st.written }
                        return due
                    }
                    for c in ready { c.resume() }
                }
            }
        }

        _ = openSegment(new: shared.withLock { $0.segments.isEmpty })
        var yielder = CooperativeYield()

        // After a write the writer naps: it looks at the queue again at `napUntil` without being
        // woken (producers do not signal a napping writer); a nap that finds nothing parks it.
        var napUntil: UInt64?
        while true {
            // Wait for records, the end of a nap, or the next due sync.
            var now = DispatchTime.now().uptimeNanoseconds
            if dirty && now >= lastSync + syncIntervalNs {
                sync()
                now = DispatchTime.now().uptimeNanoseconds
            }
            var until = dirty ? lastSync + syncIntervalNs : UInt64.max
            if let n = napUntil { until = min(until, n) }
            let waitNow = shared.withLock { s -> Bool in
                guard s.queue.isEmpty && !s.stopping else { return false }
                s.writerParked = napUntil == nil
                return true
            }
            if waitNow && until > now {
                if until == .max { wake.wait() } else { _ = wake.wait(timeout: .now() + .nanoseconds(Int(until - now))) }
            }
            let (batch, stopping) = shared.withLock { s -> ([EVIRecord], Bool) in
                let b = s.queue
                s.queue = []
                s.writerParked = false
                return (b, s.stopping)
            }
            napUntil = batch.isEmpty ? nil : DispatchTime.now().uptimeNanoseconds + writeBehindNs
            for (k, r) in batch.enumerated() {
                if k > 0 && k % 1024 == 0 { writePending() }
                yielder.check()
                do {
                    // One signature per write: the last record of each run of up to 1 024 is
                    // signed and, through the hash links, covers the ones before it.
                    let signs = k == batch.count - 1 || k % 1024 == 1023
                    let (line, h) = try EvidenceChain.seal(body: r.body, seq: seq + 1, prev: hash, key: signs ? signingKey : nil, keyID: key.keyID)
                    seq += 1
                    hash = h
                    pending += line
                    pending.append(0x0A)
                    pendingCount += 1
                    let t = r.time
                    let sq = seq
                    shared.withLock { s in
                        if let i = s.segments.indices.last {
                            if s.segments[i].firstTime == nil { s.segments[i].firstTime = t }
                            s.segments[i].lastTime = t
                            s.segments[i].lastSeq = sq
                        }
                    }
                } catch {
                    recordError("signing: \(error)")
                }
            }
            writePending()
            if stopping {
                let empty = shared.withLock { $0.queue.isEmpty }
                if empty && pending.isEmpty {
                    sync()
                    if fd >= 0 { Glibc.close(fd) }
                    let waiters = shared.withLock { s -> [CheckedContinuation<Void, Never>] in
                        s.stopped = true
                        let w = s.waiters.map(\.1)
                        s.waiters = []
                        return w
                    }
                    for c in waiters { c.resume() }
                    finished.signal()
                    return
                }
                if !pending.isEmpty && shared.withLock({ $0.writeErrors }) > 0 {
                    // Cannot write: give up on what is left rather than hang the shutdown.
                    logger.error("evidence log: dropping unwritten records at stop", metadata: ["bytes": "\(pending.count)"])
                    pending = []
                }
                wake.signal()
            }
        }
    }

    // MARK: reading

    /// Matching records (parsed, in sequence order) and whether `limit` cut the answer short.
    /// Reads the segment files on a thread of its own.
    public func query(_ q: EvidenceQuery, limit: Int) async -> (records: [JSON.Object], truncated: Bool) {
        await flush()
        let segments = shared.withLock { $0.segments }
        return await onThread { EvidenceLog.scan(segments: segments, q, limit: limit) }
    }

    /// Raw lines (each with its newline) after `afterSeq`, at most `limit`; and the head.
    public func rawLines(afterSeq: UInt64, limit: Int) async -> [UInt8] {
        await flush()
        let segments = shared.withLock { $0.segments }
        return await onThread {
            var out: [UInt8] = []
            var n = 0
            for seg in segments where seg.lastSeq > afterSeq || seg.lastSeq == 0 {
                guard let data = FileManager.default.contents(atPath: seg.path) else { continue }
                for line in [UInt8](data).split(separator: 0x0A) {
                    guard n < limit else { return out }
                    // Cheap seq read: `{"v":1,"seq":N,`
                    if let seq = EvidenceLog.leadingSeq(line), seq <= afterSeq { continue }
                    out += line
                    out.append(0x0A)
                    n += 1
                }
            }
            return out
        }
    }

    static func leadingSeq(_ line: ArraySlice<UInt8>) -> UInt64? {
        let prefix = Array(#"{"v":1,"seq":"#.utf8)
        guard line.count > prefix.count, Array(line.prefix(prefix.count)) == prefix else { return nil }
        var v: UInt64 = 0
        for c in line.dropFirst(prefix.count) {
            guard c >= 48 && c <= 57 else { break }
            v = v * 10 + UInt64(c - 48)
        }
        return v
    }

    static func scan(segments: [Segment], _ q: EvidenceQuery, limit: Int) -> ([JSON.Object], Bool) {
        var out: [JSON.Object] = []
        // Record times trail their write by at most a window plus the probe timeout.
        let slack: Int64 = 5 * 60 * 1_000_000_000
        for seg in segments {
            if let afterSeq = q.afterSeq, seg.lastSeq != 0, seg.lastSeq <= afterSeq { continue }
            if let since = q.since, let last = seg.lastTime, last.nanosecondsSinceEpoch + slack < since.nanosecondsSinceEpoch { continue }
            if let until = q.until, let first = seg.firstTime, first.nanosecondsSinceEpoch - slack > until.nanosecondsSinceEpoch { continue }
            guard let data = FileManager.default.contents(atPath: seg.path) else { continue }
            let bytes = [UInt8](data)
            for line in bytes.split(separator: 0x0A) {
                let l = Array(line)
                guard q.mayMatch(line: l), let o = try? JSON.parse(l).objectValue, q.matches(o) else { continue }
                if out.count >= limit { return (out, true) }
                out.append(o)
            }
        }
        return (out, false)
    }
}

@inline(__always) func clock_realtime() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Runs blocking work (file reads, statistics) on a fresh thread and awaits it, so neither the
/// agent's event loop nor the cooperative pool waits for the disk.
func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
        Thread.detachNewThread { c.resume(returning: body()) }
    }
}

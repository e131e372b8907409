import Logging
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Logs to stderr in a journald-friendly form: a `<N>` syslog priority prefix (journald
/// strips it and sets PRIORITY), the message, then `key=value` metadata. Outside systemd
/// (no JOURNAL_STREAM) it prints a timestamp and the level instead.
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let label: String
    let underSystemd: Bool
    static let lock = Mutex(())

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
        self.underSystemd = getenv("JOURNAL_STREAM") != nil || getenv("INVOCATION_ID") != nil
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        var line = ""
        if underSystemd {
            line += "<\(Self.priority(event.level))>"
        } else {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            var tmv = tm()
            var secs = ts.tv_sec
            gmtime_r(&secs, &tmv)
            let ms = ts.tv_nsec / 1_000_000
            func p(_ v: Int32, _ w: Int = 2) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
            line += "\(p(tmv.tm_year + 1900, 4))-\(p(tmv.tm_mon + 1))-\(p(tmv.tm_mday))T\(p(tmv.tm_hour)):\(p(tmv.tm_min)):\(p(tmv.tm_sec)).\(p(Int32(ms), 3))Z \(event.level.rawValue.uppercased()) "
        }
        line += "\(label): \(event.message)"
        for (k, v) in merged.sorted(by: { $0.key < $1.key }) {
            let text = "\(v)"
            line += text.contains(" ") || text.isEmpty ? " \(k)=\"\(text)\"" : " \(k)=\(text)"
        }
        line += "\n"
        // One write(2) per line so concurrent lines never interleave.
        Self.lock.withLock { _ in
            var bytes = Array(line.utf8)[...]
            while !bytes.isEmpty {
                let n = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
                if n <= 0 { if errno == EINTR { continue } else { break } }
                bytes = bytes.dropFirst(n)
            }
        }
    }

    static func priority(_ l: Logger.Level) -> Int {
        switch l {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }
}

/// A point on the kernel's CLOCK_BOOTTIME, in nanoseconds: monotonic, counts suspend, and is
/// the clock of the agent's timerfd. All lease deadlines live on this clock; wall-clock
/// expiries are converted once, at admission.
public struct BootInstant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64
    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static func < (a: BootInstant, b: BootInstant) -> Bool { a.nanoseconds < b.nanoseconds }
    public func adding(milliseconds ms: UInt64) -> BootInstant {
        BootInstant(nanoseconds: nanoseconds &+ ms &* 1_000_000)
    }
    public func adding(nanoseconds ns: UInt64) -> BootInstant { BootInstant(nanoseconds: nanoseconds &+ ns) }
    /// Milliseconds from `self` until `later`, rounded down; 0 if `later` is not after `self`.
    public func milliseconds(until later: BootInstant) -> UInt64 {
        later.nanoseconds > nanoseconds ? (later.nanoseconds - nanoseconds) / 1_000_000 : 0
    }
    public func nanoseconds(until later: BootInstant) -> UInt64 {
        later.nanoseconds > nanoseconds ? later.nanoseconds - nanoseconds : 0
    }
    public var description: String { "boot+\(nanoseconds / 1_000_000)ms" }
}

/// Wall-clock time in nanoseconds since the Unix epoch (CLOCK_REALTIME).
public struct WallTime: Hashable, Comparable, Sendable {
    public var nanosecondsSinceEpoch: Int64
    public init(nanosecondsSinceEpoch: Int64) { self.nanosecondsSinceEpoch = nanosecondsSinceEpoch }
    public static func < (a: WallTime, b: WallTime) -> Bool { a.nanosecondsSinceEpoch < b.nanosecondsSinceEpoch }
    public func adding(milliseconds ms: Int64) -> WallTime {
        WallTime(nanosecondsSinceEpoch: nanosecondsSinceEpoch + ms * 1_000_000)
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-23T11:50:01.123Z`.
    public var rfc3339: String {
        let ms = nanosecondsSinceEpoch >= 0
            ? nanosecondsSinceEpoch / 1_000_000
            : (nanosecondsSinceEpoch - 999_999) / 1_000_000
        var days = ms >= 0 ? ms / 86_400_000 : (ms - 86_399_999) / 86_400_000
        let msOfDay = ms - days * 86_400_000
        // Civil from days (Howard Hinnant's algorithm).
        days += 719_468
        let era = (days >= 0 ? days : days - 146_096) / 146_097
        let doe = days - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        var y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        if m <= 2 { y += 1 }
        func pad(_ v: Int64, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        let h = msOfDay / 3_600_000, mi = (msOfDay / 60_000) % 60, s = (msOfDay / 1000) % 60, frac = msOfDay % 1000
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(h, 2)):\(pad(mi, 2)):\(pad(s, 2)).\(pad(frac, 3))Z"
    }

    /// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`); nil if malformed.
    public init?(rfc3339 text: String) {
        let b = Array(text.utf8)
        func num(_ r: Range<Int>) -> Int64? {
            guard r.upperBound <= b.count else { return nil }
            var v: Int64 = 0
            for i in r {
                guard b[i] >= 48 && b[i] <= 57 else { return nil }
                v = v * 10 + Int64(b[i] - 48)
            }
            return v
        }
        guard b.count >= 20, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"),
              b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: "t") || b[10] == UInt8(ascii: " "),
              b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"),
              let y = num(0..<4), let mo = num(5..<7), let d = num(8..<10),
              let h = num(11..<13), let mi = num(14..<16), let s = num(17..<19),
              (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, s < 61 else { return nil }
        var i = 19
        var fracNs: Int64 = 0
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            var digits = 0
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                if digits < 9 { fracNs = fracNs * 10 + Int64(b[i] - 48) }
                digits += 1; i += 1
            }
            guard digits > 0 else { return nil }
            for _ in 0..<max(0, 9 - digits) { fracNs *= 10 }
        }
        guard i < b.count else { return nil }
        var offsetMin: Int64 = 0
        if b[i] == UInt8(ascii: "Z") || b[i] == UInt8(ascii: "z") {
            i += 1
        } else if b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") {
            let sign: Int64 = b[i] == UInt8(ascii: "+") ? 1 : -1
            guard i + 6 == b.count, b[i + 3] == UInt8(ascii: ":"),
                  let oh = num((i + 1)..<(i + 3)), let om = num((i + 4)..<(i + 6)), oh < 24, om < 60 else { return nil }
            offsetMin = sign * (oh * 60 + om)
            i += 6
        } else { return nil }
        guard i == b.count else { return nil }
        // Days from civil.
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let mp = mo > 2 ? mo - 3 : mo + 9
        let doy = (153 * mp + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        let seconds = days * 86_400 + h * 3600 + mi * 60 + s - offsetMin * 60
        nanosecondsSinceEpoch = seconds * 1_000_000_000 + fracNs
    }
}

/// The two clocks read together at one instant; lets the core convert between them without a syscall.
public struct ClockReading: Sendable, Equatable {
    public var boot: BootInstant
    public var wall: WallTime
    public init(boot: BootInstant, wall: WallTime) { self.boot = boot; self.wall = wall }

    /// The wall time at which `instant` happens (or happened), on this reading's clocks.
    public func wall(at instant: BootInstant) -> WallTime {
        let delta = Int64(bitPattern: instant.nanoseconds &- boot.nanoseconds)
        return WallTime(nanosecondsSinceEpoch: wall.nanosecondsSinceEpoch + delta)
    }

    /// The boot instant of a wall time, clamped at the reading's boot instant if it is past.
    public func boot(at time: WallTime) -> BootInstant {
        let delta = time.nanosecondsSinceEpoch - wall.nanosecondsSinceEpoch
        return delta <= 0 ? boot : boot.adding(nanoseconds: UInt64(delta))
    }
}

/// An IPv4 or IPv6 address as network-order bytes. Parsing is strict (no zone ids, no
/// abbreviations beyond RFC 4291's `::`), and `description` gives the canonical text form
/// (RFC 5952 for IPv6).
public enum IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    case v4(UInt32)
    case v6(UInt64, UInt64)

    public enum Family: String, Sendable, Codable { case ipv4, ipv6 }

    public var family: Family {
        switch self {
        case .v4: return .ipv4
        case .v6: return .ipv6
        }
    }

    /// Network-order bytes: 4 for IPv4, 16 for IPv6.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let a):
            return [UInt8(a >> 24), UInt8((a >> 16) & 0xff), UInt8((a >> 8) & 0xff), UInt8(a & 0xff)]
        case .v6(let hi, let lo):
            var out = [UInt8](repeating: 0, count: 16)
            for i in 0..<8 {
                out[i] = UInt8((hi >> UInt64(56 - 8 * i)) & 0xff)
                out[8 + i] = UInt8((lo >> UInt64(56 - 8 * i)) & 0xff)
            }
            return out
        }
    }

    public init?(bytes: some Collection<UInt8>) {
        let b = Array(bytes)
        switch b.count {
        case 4:
            self = .v4(UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3]))
        case 16:
            var hi: UInt64 = 0, lo: UInt64 = 0
            for i in 0..<8 { hi = hi << 8 | UInt64(b[i]); lo = lo << 8 | UInt64(b[8 + i]) }
            self = .v6(hi, lo)
        default:
            return nil
        }
    }

    public init?(_ text: String) {
        // (A byte scan: `contains(":")` resolves to Foundation's substring search, 0.36 µs a call
        // here against 0.02.)
        if text.utf8.contains(UInt8(ascii: ":")) {
            guard let v = IPAddress.parseV6(Substring(text)) else { return nil }
            self = v
        } else {
            guard let v = IPAddress.parseV4(Substring(text)) else { return nil }
            self = .v4(v)
        }
    }

    private static func parseV4(_ s: Substring) -> UInt32? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            // No leading zeros: "010" is ambiguous (octal in some parsers).
            if p.count > 1 && p.first == "0" { return nil }
            guard let n = UInt32(p), n <= 255 else { return nil }
            value = value << 8 | n
        }
        return value
    }

    private static func parseV6(_ s: Substring) -> IPAddress? {
        guard !s.isEmpty, s.count <= 45 else { return nil }
        var groups: [UInt16] = []
        var tailGroups: [UInt16] = []
        var sawDouble = false
        let halves = splitDoubleColon(String(s))
        guard halves.count <= 2 else { return nil }
        func parseGroups(_ part: String, allowV4Tail: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            let items = part.split(separator: ":", omittingEmptySubsequences: false)
            var out: [UInt16] = []
            for (i, item) in items.enumerated() {
                if allowV4Tail && i == items.count - 1 && item.utf8.contains(UInt8(ascii: ".")) {
                    guard let v4 = parseV4(item) else { return nil }
                    out.append(UInt16(v4 >> 16)); out.append(UInt16(v4 & 0xffff))
                    continue
                }
                guard !item.isEmpty, item.count <= 4,
                      item.allSatisfy({ $0.isHexDigit }), let g = UInt16(item, radix: 16) else { return nil }
                out.append(g)
            }
            return out
        }
        if halves.count == 2 {
            sawDouble = true
            guard let head = parseGroups(halves[0], allowV4Tail: false),
                  let tail = parseGroups(halves[1], allowV4Tail: true) else { return nil }
            groups = head; tailGroups = tail
            guard groups.count + tailGroups.count <= 7 else { return nil }
        } else {
            guard let all = parseGroups(halves[0], allowV4Tail: true), all.count == 8 else { return nil }
            groups = all
        }
        var full = groups
        if sawDouble {
            full += [UInt16](repeating: 0, count: 8 - groups.count - tailGroups.count)
            full += tailGroups
        }
        guard full.count == 8 else { return nil }
        var hi: UInt64 = 0, lo: UInt64 = 0
        for i in 0..<4 { hi = hi << 16 | UInt64(full[i]); lo = lo << 16 | UInt64(full[4 + i]) }
        return .v6(hi, lo)
    }

    private static func splitDoubleColon(_ s: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var chars = Array(s)[...]
        while let c = chars.first {
            if c == ":" && chars.dropFirst().first == ":" {
                parts.append(current); current = ""
                chars = chars.dropFirst(2)
            } else {
                current.append(c); chars = chars.dropFirst()
            }
        }
        parts.append(current)
        return parts
    }

    public var description: String {
        switch self {
        case .v4(let a):
            return "\(a >> 24).\((a >> 16) & 0xff).\((a >> 8) & 0xff).\(a & 0xff)"
        case .v6(let hi, let lo):
            var g = [UInt16]()
            for i in 0..<4 { g.append(UInt16((hi >> UInt64(48 - 16 * i)) & 0xffff)) }
            for i in 0..<4 { g.append(UInt16((lo >> UInt64(48 - 16 * i)) & 0xffff)) }
            // RFC 5952: compress the longest run (>= 2) of zero groups, the first one on ties.
            var bestStart = -1, bestLen = 0, i = 0
            while i < 8 {
                if g[i] == 0 {
                    var j = i
                    while j < 8 && g[j] == 0 { j += 1 }
                    if j - i > bestLen && j - i >= 2 { bestStart = i; bestLen = j - i }
                    i = j
                } else { i += 1 }
            }
            func hex(_ r: ArraySlice<UInt16>) -> String { r.map { String($0, radix: 16) }.joined(separator: ":") }
            if bestStart < 0 { return hex(g[0..<8]) }
            return hex(g[0..<bestStart]) + "::" + hex(g[(bestStart + bestLen)..<8])
        }
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        switch (a, b) {
        case (.v4(let x), .v4(let y)): return x < y
        case (.v4, .v6): return true
        case (.v6, .v4): return false
        case (.v6(let ah, let al), .v6(let bh, let bl)): return ah != bh ? ah < bh : al < bl
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        guard let v = IPAddress(s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an IP address: \(s)")
        }
        self = v
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

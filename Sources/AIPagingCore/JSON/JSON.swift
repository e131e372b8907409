/// A JSON value with a strict RFC 8259 parser and a deterministic serializer.
///
/// The agent parses controller input with this instead of a permissive decoder because the
/// input is security-relevant: duplicate object keys are rejected (a signed payload must not
/// mean two things), nesting and size are bounded, numbers keep their integer precision, and
/// object key order is preserved for stable output.
public enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Number)
    case string(String)
    case array([JSON])
    case object(Object)

    /// A JSON number kept as an exact integer when it is one, a Double otherwise.
    public enum Number: Sendable, Equatable {
        case int(Int64)
        case uint(UInt64)
        case double(Double)

        /// Numbers are equal by value: `-125`, `-125.0` and `-1.25e2` are the same number.
        public static func == (a: Number, b: Number) -> Bool {
            switch (a, b) {
            case (.int(let x), .int(let y)): return x == y
            case (.uint(let x), .uint(let y)): return x == y
            case (.int(let x), .uint(let y)), (.uint(let y), .int(let x)): return x >= 0 && UInt64(x) == y
            default: return a.doubleValue == b.doubleValue
            }
        }

        public var doubleValue: Double {
            switch self {
            case .int(let v): return Double(v)
            case .uint(let v): return Double(v)
            case .double(let v): return v
            }
        }
    }

    /// An object: ordered keys, unique by construction. Small objects (the common case) are a
    /// plain array searched linearly, which beats hashing; past 16 keys a hash index is kept so
    /// lookups (and the parser's duplicate check) stay O(1) even for hostile input.
    public struct Object: Sendable, Equatable {
        public private(set) var pairs: [(String, JSON)] = []
        private var index: [String: Int]?
        static let indexThreshold = 16

        public init() {}
        public init(_ pairs: KeyValuePairs<String, JSON>) {
            for (k, v) in pairs { self[k] = v }
        }

        func position(of key: String) -> Int? {
            if let index { return index[key] }
            return pairs.firstIndex { $0.0 == key }
        }

        public subscript(key: String) -> JSON? {
            get { position(of: key).map { pairs[$0].1 } }
            set {
                if let i = position(of: key) {
                    if let newValue {
                        pairs[i].1 = newValue
                    } else {
                        pairs.remove(at: i)
                        rebuildIndex()
                    }
                } else if let newValue {
                    pairs.append((key, newValue))
                    if index != nil {
                        index![key] = pairs.count - 1
                    } else if pairs.count > Object.indexThreshold {
                        rebuildIndex()
                    }
                }
            }
        }

        private mutating func rebuildIndex() {
            guard pairs.count > Object.indexThreshold else { index = nil; return }
            var ix = [String: Int](minimumCapacity: pairs.count)
            for (i, p) in pairs.enumerated() { ix[p.0] = i }
            index = ix
        }

        public var count: Int { pairs.count }
        public var keys: [String] { pairs.map(\.0) }

        public static func == (a: Object, b: Object) -> Bool {
            guard a.pairs.count == b.pairs.count else { return false }
            for (i, p) in a.pairs.enumerated() where p.0 != b.pairs[i].0 || p.1 != b.pairs[i].1 { return false }
            return true
        }
    }

    public struct ParseError: Error, Sendable, CustomStringConvertible, Equatable {
        public var offset: Int
        public var reason: String
        public var description: String { "invalid JSON at byte \(offset): \(reason)" }
    }

    public static let maxDepth = 32

    public static func parse(_ text: String) throws(ParseError) -> JSON {
        try parse(Array(text.utf8))
    }

    public static func parse(_ bytes: some Collection<UInt8>) throws(ParseError) -> JSON {
        let buffer = Array(bytes)
        var parser = Parser(bytes: buffer)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.index == buffer.count else {
            throw ParseError(offset: parser.index, reason: "unexpected data after the value")
        }
        return value
    }

    // MARK: accessors

    public var objectValue: Object? { if case .object(let o) = self { return o } else { return nil } }
    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var arrayValue: [JSON]? { if case .array(let a) = self { return a } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var isNull: Bool { if case .null = self { return true } else { return false } }

    /// The value as an exact integer (no fraction, in range); nil otherwise.
    public var int64Value: Int64? {
        guard case .number(let n) = self else { return nil }
        switch n {
        case .int(let v): return v
        case .uint(let v): return v <= UInt64(Int64.max) ? Int64(v) : nil
        case .double(let d):
            guard d.rounded() == d, d >= -9.2e18, d <= 9.2e18 else { return nil }
            return Int64(d)
        }
    }

    public var doubleValue: Double? {
        guard case .number(let n) = self else { return nil }
        return n.doubleValue
    }

    public subscript(key: String) -> JSON? { objectValue?[key] }

    // MARK: serialization

    /// Compact serialization; object keys in insertion order.
    public func serialized() -> String {
        String(decoding: bytes(), as: UTF8.self)
    }

    /// The serialization as UTF-8 bytes (what goes on a socket or into a file).
    public func bytes(reserving capacity: Int = 256) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(capacity)
        write(into: &out)
        return out
    }

    /// Appends the serialization to `out`. (Bytes, not a String: appending many short pieces
    /// to a String costs several times more, and this runs for every reply, journal line and
    /// evidence record.)
    public func write(into out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: JSON.nullBytes)
        case .bool(let b): out.append(contentsOf: b ? JSON.trueBytes : JSON.falseBytes)
        case .number(let n):
            switch n {
            case .int(let v): JSON.writeInteger(v.magnitude, negative: v < 0, into: &out)
            case .uint(let v): JSON.writeInteger(v, negative: false, into: &out)
            case .double(let d):
                if d.isFinite {
                    if d.rounded() == d && abs(d) < 1e15 {
                        let v = Int64(d)
                        JSON.writeInteger(v.magnitude, negative: v < 0, into: &out)
                    } else {
                        out.append(contentsOf: "\(d)".utf8)
                    }
                } else { out.append(contentsOf: JSON.nullBytes) }
            }
        case .string(let s): JSON.writeString(s, into: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                v.write(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            for (i, p) in o.pairs.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSON.writeString(p.0, into: &out)
                out.append(UInt8(ascii: ":"))
                p.1.write(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static let nullBytes = Array("null".utf8), trueBytes = Array("true".utf8), falseBytes = Array("false".utf8)

    static func writeInteger(_ magnitude: UInt64, negative: Bool, into out: inout [UInt8]) {
        if negative { out.append(UInt8(ascii: "-")) }
        if magnitude < 10 { out.append(UInt8(ascii: "0") + UInt8(magnitude)); return }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)   // 20 digits at most, as bytes
        var n = magnitude, count = 0
        withUnsafeMutableBytes(of: &digits) { buf in
            while n > 0 {
                buf[23 - count] = UInt8(ascii: "0") + UInt8(n % 10)
                n /= 10
                count += 1
            }
            out.append(contentsOf: buf[(24 - count)...])
        }
    }

    static func writeString(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var clean = true
        for b in s.utf8 where b < 0x20 || b == 0x22 || b == 0x5C { clean = false; break }
        if clean {
            out.append(contentsOf: s.utf8)
        } else {
            for b in s.utf8 {
                switch b {
                case 0x22: out.append(0x5C); out.append(0x22)
                case 0x5C: out.append(0x5C); out.append(0x5C)
                case 0x0A: out.append(0x5C); out.append(UInt8(ascii: "n"))
                case 0x0D: out.append(0x5C); out.append(UInt8(ascii: "r"))
                case 0x09: out.append(0x5C); out.append(UInt8(ascii: "t"))
                case 0..<0x20:
                    let hex = Array("0123456789abcdef".utf8)
                    out.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 15)]])
                default: out.append(b)
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral, ExpressibleByFloatLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .number(.int(value)) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
    public init(nilLiteral: ()) { self = .null }
    public init(floatLiteral value: Double) { self = .number(.double(value)) }
    public init(dictionaryLiteral elements: (String, JSON)...) {
        var o = Object()
        for (k, v) in elements { o[k] = v }
        self = .object(o)
    }

    public static func int<T: BinaryInteger>(_ v: T) -> JSON {
        if let i = Int64(exactly: v) { return .number(.int(i)) }
        return .number(.uint(UInt64(v)))
    }
    public static func double(_ v: Double) -> JSON { .number(.double(v)) }
    public static func optional(_ s: String?) -> JSON { s.map { .string($0) } ?? .null }
}

private struct Parser {
    let bytes: [UInt8]
    var index = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    func fail(_ reason: String) -> JSON.ParseError { JSON.ParseError(offset: index, reason: reason) }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    mutating func parseValue(depth: Int) throws(JSON.ParseError) -> JSON {
        guard depth <= JSON.maxDepth else { throw fail("nesting deeper than \(JSON.maxDepth)") }
        guard index < bytes.count else { throw fail("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw fail("unexpected character")
        }
    }

    mutating func expectLiteral(_ lit: String) throws(JSON.ParseError) {
        let expected = Array(lit.utf8)
        guard index + expected.count <= bytes.count else { throw fail("unexpected end of input") }
        for i in 0..<expected.count where bytes[index + i] != expected[i] { throw fail("invalid literal") }
        index += expected.count
    }

    mutating func parseObject(depth: Int) throws(JSON.ParseError) -> JSON {
        index += 1
        var obj = JSON.Object()
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "}") { index += 1; return .object(obj) }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
            let keyOffset = index
            let key = try parseString()
            if obj[key] != nil {
                throw JSON.ParseError(offset: keyOffset, reason: "duplicate key \"\(key)\"")
            }
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            index += 1
            skipWhitespace()
            obj[key] = try parseValue(depth: depth + 1)
            skipWhitespace()
            guard index < bytes.count else { throw fail("unexpected end of input") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(obj) }
            throw fail("expected ',' or '}'")
        }
    }

    mutating func parseArray(depth: Int) throws(JSON.ParseError) -> JSON {
        index += 1
        var arr: [JSON] = []
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "]") { index += 1; return .array(arr) }
        while true {
            skipWhitespace()
            arr.append(try parseValue(depth: depth + 1))
            skipWhitespace()
            guard index < bytes.count else { throw fail("unexpected end of input") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(arr) }
            throw fail("expected ',' or ']'")
        }
    }

    mutating func parseHex4() throws(JSON.ParseError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw fail("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[index]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("bad hex digit in \\u escape")
            }
            v = v << 4 | d
            index += 1
        }
        return v
    }

    mutating func parseString() throws(JSON.ParseError) -> String {
        index += 1  // opening quote
        let start = index
        // Fast path: no escapes.
        while index < bytes.count {
            let c = bytes[index]
            if c == UInt8(ascii: "\"") {
                guard let s = String(validating: bytes[start..<index], as: UTF8.self) else {
                    throw JSON.ParseError(offset: start, reason: "string is not valid UTF-8")
                }
                index += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw fail("control character in string") }
            index += 1
        }
        var out = [UInt8](bytes[start..<index])
        while index < bytes.count {
            let c = bytes[index]
            if c == UInt8(ascii: "\"") {
                guard let s = String(validating: out, as: UTF8.self) else {
                    throw JSON.ParseError(offset: start, reason: "string is not valid UTF-8")
                }
                index += 1
                return s
            }
            if c < 0x20 { throw fail("control character in string") }
            if c != UInt8(ascii: "\\") { out.append(c); index += 1; continue }
            index += 1
            guard index < bytes.count else { break }
            let e = bytes[index]
            index += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try parseHex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard index + 6 <= bytes.count, bytes[index] == UInt8(ascii: "\\"),
                          bytes[index + 1] == UInt8(ascii: "u") else { throw fail("unpaired surrogate") }
                    index += 2
                    let low = try parseHex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw fail("unpaired surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw fail("unpaired surrogate")
                }
                guard let u = Unicode.Scalar(scalar) else { throw fail("invalid code point") }
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default:
                throw fail("invalid escape")
            }
        }
        throw fail("unterminated string")
    }

    mutating func parseNumber() throws(JSON.ParseError) -> JSON.Number {
        let start = index
        var isInteger = true
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count else { throw fail("truncated number") }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
        } else if (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(bytes[index]) {
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
        } else {
            throw fail("invalid number")
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            let digits = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            guard index > digits else { throw fail("digits expected after '.'") }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            let digits = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            guard index > digits else { throw fail("digits expected in exponent") }
        }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        if isInteger {
            if let v = Int64(text) { return .int(v) }
            if let v = UInt64(text) { return .uint(v) }
        }
        guard let d = Double(text), d.isFinite else {
            throw JSON.ParseError(offset: start, reason: "number out of range")
        }
        return .double(d)
    }
}

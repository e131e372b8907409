import Testing
@testable import AIPagingCore

@Suite struct JSONTests {
    @Test func parsesAndSerializesInOrder() throws {
        let text = #"{"b":1,"a":[true,false,null,"x\n\u00e9\ud83d\ude00"],"c":{"d":-12.5e1,"e":18446744073709551615}}"#
        let v = try JSON.parse(text)
        #expect(v["b"]?.int64Value == 1)
        #expect(v["a"]?.arrayValue?.count == 4)
        #expect(v["a"]?.arrayValue?[3].stringValue == "x\né😀")
        #expect(v["c"]?["d"]?.doubleValue == -125)
        #expect(v["c"]?["e"] == .number(.uint(18_446_744_073_709_551_615)))
        #expect(v.objectValue?.keys == ["b", "a", "c"])
        let again = try JSON.parse(v.serialized())
        #expect(again == v)
    }

    @Test(arguments: [
        ("{\"a\":1,\"a\":2}", "duplicate key"),
        ("{\"a\":1,}", "expected a string key"),
        ("[1,2", "unexpected end"),
        ("01", "unexpected data"),
        ("\"\\x\"", "invalid escape"),
        ("\"\\ud800\"", "unpaired surrogate"),
        ("{\"a\" 1}", "expected ':'"),
        ("tru", "unexpected end"),
        ("1.", "digits expected"),
        ("\"a\u{01}\"", "control character"),
        ("1e999", "out of range"),
    ])
    func rejectsMalformed(_ text: String, _ reason: String) {
        #expect {
            _ = try JSON.parse(text)
        } throws: { error in
            (error as? JSON.ParseError)?.reason.contains(reason) == true
        }
    }

    /// The byte writer: exact output for escapes, integers at their limits, non-ASCII text and
    /// doubles, and what it writes parses back to the same value.
    @Test func writesBytesExactly() throws {
        let v: JSON = ["s": .string("tab\tnl\ncr\r\u{1f}q\"b\\ é ✓"), "min": .int(Int64.min), "max": .int(Int64.max),
                       "u": .number(.uint(UInt64.max)), "z": 0, "n": -7, "d": 2.5, "di": 3.0, "inf": .double(.infinity),
                       "a": [true, false, nil, [:], []]]
        let text = #"{"s":"tab\tnl\ncr\r\u001fq\"b\\ é ✓","min":-9223372036854775808,"max":9223372036854775807,"u":18446744073709551615,"z":0,"n":-7,"d":2.5,"di":3,"inf":null,"a":[true,false,null,{},[]]}"#
        #expect(v.bytes() == Array(text.utf8))
        #expect(v.serialized() == text)
        var appended: [UInt8] = Array("x".utf8)
        JSON.int(42).write(into: &appended)
        #expect(appended == Array("x42".utf8))
        let back = try JSON.parse(v.bytes())
        #expect(back["s"] == v["s"] && back["min"] == v["min"] && back["u"] == v["u"] && back["a"] == v["a"])
    }

    @Test func limitsDepth() {
        let deep = String(repeating: "[", count: 40) + String(repeating: "]", count: 40)
        #expect(throws: JSON.ParseError.self) { try JSON.parse(deep) }
        let ok = String(repeating: "[", count: 30) + String(repeating: "]", count: 30)
        #expect(throws: Never.self) { try JSON.parse(ok) }
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: JSON.ParseError.self) { try JSON.parse([0x22, 0xff, 0xfe, 0x22]) }
    }

    @Test func escapesControlCharacters() {
        #expect(JSON.string("a\u{01}\"\\").serialized() == #""a\u0001\"\\""#)
    }
}

@Suite struct IPAddressTests {
    @Test(arguments: [
        ("198.18.1.2", "198.18.1.2"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
        ("::ffff:198.18.0.1", "::ffff:c612:1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6"),
        ("::", "::"),
    ])
    func canonical(_ input: String, _ expected: String) throws {
        let a = try #require(IPAddress(input))
        #expect(a.description == expected)
        #expect(IPAddress(bytes: a.bytes) == a)
    }

    @Test(arguments: ["198.18.1", "198.18.1.256", "198.018.1.2", "2001:db8:::1", "2001:db8::1::2", "1:2:3:4:5:6:7:8:9",
                      "fe80::1%eth0", "", "abc", "2001:db8::g"])
    func rejects(_ input: String) {
        #expect(IPAddress(input) == nil)
    }
}

@Suite struct TimeTests {
    @Test func rfc3339RoundTrip() throws {
        let t = try #require(WallTime(rfc3339: "2026-11-23T11:50:01.123Z"))
        #expect(t.rfc3339 == "2026-11-23T11:50:01.123Z")
        let offset = try #require(WallTime(rfc3339: "2026-11-23T13:50:01.123+02:00"))
        #expect(offset == t)
        #expect(WallTime(rfc3339: "1970-01-01T00:00:00Z")?.nanosecondsSinceEpoch == 0)
        #expect(WallTime(rfc3339: "2000-02-29T00:00:00Z")?.rfc3339 == "2000-02-29T00:00:00.000Z")
    }

    @Test(arguments: ["2026-13-01T00:00:00Z", "2026-11-23 11:50", "2026-11-23T11:50:01", "2026-11-23T11:50:01.Z", "x"])
    func rejectsBadTimestamps(_ s: String) {
        #expect(WallTime(rfc3339: s) == nil)
    }

    @Test func clockConversion() {
        let r = Fixture.now
        let later = r.boot.adding(milliseconds: 1500)
        #expect(r.wall(at: later) == r.wall.adding(milliseconds: 1500))
        #expect(r.boot(at: r.wall.adding(milliseconds: 2000)) == r.boot.adding(milliseconds: 2000))
        #expect(r.boot(at: r.wall.adding(milliseconds: -5)) == r.boot)
    }
}

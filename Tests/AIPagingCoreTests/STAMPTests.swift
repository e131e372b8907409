import Testing
@testable import AIPagingCore

/// Byte-exact STAMP (RFC 8762 unauthenticated mode, RFC 8972 SSID) encodings.
@Suite struct STAMPTests {
    @Test func ntpTimestamps() {
        // The Unix epoch is 2 208 988 800 s after the NTP epoch (RFC 5905 figure 4: 0x83AA7E80).
        #expect(NTPTimestamp(unixNanoseconds: 0) == NTPTimestamp(seconds: 0x83AA_7E80, fraction: 0))
        // Half a second is 2^31 of the 32-bit fraction.
        #expect(NTPTimestamp(unixNanoseconds: 1_500_000_000) == NTPTimestamp(seconds: 0x83AA_7E81, fraction: 0x8000_0000))
        // Round trip to the nanosecond, including times after the 2036 era rollover.
        for ns: Int64 in [1, 999_999_999, 1_795_000_000_123_456_789, 2_085_978_496_000_000_001, 2_200_000_000_987_654_321] {
            #expect(NTPTimestamp(unixNanoseconds: ns).unixNanoseconds == ns, "\(ns)")
        }
        #expect(NTPTimestamp(unixNanoseconds: 2_085_978_496_000_000_000).seconds == 0)   // 2036-02-07T06:28:16Z
    }

    @Test func errorEstimate() {
        // S | Z | Scale (6) | Multiplier (8)   (RFC 4656 §4.1.2)
        let e = STAMPErrorEstimate(synchronized: true, scale: 15, multiplier: 132)
        #expect(e.raw == 0x8F84)
        #expect(STAMPErrorEstimate(raw: 0x8F84) == e)
        #expect(STAMPErrorEstimate(raw: 0x4001).ptpFormat)
        // 1 ms: the smallest scale whose multiplier fits in 8 bits is 15 (132 * 2^-17 s >= 1 ms).
        let ms = STAMPErrorEstimate(errorSeconds: 0.001, synchronized: false)
        #expect(ms.scale == 15 && ms.multiplier == 132 && !ms.synchronized)
        #expect(ms.seconds >= 0.001 && ms.seconds < 0.00101)
        // Never a zero multiplier.
        #expect(STAMPErrorEstimate(errorSeconds: 0, synchronized: true).multiplier == 1)
    }

    @Test func senderPacketLayout() {
        let p = STAMPSenderPacket(sequence: 0x0102_0304, timestamp: NTPTimestamp(seconds: 0x83AA_7E81, fraction: 0x8000_0000),
                                  errorEstimate: STAMPErrorEstimate(raw: 0x8F84), ssid: 0xBEEF)
        let expected: [UInt8] = [0x01, 0x02, 0x03, 0x04,                           // Sequence Number
                                 0x83, 0xAA, 0x7E, 0x81, 0x80, 0x00, 0x00, 0x00,   // Timestamp
                                 0x8F, 0x84,                                       // Error Estimate
                                 0xBE, 0xEF]                                       // SSID (RFC 8972)
            + [UInt8](repeating: 0, count: 28)                                     // MBZ
        #expect(p.encoded() == expected)
        #expect(p.encoded().count == 44)
        #expect(STAMPSenderPacket(bytes: expected) == p)
        #expect(STAMPSenderPacket(bytes: expected.prefix(43)) == nil)
        // Longer packets (padding) decode from their first 44 octets.
        #expect(STAMPSenderPacket(bytes: expected + [0, 0, 0, 0]) == p)
    }

    @Test func reflectorPacketLayout() {
        let r = STAMPReflectorPacket(sequence: 7, timestamp: NTPTimestamp(seconds: 0x83AA_7E82, fraction: 0x4000_0000),
                                     errorEstimate: STAMPErrorEstimate(raw: 0x0A01), ssid: 0xBEEF,
                                     receiveTimestamp: NTPTimestamp(seconds: 0x83AA_7E82, fraction: 0x2000_0000),
                                     senderSequence: 0x0102_0304, senderTimestamp: NTPTimestamp(seconds: 0x83AA_7E81, fraction: 0x8000_0000),
                                     senderErrorEstimate: STAMPErrorEstimate(raw: 0x8F84), senderTTL: 63)
        let expected: [UInt8] = [0x00, 0x00, 0x00, 0x07,                           // Sequence Number
                                 0x83, 0xAA, 0x7E, 0x82, 0x40, 0x00, 0x00, 0x00,   // Timestamp (T3)
                                 0x0A, 0x01,                                       // Error Estimate
                                 0xBE, 0xEF,                                       // SSID
                                 0x83, 0xAA, 0x7E, 0x82, 0x20, 0x00, 0x00, 0x00,   // Receive Timestamp (T2)
                                 0x01, 0x02, 0x03, 0x04,                           // Session-Sender Sequence Number
                                 0x83, 0xAA, 0x7E, 0x81, 0x80, 0x00, 0x00, 0x00,   // Session-Sender Timestamp (T1)
                                 0x8F, 0x84,                                       // Session-Sender Error Estimate
                                 0x00, 0x00,                                       // MBZ
                                 63,                                               // Ses-Sender TTL
                                 0x00, 0x00, 0x00]                                 // MBZ
        #expect(r.encoded() == expected)
        #expect(STAMPReflectorPacket(bytes: expected) == r)
    }

    @Test func reflectionCopiesTheSenderAndKeepsTheLength() throws {
        let req = STAMPSenderPacket(sequence: 41, timestamp: NTPTimestamp(unixNanoseconds: 1_000_000_000),
                                    errorEstimate: STAMPErrorEstimate(raw: 0x8F84), ssid: 9).encoded() + [UInt8](repeating: 0, count: 20)
        let t2 = NTPTimestamp(unixNanoseconds: 1_000_500_000), t3 = NTPTimestamp(unixNanoseconds: 1_000_600_000)
        let stateful = try #require(STAMPReflection.reply(to: req, sequence: 3, receivedAt: t2, sentAt: t3,
                                                          errorEstimate: STAMPErrorEstimate(raw: 1), ttl: 64))
        #expect(stateful.count == 64)   // symmetric size
        #expect(stateful[44...].allSatisfy { $0 == 0 })
        let r = try #require(STAMPReflectorPacket(bytes: stateful))
        #expect(r.sequence == 3 && r.senderSequence == 41 && r.ssid == 9 && r.senderTTL == 64)
        #expect(r.senderTimestamp == NTPTimestamp(unixNanoseconds: 1_000_000_000))
        #expect(r.receiveTimestamp == t2 && r.timestamp == t3)
        let stateless = try #require(STAMPReflection.reply(to: req, sequence: nil, receivedAt: t2, sentAt: t3,
                                                           errorEstimate: STAMPErrorEstimate(raw: 1), ttl: 64))
        #expect(STAMPReflectorPacket(bytes: stateless)?.sequence == 41)
        #expect(STAMPReflection.reply(to: req.prefix(40), sequence: nil, receivedAt: t2, sentAt: t3,
                                      errorEstimate: STAMPErrorEstimate(raw: 1), ttl: 64) == nil)
    }

    /// Two-way delay does not depend on the offset between the two hosts' clocks.
    @Test func twoWayDelayCancelsClockOffset() throws {
        let t1: Int64 = 1_795_000_000_000_000_000
        for offset: Int64 in [0, 5_000_000_000, -37_000_000_123] {
            // 3 ms out, 0.2 ms in the reflector, 2 ms back; the reflector's clock is off by `offset`.
            let t2 = t1 + 3_000_000 + offset, t3 = t2 + 200_000, t4 = t1 + 5_200_000
            let r = STAMPReflectorPacket(sequence: 0, timestamp: NTPTimestamp(unixNanoseconds: t3), errorEstimate: STAMPErrorEstimate(raw: 1),
                                         ssid: 0, receiveTimestamp: NTPTimestamp(unixNanoseconds: t2), senderSequence: 0,
                                         senderTimestamp: NTPTimestamp(unixNanoseconds: t1), senderErrorEstimate: STAMPErrorEstimate(raw: 1),
                                         senderTTL: 64)
            #expect(abs(r.twoWayDelayNanoseconds(sentAt: t1, receivedAt: t4) - 5_000_000) <= 1, "offset \(offset)")
        }
    }
}

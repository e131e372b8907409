/// STAMP, the Simple Two-way Active Measurement Protocol (RFC 8762), unauthenticated mode, with
/// the Session-Sender Identifier of RFC 8972 §3 in the first two octets that RFC 8762 calls MBZ.
///
/// The agent's prober sends `STAMPSenderPacket`s toward an anchor; `aipaging-reflector` (or any
/// STAMP Session-Reflector) answers with a `STAMPReflectorPacket`. Both are 44 octets, all fields
/// in network byte order. Pure encoding and decoding: no sockets, no clocks.

/// A 64-bit NTP timestamp (RFC 5905 §6): seconds since 1900-01-01 and a binary fraction of a
/// second, the format STAMP uses when the Z bit of the error estimate is 0.
public struct NTPTimestamp: Hashable, Sendable, CustomStringConvertible {
    public var seconds: UInt32
    public var fraction: UInt32

    /// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (the Unix epoch).
    public static let unixEpochOffset: Int64 = 2_208_988_800

    public init(seconds: UInt32, fraction: UInt32) {
        self.seconds = seconds
        self.fraction = fraction
    }

    public init(raw: UInt64) {
        seconds = UInt32(truncatingIfNeeded: raw >> 32)
        fraction = UInt32(truncatingIfNeeded: raw)
    }

    /// The timestamp of a CLOCK_REALTIME reading in nanoseconds since the Unix epoch. The seconds
    /// wrap at the end of NTP era 0 (2036-02-07) as RFC 5905 specifies.
    public init(unixNanoseconds ns: Int64) {
        let (s, sub) = ns.quotientAndRemainder(dividingBy: 1_000_000_000)
        let secs = sub < 0 ? s - 1 : s
        let nanos = UInt64(sub < 0 ? sub + 1_000_000_000 : sub)
        seconds = UInt32(truncatingIfNeeded: secs + Self.unixEpochOffset)
        // Round to the nearest 2^-32 s so that decoding gives back the same nanosecond.
        fraction = UInt32(truncatingIfNeeded: min((nanos << 32 + 500_000_000) / 1_000_000_000, UInt64(UInt32.max)))
    }

    public var raw: UInt64 { UInt64(seconds) << 32 | UInt64(fraction) }

    /// Nanoseconds since the Unix epoch. Seconds values below 2^31 are taken to be in NTP era 1
    /// (after 2036), values above in era 0 (after 1968).
    public var unixNanoseconds: Int64 {
        let era: Int64 = seconds < 0x8000_0000 ? 1 << 32 : 0
        let secs = Int64(seconds) + era - Self.unixEpochOffset
        let nanos = Int64((UInt64(fraction) * 1_000_000_000 + (1 << 31)) >> 32)
        return secs * 1_000_000_000 + nanos
    }

    public var description: String { "\(seconds).\(fraction)" }
}

/// The Error Estimate field (RFC 4656 §4.1.2, used by RFC 8762 §4.2.1):
/// `S` (clock synchronized to UTC), `Z` (0: NTP format timestamps, 1: PTPv2), a 6-bit `Scale` and
/// an 8-bit `Multiplier`; the error is `Multiplier * 2^(Scale - 32)` seconds.
public struct STAMPErrorEstimate: Hashable, Sendable {
    public var synchronized: Bool
    public var ptpFormat: Bool
    public var scale: UInt8
    public var multiplier: UInt8

    public init(synchronized: Bool, ptpFormat: Bool = false, scale: UInt8, multiplier: UInt8) {
        self.synchronized = synchronized
        self.ptpFormat = ptpFormat
        self.scale = scale & 0x3f
        self.multiplier = multiplier
    }

    public init(raw: UInt16) {
        synchronized = raw & 0x8000 != 0
        ptpFormat = raw & 0x4000 != 0
        scale = UInt8((raw >> 8) & 0x3f)
        multiplier = UInt8(raw & 0xff)
    }

    /// The smallest representable estimate that is not below `errorSeconds` (the multiplier is
    /// never 0, as RFC 4656 requires).
    public init(errorSeconds: Double, synchronized: Bool) {
        self.synchronized = synchronized
        ptpFormat = false
        let e = errorSeconds.isFinite && errorSeconds > 0 ? errorSeconds : 0
        for s in 0...63 {
            let m = (e * Double(sign: .plus, exponent: 32 - s, significand: 1)).rounded(.up)
            if m <= 255 {
                scale = UInt8(s)
                multiplier = UInt8(max(1, m))
                return
            }
        }
        scale = 63
        multiplier = 255
    }

    public var raw: UInt16 {
        (synchronized ? 0x8000 : 0) | (ptpFormat ? 0x4000 : 0) | UInt16(scale & 0x3f) << 8 | UInt16(multiplier)
    }

    /// The error bound in seconds.
    public var seconds: Double { Double(multiplier) * Double(sign: .plus, exponent: Int(scale) - 32, significand: 1) }
}

/// A Session-Sender test packet, unauthenticated mode (RFC 8762 §4.2.1, Figure 2), with the
/// RFC 8972 SSID. Layout (octets): 0-3 Sequence Number, 4-11 Timestamp, 12-13 Error Estimate,
/// 14-15 SSID, 16-43 MBZ.
public struct STAMPSenderPacket: Hashable, Sendable {
    public static let length = 44

    public var sequence: UInt32
    public var timestamp: NTPTimestamp
    public var errorEstimate: STAMPErrorEstimate
    /// Session-Sender Identifier (RFC 8972); 0 where RFC 8762 has MBZ.
    public var ssid: UInt16

    public init(sequence: UInt32, timestamp: NTPTimestamp, errorEstimate: STAMPErrorEstimate, ssid: UInt16 = 0) {
        self.sequence = sequence
        self.timestamp = timestamp
        self.errorEstimate = errorEstimate
        self.ssid = ssid
    }

    /// Decodes the first 44 octets (a longer packet carries padding or TLVs, which are ignored).
    public init?(bytes: some Collection<UInt8>) {
        let b = Array(bytes.prefix(Self.length))
        guard b.count == Self.length else { return nil }
        sequence = STAMPWire.read32(b, 0)
        timestamp = NTPTimestamp(raw: STAMPWire.read64(b, 4))
        errorEstimate = STAMPErrorEstimate(raw: STAMPWire.read16(b, 12))
        ssid = STAMPWire.read16(b, 14)
    }

    /// The 44 octets on the wire.
    public func encoded() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.length)
        encode(into: &b)
        return b
    }

    /// Writes the packet into the first 44 octets of `b` (which must be at least that long) and
    /// zeroes the MBZ octets.
    public func encode(into b: inout [UInt8]) {
        precondition(b.count >= Self.length)
        STAMPWire.write32(&b, 0, sequence)
        STAMPWire.write64(&b, 4, timestamp.raw)
        STAMPWire.write16(&b, 12, errorEstimate.raw)
        STAMPWire.write16(&b, 14, ssid)
        for i in 16..<Self.length { b[i] = 0 }
    }
}

/// A Session-Reflector test packet, unauthenticated mode (RFC 8762 §4.3.1, Figure 4), with the
/// RFC 8972 SSID. Layout (octets): 0-3 Sequence Number, 4-11 Timestamp (transmit, T3),
/// 12-13 Error Estimate, 14-15 SSID, 16-23 Receive Timestamp (T2), 24-27 Session-Sender Sequence
/// Number, 28-35 Session-Sender Timestamp (T1), 36-37 Session-Sender Error Estimate, 38-39 MBZ,
/// 40 Ses-Sender TTL, 41-43 MBZ.
public struct STAMPReflectorPacket: Hashable, Sendable {
    public static let length = 44

    /// The reflector's own sequence number (stateful mode), or the sender's (stateless mode).
    public var sequence: UInt32
    /// T3: when the reflector sent this packet.
    public var timestamp: NTPTimestamp
    public var errorEstimate: STAMPErrorEstimate
    public var ssid: UInt16
    /// T2: when the reflector received the sender's packet.
    public var receiveTimestamp: NTPTimestamp
    public var senderSequence: UInt32
    /// T1, copied from the sender's packet.
    public var senderTimestamp: NTPTimestamp
    public var senderErrorEstimate: STAMPErrorEstimate
    /// TTL (IPv4) or Hop Limit (IPv6) of the sender's packet as it arrived.
    public var senderTTL: UInt8

    public init(sequence: UInt32, timestamp: NTPTimestamp, errorEstimate: STAMPErrorEstimate, ssid: UInt16,
                receiveTimestamp: NTPTimestamp, senderSequence: UInt32, senderTimestamp: NTPTimestamp,
                senderErrorEstimate: STAMPErrorEstimate, senderTTL: UInt8) {
        self.sequence = sequence
        self.timestamp = timestamp
        self.errorEstimate = errorEstimate
        self.ssid = ssid
        self.receiveTimestamp = receiveTimestamp
        self.senderSequence = senderSequence
        self.senderTimestamp = senderTimestamp
        self.senderErrorEstimate = senderErrorEstimate
        self.senderTTL = senderTTL
    }

    public init?(bytes: some Collection<UInt8>) {
        let b = Array(bytes.prefix(Self.length))
        guard b.count == Self.length else { return nil }
        self = b.withUnsafeBytes { STAMPReflectorPacket(decoding: $0) }
    }

    /// Decodes the first 44 octets of a received datagram in place (no copy).
    public init?(bytes b: UnsafeRawBufferPointer) {
        guard b.count >= Self.length else { return nil }
        self.init(decoding: b)
    }

    /// `b` holds at least 44 octets.
    private init(decoding b: UnsafeRawBufferPointer) {
        sequence = STAMPWire.read32(b, 0)
        timestamp = NTPTimestamp(raw: STAMPWire.read64(b, 4))
        errorEstimate = STAMPErrorEstimate(raw: STAMPWire.read16(b, 12))
        ssid = STAMPWire.read16(b, 14)
        receiveTimestamp = NTPTimestamp(raw: STAMPWire.read64(b, 16))
        senderSequence = STAMPWire.read32(b, 24)
        senderTimestamp = NTPTimestamp(raw: STAMPWire.read64(b, 28))
        senderErrorEstimate = STAMPErrorEstimate(raw: STAMPWire.read16(b, 36))
        senderTTL = b[40]
    }

    public func encoded() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.length)
        encode(into: &b)
        return b
    }

    /// Writes the packet into the first 44 octets of `b` and zeroes its MBZ octets.
    public func encode(into b: inout [UInt8]) {
        precondition(b.count >= Self.length)
        STAMPWire.write32(&b, 0, sequence)
        STAMPWire.write64(&b, 4, timestamp.raw)
        STAMPWire.write16(&b, 12, errorEstimate.raw)
        STAMPWire.write16(&b, 14, ssid)
        STAMPWire.write64(&b, 16, receiveTimestamp.raw)
        STAMPWire.write32(&b, 24, senderSequence)
        STAMPWire.write64(&b, 28, senderTimestamp.raw)
        STAMPWire.write16(&b, 36, senderErrorEstimate.raw)
        b[38] = 0; b[39] = 0
        b[40] = senderTTL
        b[41] = 0; b[42] = 0; b[43] = 0
    }

    /// Two-way delay in nanoseconds, `(T4 - T1) - (T3 - T2)` (RFC 8762 §4 / RFC 5357 §4.2):
    /// `t1` and `t4` are the sender's own send and receive times, so the sender's clock offset
    /// cancels; `T3 - T2` is the reflector's residence time on the reflector's clock, so its
    /// offset cancels too. Only the two clocks' rates matter, over one round trip.
    public func twoWayDelayNanoseconds(sentAt t1: Int64, receivedAt t4: Int64) -> Int64 {
        (t4 - t1) - (timestamp.unixNanoseconds - receiveTimestamp.unixNanoseconds)
    }
}

/// The stateless or stateful Session-Reflector of RFC 8762 §4.3 as a pure function.
public enum STAMPReflection {
    /// The reply to `request` (a Session-Sender packet of at least 44 octets): the reflector
    /// packet, zero-padded to the request's length so the two directions carry equal sizes
    /// (RFC 8762 §4.2.1 symmetric size). `sequence` is the reflector's counter in stateful mode,
    /// or nil for stateless mode (the sender's sequence number is reflected). Returns nil for a
    /// packet too short to be a STAMP test packet.
    public static func reply(to request: some Collection<UInt8>, sequence: UInt32?, receivedAt t2: NTPTimestamp,
                             sentAt t3: NTPTimestamp, errorEstimate: STAMPErrorEstimate, ttl: UInt8) -> [UInt8]? {
        guard let s = STAMPSenderPacket(bytes: request) else { return nil }
        let r = STAMPReflectorPacket(sequence: sequence ?? s.sequence, timestamp: t3, errorEstimate: errorEstimate, ssid: s.ssid,
                                     receiveTimestamp: t2, senderSequence: s.sequence, senderTimestamp: s.timestamp,
                                     senderErrorEstimate: s.errorEstimate, senderTTL: ttl)
        var out = [UInt8](repeating: 0, count: max(STAMPReflectorPacket.length, request.count))
        r.encode(into: &out)
        return out
    }
}

enum STAMPWire {
    static func read16(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt16 { UInt16(bigEndian: b.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    static func read32(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt32 { UInt32(bigEndian: b.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    static func read64(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt64 { UInt64(bigEndian: b.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
    static func read16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) << 8 | UInt16(b[o + 1]) }
    static func read32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) << 24 | UInt32(b[o + 1]) << 16 | UInt32(b[o + 2]) << 8 | UInt32(b[o + 3])
    }
    static func read64(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(read32(b, o)) << 32 | UInt64(read32(b, o + 4)) }
    static func write16(_ b: inout [UInt8], _ o: Int, _ v: UInt16) {
        b[o] = UInt8(v >> 8); b[o + 1] = UInt8(v & 0xff)
    }
    static func write32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) {
        b[o] = UInt8(v >> 24); b[o + 1] = UInt8((v >> 16) & 0xff); b[o + 2] = UInt8((v >> 8) & 0xff); b[o + 3] = UInt8(v & 0xff)
    }
    static func write64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) {
        write32(&b, o, UInt32(truncatingIfNeeded: v >> 32)); write32(&b, o + 4, UInt32(truncatingIfNeeded: v))
    }
}

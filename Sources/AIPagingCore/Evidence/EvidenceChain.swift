import Crypto

/// The evidence log's tamper evidence: every record is one line of JSON that names its position
/// (`seq`) and carries the SHA-256 of the previous record's line (`prev`); the last record of
/// every write (at most 1 024 records) ends with an Ed25519 signature (`sig`) by the agent's
/// evidence key.
///
/// A line is `{"v":1,"seq":N,"prev":"<64 hex>","kid":"<16 hex>", ...record...}`, and a signed
/// one ends with `,"sig":"<base64url>"}`. The signature covers the line's bytes without the
/// `,"sig":"..."` member (that is, the same object closed right after its last other member);
/// `prev` is the SHA-256 of the previous whole line (signature included, newline excluded). The
/// first record's `prev` is 64 zeros. Records are verified byte for byte as written: nothing is
/// re-serialized.
///
/// Because each line's hash is in the next line, a signature covers its own record and, through
/// the links, every record before it: a record without a signature is covered by the next signed
/// one. Signing once per write instead of once per record keeps the log's cost low when
/// thousands of leases end at once; the verifier reports records that no signature covers.
public enum EvidenceChain {
    public static let version = 1
    public static let genesisHash = [UInt8](repeating: 0, count: 32)
    static let sigMarker = Array(#","sig":""#.utf8)

    /// The key id recorded in every record: the first 8 bytes of SHA-256(public key), in hex.
    public static func keyID(_ publicKey: Curve25519.Signing.PublicKey) -> String {
        hex(Array(SHA256.hash(data: publicKey.rawRepresentation)).prefix(8))
    }

    /// Makes the line (without newline) of record `seq` with `body` after `prev`, signed with `key`.
    /// `body`'s own members follow `v`, `seq`, `prev` and `kid`; it must not contain those or `sig`.
    /// With `key` nil the record is not signed (a later signed record covers it).
    public static func seal(body: JSON.Object, seq: UInt64, prev: [UInt8], key: Curve25519.Signing.PrivateKey?,
                            keyID: String) throws -> (line: [UInt8], hash: [UInt8]) {
        var o = JSON.Object()
        o["v"] = .int(version)
        o["seq"] = .int(seq)
        o["prev"] = .string(hex(prev))
        o["kid"] = .string(keyID)
        for (k, v) in body.pairs { o[k] = v }
        var signed = JSON.object(o).bytes(reserving: 1024)
        guard let key else { return (signed, Array(SHA256.hash(data: signed))) }
        let sig = try key.signature(for: signed)
        signed.removeLast()   // the closing brace
        signed += sigMarker
        signed += Array(Base64URL.encode(Array(sig)).utf8)
        signed += [UInt8(ascii: "\""), UInt8(ascii: "}")]
        return (signed, Array(SHA256.hash(data: signed)))
    }

    /// One record as read back: its fields and what its bytes say about the chain.
    public struct Parsed: Sendable {
        public var seq: UInt64
        public var prev: [UInt8]
        public var keyID: String
        public var object: JSON.Object
        /// SHA-256 of the whole line.
        public var hash: [UInt8]
        /// The bytes the signature covers and the signature (nil: an unsigned record).
        var signedBytes: [UInt8]
        var signature: [UInt8]?

        public var isSigned: Bool { signature != nil }

        public func signatureIsValid(_ key: Curve25519.Signing.PublicKey) -> Bool {
            guard let signature else { return false }
            return key.isValidSignature(signature, for: signedBytes)
        }
    }

    public enum ParseFailure: Error, Sendable, Equatable, CustomStringConvertible {
        case notJSON(String)
        case missingField(String)
        case noSignature

        public var description: String {
            switch self {
            case .notJSON(let why): return "not a JSON record (\(why))"
            case .missingField(let f): return "no valid \"\(f)\" field"
            case .noSignature: return "a \"sig\" member that is not a signature at the end of the line"
            }
        }
    }

    /// Splits a line into its signed part and signature and reads its chain fields.
    public static func parse(line: [UInt8]) throws(ParseFailure) -> Parsed {
        let object: JSON.Object
        do {
            guard let o = try JSON.parse(line).objectValue else { throw ParseFailure.notJSON("not an object") }
            object = o
        } catch let e as JSON.ParseError {
            throw .notJSON(e.description)
        } catch {
            throw error as! ParseFailure
        }
        var signature: [UInt8]?
        var signed = line
        if object["sig"] != nil {
            guard object.keys.last == "sig", let sigText = object["sig"]?.stringValue, let sig = Base64URL.decode(sigText),
                  let start = lastIndex(of: sigMarker, in: line) else { throw .noSignature }
            signature = sig
            signed = Array(line[..<start])
            signed.append(UInt8(ascii: "}"))
        }
        guard let seq = object["seq"]?.int64Value, seq >= 0 else { throw .missingField("seq") }
        guard let prevHex = object["prev"]?.stringValue, let prev = unhex(prevHex), prev.count == 32 else { throw .missingField("prev") }
        let kid = object["kid"]?.stringValue ?? ""
        return Parsed(seq: UInt64(seq), prev: prev, keyID: kid, object: object, hash: Array(SHA256.hash(data: line)),
                      signedBytes: signed, signature: signature)
    }

    /// A problem found while verifying a chain, with where it is.
    public struct Finding: Sendable, Equatable, CustomStringConvertible {
        public enum Kind: String, Sendable {
            /// The line is not a record (cut, garbled).
            case malformed
            /// The record's signature does not verify: its bytes changed after signing (or another key signed it).
            case badSignature = "bad_signature"
            /// Records are missing between two records (sequence numbers jump).
            case missing
            /// A record does not carry the hash of the record before it (edited or replaced predecessor).
            case brokenLink = "broken_link"
            /// Sequence numbers go backwards or repeat.
            case outOfOrder = "out_of_order"
            /// The chain ends before the head the agent last recorded (records removed at the end).
            case truncated
            /// Signed by a key other than the one given.
            case unknownKey = "unknown_key"
            /// Records at the end that no signature covers (no signed record follows them).
            case unsigned
        }
        public var kind: Kind
        /// Sequence number of the record concerned (nil for a malformed line).
        public var seq: UInt64?
        /// Where: file and line.
        public var location: String
        public var message: String

        public init(kind: Kind, seq: UInt64?, location: String, message: String) {
            self.kind = kind
            self.seq = seq
            self.location = location
            self.message = message
        }

        public var description: String { "\(location): \(message)" }
        public var json: JSON {
            ["kind": .string(kind.rawValue), "seq": seq.map { .int($0) } ?? .null, "location": .string(location), "message": .string(message)]
        }
    }

    /// Verifies records in order, one line at a time (`feed`), then `finish`.
    public struct Verifier {
        public let key: Curve25519.Signing.PublicKey
        public let keyID: String
        public private(set) var findings: [Finding] = []
        public private(set) var records = 0
        public private(set) var lastSeq: UInt64?
        public private(set) var lastHash: [UInt8]?
        var lastLocation = ""
        var previousBadSignature = false
        /// Unsigned records since the last signed one: the first one's seq and location, and how many.
        var uncovered: (seq: UInt64, location: String, count: Int)?
        /// With `startSeq`/`startHash` the chain may begin after genesis (a verified prefix).
        public init(key: Curve25519.Signing.PublicKey, startSeq: UInt64? = nil, startHash: [UInt8]? = nil) {
            self.key = key
            keyID = EvidenceChain.keyID(key)
            lastSeq = startSeq
            lastHash = startHash
        }

        public mutating func feed(line: [UInt8], location: String) {
            let p: Parsed
            do {
                p = try EvidenceChain.parse(line: line)
            } catch {
                findings.append(Finding(kind: .malformed, seq: nil, location: location,
                                        message: "line is not an intact record: \(error)"))
                // The next record's link is checked against the last intact one.
                return
            }
            records += 1
            let sigOK = !p.isSigned || (p.keyID == keyID && p.signatureIsValid(key))
            if !p.isSigned {
                if uncovered == nil { uncovered = (p.seq, location, 0) }
                uncovered!.count += 1
            } else {
                uncovered = nil
            }
            if p.isSigned && p.keyID != keyID {
                findings.append(Finding(kind: .unknownKey, seq: p.seq, location: location,
                                        message: "record \(p.seq) is signed by key \(p.keyID), not by \(keyID)"))
            } else if !sigOK {
                findings.append(Finding(kind: .badSignature, seq: p.seq, location: location,
                                        message: "record \(p.seq) was modified after it was signed (its signature does not verify)"))
            }
            if let last = lastSeq {
                if p.seq <= last {
                    findings.append(Finding(kind: .outOfOrder, seq: p.seq, location: location,
                                            message: "record \(p.seq) follows record \(last): sequence numbers must increase by one"))
                } else if p.seq > last + 1 {
                    let range = p.seq - last == 2 ? "record \(last + 1) is" : "records \(last + 1)...\(p.seq - 1) are"
                    findings.append(Finding(kind: .missing, seq: p.seq, location: location,
                                            message: "\(range) missing between record \(last) and record \(p.seq)"))
                } else if let h = lastHash, h != p.prev, !previousBadSignature {
                    // (After a bad signature the broken link is the same finding, already reported.)
                    findings.append(Finding(kind: .brokenLink, seq: p.seq, location: location,
                                            message: "record \(p.seq) does not chain to record \(last) (prev hash differs): record \(last) was replaced or edited"))
                }
            } else if p.prev != EvidenceChain.genesisHash && lastHash == nil {
                if p.seq == 1 {
                    findings.append(Finding(kind: .brokenLink, seq: p.seq, location: location,
                                            message: "record 1 does not start the chain (prev is not the genesis hash)"))
                } else {
                    findings.append(Finding(kind: .missing, seq: p.seq, location: location,
                                            message: "records 1...\(p.seq - 1) are missing before record \(p.seq)"))
                }
            }
            previousBadSignature = !sigOK
            lastSeq = p.seq
            lastHash = p.hash
            lastLocation = location
        }

        /// Checks the end of the chain against the head the agent recorded (`headSeq`), if known.
        public mutating func finish(headSeq: UInt64?, headHash: [UInt8]?) {
            if let u = uncovered {
                let what = u.count == 1 ? "record \(u.seq) is" : "records \(u.seq)...\(u.seq + UInt64(u.count) - 1) are"
                findings.append(Finding(kind: .unsigned, seq: u.seq, location: u.location,
                                        message: "\(what) not covered by any signature (no signed record follows): the end of the log was altered or cut"))
                uncovered = nil
            }
            guard let headSeq else { return }
            let last = lastSeq ?? 0
            if last < headSeq {
                let range = headSeq - last == 1 ? "record \(headSeq) is" : "records \(last + 1)...\(headSeq) are"
                findings.append(Finding(kind: .truncated, seq: headSeq, location: lastLocation.isEmpty ? "end" : "after \(lastLocation)",
                                        message: "\(range) missing at the end: the agent's head is record \(headSeq)"))
            } else if last == headSeq, let headHash, let lastHash, headHash != lastHash {
                findings.append(Finding(kind: .brokenLink, seq: headSeq, location: lastLocation,
                                        message: "record \(headSeq) differs from the agent's head (hash mismatch)"))
            }
        }

        public var ok: Bool { findings.isEmpty }
    }

    // MARK: helpers

    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    public static func unhex(_ s: String) -> [UInt8]? {
        let b = Array(s.utf8)
        guard b.count % 2 == 0 else { return nil }
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(b.count / 2)
        var i = 0
        while i < b.count {
            guard let hi = v(b[i]), let lo = v(b[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    static func lastIndex(of needle: [UInt8], in hay: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        var i = hay.count - needle.count
        while i >= 0 {
            if hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return i }
            i -= 1
        }
        return nil
    }
}

import Crypto

/// JWS compact serialization (RFC 7515) with EdDSA / Ed25519 (RFC 8037): how a controller signs
/// a COMMIT. The payload is the lease JSON; the protected header names the key (`kid`).
public enum JWS {
    public struct Verified: Sendable {
        public var kid: String
        public var payload: [UInt8]
    }

    /// Verifies `token` against the policy's controller keys and returns the payload.
    ///
    /// Only `alg: EdDSA` is accepted (no `none`, no algorithm the key was not made for), the
    /// header may carry no `crit` extensions, and the key must be one the policy lists.
    public static func verify(_ token: some Collection<UInt8>, keys: [String: Policy.ControllerKey]) throws(LeaseError) -> Verified {
        let bytes = Array(token).filter { $0 != 0x0A && $0 != 0x0D && $0 != 0x20 }
        let parts = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty, !parts[2].isEmpty else {
            throw LeaseError(.malformedJWS, "a signed lease must be a JWS compact serialization: header.payload.signature")
        }
        guard let headerBytes = Base64URL.decode(String(decoding: parts[0], as: UTF8.self)),
              let payload = Base64URL.decode(String(decoding: parts[1], as: UTF8.self)),
              let signature = Base64URL.decode(String(decoding: parts[2], as: UTF8.self)) else {
            throw LeaseError(.malformedJWS, "the JWS parts must be base64url")
        }
        let header: JSON.Object
        do {
            guard let h = try JSON.parse(headerBytes).objectValue else {
                throw LeaseError(.malformedJWS, "the JWS header must be a JSON object")
            }
            header = h
        } catch let e as LeaseError {
            throw e
        } catch {
            throw LeaseError(.malformedJWS, "the JWS header is not valid JSON")
        }
        guard header["alg"]?.stringValue == "EdDSA" else {
            throw LeaseError(.badSignature, "the JWS alg must be EdDSA (Ed25519)")
        }
        if header["crit"] != nil {
            throw LeaseError(.badSignature, "JWS crit extensions are not supported")
        }
        guard let kid = header["kid"]?.stringValue else {
            throw LeaseError(.unknownKey, "the JWS header must name the controller key (kid)")
        }
        guard let key = keys[kid] else {
            throw LeaseError(.unknownKey, "kid \"\(kid)\" is not a controller key of this policy")
        }
        guard signature.count == 64 else {
            throw LeaseError(.badSignature, "an Ed25519 signature is 64 bytes")
        }
        let publicKey: Curve25519.Signing.PublicKey
        do {
            publicKey = try Curve25519.Signing.PublicKey(rawRepresentation: key.publicKey)
        } catch {
            throw LeaseError(.unknownKey, "controller key \(kid) is not a valid Ed25519 public key")
        }
        let signingInput = Array(parts[0]) + [UInt8(ascii: ".")] + Array(parts[1])
        guard publicKey.isValidSignature(signature, for: signingInput) else {
            throw LeaseError(.badSignature, "the signature does not verify with controller key \(kid)")
        }
        return Verified(kid: kid, payload: payload)
    }

    /// Signs `payload` as a JWS compact serialization (for lab use and tests: `aipagingctl`).
    public static func sign(payload: some Collection<UInt8>, kid: String, privateKey: Curve25519.Signing.PrivateKey) throws -> String {
        let header = JSON.object(JSON.Object(["alg": "EdDSA", "kid": .string(kid), "typ": "aipaging-commit+jws"]))
        let h = Base64URL.encode(Array(header.serialized().utf8))
        let p = Base64URL.encode(payload)
        let input = Array("\(h).\(p)".utf8)
        let sig = try privateKey.signature(for: input)
        return "\(h).\(p).\(Base64URL.encode(Array(sig)))"
    }
}

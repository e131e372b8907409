import Crypto
import Testing
@testable import AIPagingCore

@Suite struct JWSTests {
    let key = Curve25519.Signing.PrivateKey()
    var keys: [String: Policy.ControllerKey] {
        ["ctl-1": .init(kid: "ctl-1", publicKey: Array(key.publicKey.rawRepresentation))]
    }

    @Test func signsAndVerifies() throws {
        let payload = Array(Fixture.body().serialized().utf8)
        let token = try JWS.sign(payload: payload, kid: "ctl-1", privateKey: key)
        let v = try JWS.verify(Array(token.utf8), keys: keys)
        #expect(v.kid == "ctl-1")
        #expect(v.payload == payload)
        #expect(try CommitDecoder.decode(v.payload).leaseID == "c-5f1d2a")
    }

    @Test func rejectsTamperingAndUnknownKeys() throws {
        let token = try JWS.sign(payload: Array("{\"a\":1}".utf8), kid: "ctl-1", privateKey: key)
        let parts = token.split(separator: ".").map(String.init)
        let forged = parts[0] + "." + Base64URL.encode(Array("{\"a\":2}".utf8)) + "." + parts[2]
        #expect { try JWS.verify(Array(forged.utf8), keys: keys) } throws: { ($0 as? LeaseError)?.cause == .badSignature }
        let other = try JWS.sign(payload: Array("{}".utf8), kid: "ctl-1", privateKey: Curve25519.Signing.PrivateKey())
        #expect { try JWS.verify(Array(other.utf8), keys: keys) } throws: { ($0 as? LeaseError)?.cause == .badSignature }
        let unknown = try JWS.sign(payload: Array("{}".utf8), kid: "ctl-9", privateKey: key)
        #expect { try JWS.verify(Array(unknown.utf8), keys: keys) } throws: { ($0 as? LeaseError)?.cause == .unknownKey }
        let none = Base64URL.encode(Array("{\"alg\":\"none\",\"kid\":\"ctl-1\"}".utf8)) + "." + parts[1] + "."
        #expect { try JWS.verify(Array(none.utf8), keys: keys) } throws: { ($0 as? LeaseError)?.cause == .malformedJWS }
        let noneSigned = Base64URL.encode(Array("{\"alg\":\"none\",\"kid\":\"ctl-1\"}".utf8)) + "." + parts[1] + "." + parts[2]
        #expect { try JWS.verify(Array(noneSigned.utf8), keys: keys) } throws: { ($0 as? LeaseError)?.cause == .badSignature }
        #expect { try JWS.verify(Array("abc".utf8), keys: keys) } throws: { ($0 as? LeaseError)?.cause == .malformedJWS }
    }

    @Test func base64url() {
        for n in 0..<20 {
            let bytes = (0..<n).map { UInt8(($0 * 37 + 11) & 0xff) }
            #expect(Base64URL.decode(Base64URL.encode(bytes)) == bytes)
        }
        #expect(Base64URL.encode(Array("any carnal pleas".utf8)) == "YW55IGNhcm5hbCBwbGVhcw")
        #expect(Base64URL.decode("a") == nil)
        #expect(Base64URL.decode("a*b=") == nil)
    }
}

@Suite struct PolicyTests {
    @Test func parsesTheExamplePolicy() throws {
        // The policy shipped in policies/ must stay valid.
        let path = #filePath.replacingOccurrences(of: "Tests/AIPagingCoreTests/SecurityTests.swift", with: "policies/example.json")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let p = try Policy.parse(Array(text.utf8))
        #expect(p.anchors?["edge-1"]?.address == IPAddress("198.18.2.2"))
        #expect(p.anchors?["cloud-1"]?.locality == "cloud")
        #expect(p.maxTTLMs > 0)
        #expect(!p.isLab)
    }

    @Test(arguments: [
        "{\"surprise\":1}", "{\"max_ttl_ms\":0}", "{\"anchors\":[{\"id\":\"a\",\"address\":\"x\"}]}",
        "{\"anchors\":[{\"id\":\"a\",\"address\":\"198.18.2.2\"},{\"id\":\"a\",\"address\":\"198.18.2.3\"}]}",
        "{\"controller_keys\":[{\"kid\":\"k\",\"public_key\":\"short\"}]}",
        "{\"accept_unsigned\":false}", "{\"default_drain_ms\":10,\"max_drain_ms\":5}", "[]",
        "{\"peers\":{\"uids\":[-1]}}",
    ])
    func rejectsBadPolicies(_ text: String) {
        #expect(throws: Policy.LoadError.self) { try Policy.parse(Array(text.utf8)) }
    }

    @Test func peers() throws {
        let p = try Policy.parse(Array("{\"peers\":{\"uids\":[0,1000],\"gids\":[555]}}".utf8))
        #expect(p.allowsPeer(uid: 1000, gid: 1))
        #expect(p.allowsPeer(uid: 42, gid: 555))
        #expect(!p.allowsPeer(uid: 42, gid: 43))
        #expect(Policy.lab.allowsPeer(uid: 0, gid: 0))
        #expect(!Policy.lab.allowsPeer(uid: 1000, gid: 1000))
    }
}

/// The operator's policy: which anchors leases may use, limits, who may talk to the socket,
/// and which controller keys sign leases. Loaded from a JSON file (`--policy`); see
/// `policies/example.json` for a documented example.
public struct Policy: Sendable, Equatable {
    /// One entry of the anchor catalog.
    public struct CatalogAnchor: Sendable, Equatable {
        public var id: String
        public var address: IPAddress
        /// Ports leases may use on this anchor; nil = any.
        public var ports: Set<UInt16>?
        public var locality: String?
        public var tier: String?

        public init(id: String, address: IPAddress, ports: Set<UInt16>? = nil, locality: String? = nil, tier: String? = nil) {
            self.id = id
            self.address = address
            self.ports = ports
            self.locality = locality
            self.tier = tier
        }
    }

    /// An Ed25519 public key of a controller, named by the JWS `kid`.
    public struct ControllerKey: Sendable, Equatable {
        public var kid: String
        public var publicKey: [UInt8]
        public init(kid: String, publicKey: [UInt8]) { self.kid = kid; self.publicKey = publicKey }
    }

    public var name: String
    /// Anchor catalog; nil = any anchor (lab mode only).
    public var anchors: [String: CatalogAnchor]?
    public var maxTTLMs: UInt64
    public var defaultDrainMs: UInt64
    public var maxDrainMs: UInt64
    /// Relocations accepted per AISI in any sliding 60 s window.
    public var maxRelocationsPerMinute: Int
    /// Guaranteed-rate capacity per enforcement point name (kbit/s), where the policy sets one.
    public var capacityKbit: [String: UInt64]
    public var peerUIDs: Set<UInt32>
    public var peerGIDs: Set<UInt32>
    public var acceptUnsigned: Bool
    public var keys: [String: ControllerKey]
    /// True when this is the built-in lab policy (no --policy given).
    public var isLab: Bool

    public init(name: String, anchors: [String: CatalogAnchor]?, maxTTLMs: UInt64, defaultDrainMs: UInt64,
                maxDrainMs: UInt64, maxRelocationsPerMinute: Int, capacityKbit: [String: UInt64],
                peerUIDs: Set<UInt32>, peerGIDs: Set<UInt32>, acceptUnsigned: Bool,
                keys: [String: ControllerKey], isLab: Bool = false) {
        self.name = name
        self.anchors = anchors
        self.maxTTLMs = maxTTLMs
        self.defaultDrainMs = defaultDrainMs
        self.maxDrainMs = maxDrainMs
        self.maxRelocationsPerMinute = maxRelocationsPerMinute
        self.capacityKbit = capacityKbit
        self.peerUIDs = peerUIDs
        self.peerGIDs = peerGIDs
        self.acceptUnsigned = acceptUnsigned
        self.keys = keys
        self.isLab = isLab
    }

    /// The policy the agent runs without `--policy`: any anchor, unsigned leases accepted, only
    /// root peers, ttl up to one day (CONTRACT.md).
    public static let lab = Policy(
        name: "built-in lab policy", anchors: nil, maxTTLMs: 86_400_000, defaultDrainMs: 2000,
        maxDrainMs: 60_000, maxRelocationsPerMinute: 600, capacityKbit: [:], peerUIDs: [0], peerGIDs: [],
        acceptUnsigned: true, keys: [:], isLab: true)

    /// Whether a peer with these credentials may use the control socket.
    public func allowsPeer(uid: UInt32, gid: UInt32) -> Bool {
        peerUIDs.contains(uid) || peerGIDs.contains(gid)
    }

    public struct LoadError: Error, Sendable, CustomStringConvertible, Equatable {
        public var message: String
        public var description: String { message }
    }

    /// Parses a policy file. Unknown keys are errors (a typo must not silently weaken policy).
    public static func parse(_ bytes: some Collection<UInt8>) throws(LoadError) -> Policy {
        let root: JSON.Object
        do {
            guard let o = try JSON.parse(bytes).objectValue else { throw LoadError(message: "policy must be a JSON object") }
            root = o
        } catch let e as JSON.ParseError {
            throw LoadError(message: "policy is not valid JSON: \(e.description)")
        } catch let e as LoadError {
            throw e
        } catch {
            throw LoadError(message: "\(error)")
        }
        func fail(_ m: String) -> LoadError { LoadError(message: "policy: \(m)") }
        let allowed: Set<String> = ["policy_version", "name", "comment", "anchors", "max_ttl_ms", "default_drain_ms",
                                    "max_drain_ms", "max_relocations_per_minute", "enforcement_points", "peers",
                                    "accept_unsigned", "controller_keys"]
        for k in root.keys where !allowed.contains(k) && !k.hasPrefix("x-") && !k.hasPrefix("x_") {
            throw fail("unknown key \"\(k)\"")
        }
        if let v = root["policy_version"], v.int64Value != 1 { throw fail("policy_version must be 1") }
        func uint(_ key: String, _ def: UInt64) throws(LoadError) -> UInt64 {
            guard let v = root[key] else { return def }
            guard let i = v.int64Value, i >= 0 else { throw fail("\(key) must be a non-negative integer") }
            return UInt64(i)
        }
        let name = root["name"]?.stringValue ?? "policy"
        let maxTTL = try uint("max_ttl_ms", 86_400_000)
        guard maxTTL > 0 else { throw fail("max_ttl_ms must be > 0") }
        let defaultDrain = try uint("default_drain_ms", 2000)
        let maxDrain = try uint("max_drain_ms", 60_000)
        guard defaultDrain <= maxDrain else { throw fail("default_drain_ms exceeds max_drain_ms") }
        let maxReloc = try uint("max_relocations_per_minute", 60)

        var anchors: [String: CatalogAnchor]?
        if let list = root["anchors"] {
            guard let arr = list.arrayValue else { throw fail("anchors must be an array") }
            var map: [String: CatalogAnchor] = [:]
            for (i, item) in arr.enumerated() {
                guard let o = item.objectValue else { throw fail("anchors[\(i)] must be an object") }
                for k in o.keys where !["id", "address", "ports", "locality", "tier", "comment"].contains(k) {
                    throw fail("anchors[\(i)]: unknown key \"\(k)\"")
                }
                guard let id = o["id"]?.stringValue, Identifier.isValid(id) else { throw fail("anchors[\(i)].id must be an identifier") }
                guard let s = o["address"]?.stringValue, let addr = IPAddress(s) else { throw fail("anchors[\(i)].address must be an IP address") }
                var ports: Set<UInt16>?
                if let p = o["ports"] {
                    guard let pa = p.arrayValue else { throw fail("anchors[\(i)].ports must be an array") }
                    var set = Set<UInt16>()
                    for pv in pa {
                        guard let n = pv.int64Value, (1...65535).contains(n) else { throw fail("anchors[\(i)].ports: bad port") }
                        set.insert(UInt16(n))
                    }
                    ports = set
                }
                guard map[id] == nil else { throw fail("anchor id \(id) appears twice") }
                map[id] = CatalogAnchor(id: id, address: addr, ports: ports,
                                        locality: o["locality"]?.stringValue, tier: o["tier"]?.stringValue)
            }
            anchors = map
        }

        var capacity: [String: UInt64] = [:]
        if let eps = root["enforcement_points"] {
            guard let arr = eps.arrayValue else { throw fail("enforcement_points must be an array") }
            for (i, item) in arr.enumerated() {
                guard let o = item.objectValue, let n = o["name"]?.stringValue else {
                    throw fail("enforcement_points[\(i)] needs a name")
                }
                for k in o.keys where !["name", "capacity_kbit", "comment"].contains(k) {
                    throw fail("enforcement_points[\(i)]: unknown key \"\(k)\"")
                }
                if let c = o["capacity_kbit"] {
                    guard let v = c.int64Value, v > 0 else { throw fail("enforcement_points[\(i)].capacity_kbit must be > 0") }
                    capacity[n] = UInt64(v)
                }
            }
        }

        var uids: Set<UInt32> = [0], gids: Set<UInt32> = []
        if let peers = root["peers"] {
            guard let o = peers.objectValue else { throw fail("peers must be an object") }
            for k in o.keys where !["uids", "gids", "comment"].contains(k) { throw fail("peers: unknown key \"\(k)\"") }
            func ids(_ key: String) throws(LoadError) -> Set<UInt32>? {
                guard let v = o[key] else { return nil }
                guard let arr = v.arrayValue else { throw fail("peers.\(key) must be an array of numeric ids") }
                var s = Set<UInt32>()
                for x in arr {
                    guard let n = x.int64Value, n >= 0, n <= Int64(UInt32.max) else { throw fail("peers.\(key): bad id") }
                    s.insert(UInt32(n))
                }
                return s
            }
            uids = try ids("uids") ?? uids
            gids = try ids("gids") ?? gids
        }

        var keys: [String: ControllerKey] = [:]
        if let list = root["controller_keys"] {
            guard let arr = list.arrayValue else { throw fail("controller_keys must be an array") }
            for (i, item) in arr.enumerated() {
                guard let o = item.objectValue, let kid = o["kid"]?.stringValue, !kid.isEmpty else {
                    throw fail("controller_keys[\(i)] needs a kid")
                }
                for k in o.keys where !["kid", "alg", "public_key", "comment"].contains(k) {
                    throw fail("controller_keys[\(i)]: unknown key \"\(k)\"")
                }
                if let alg = o["alg"]?.stringValue, alg != "EdDSA" { throw fail("controller_keys[\(i)].alg must be EdDSA") }
                guard let text = o["public_key"]?.stringValue, let raw = Base64URL.decode(text), raw.count == 32 else {
                    throw fail("controller_keys[\(i)].public_key must be a base64url Ed25519 public key (32 bytes)")
                }
                keys[kid] = ControllerKey(kid: kid, publicKey: raw)
            }
        }
        let acceptUnsigned: Bool
        if let v = root["accept_unsigned"] {
            guard let b = v.boolValue else { throw fail("accept_unsigned must be true or false") }
            acceptUnsigned = b
        } else {
            acceptUnsigned = keys.isEmpty
        }
        if !acceptUnsigned && keys.isEmpty {
            throw fail("accept_unsigned is false but no controller_keys are given: no lease could ever be admitted")
        }
        return Policy(name: name, anchors: anchors, maxTTLMs: maxTTL, defaultDrainMs: defaultDrain, maxDrainMs: maxDrain,
                      maxRelocationsPerMinute: Int(maxReloc), capacityKbit: capacity, peerUIDs: uids, peerGIDs: gids,
                      acceptUnsigned: acceptUnsigned, keys: keys)
    }
}

/// Base64url without padding (RFC 4648 §5), as JWS uses it.
public enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        let b = Array(bytes)
        var out = [UInt8]()
        out.reserveCapacity((b.count * 4 + 2) / 3)
        var i = 0
        while i + 3 <= b.count {
            let n = UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2])
            out.append(alphabet[Int(n >> 18)]); out.append(alphabet[Int((n >> 12) & 63)])
            out.append(alphabet[Int((n >> 6) & 63)]); out.append(alphabet[Int(n & 63)])
            i += 3
        }
        let rest = b.count - i
        if rest == 1 {
            let n = UInt32(b[i]) << 16
            out.append(alphabet[Int(n >> 18)]); out.append(alphabet[Int((n >> 12) & 63)])
        } else if rest == 2 {
            let n = UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8
            out.append(alphabet[Int(n >> 18)]); out.append(alphabet[Int((n >> 12) & 63)])
            out.append(alphabet[Int((n >> 6) & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes base64url; also accepts the standard alphabet and padding. Nil on bad input.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var vals = [UInt8]()
        vals.reserveCapacity(text.utf8.count)
        for c in text.utf8 {
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): vals.append(c - 65)
            case UInt8(ascii: "a")...UInt8(ascii: "z"): vals.append(c - 97 + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): vals.append(c - 48 + 52)
            case UInt8(ascii: "-"), UInt8(ascii: "+"): vals.append(62)
            case UInt8(ascii: "_"), UInt8(ascii: "/"): vals.append(63)
            case UInt8(ascii: "="): continue
            default: return nil
            }
        }
        if vals.count % 4 == 1 { return nil }
        var out = [UInt8]()
        out.reserveCapacity(vals.count * 3 / 4)
        var i = 0
        while i + 4 <= vals.count {
            let n = UInt32(vals[i]) << 18 | UInt32(vals[i + 1]) << 12 | UInt32(vals[i + 2]) << 6 | UInt32(vals[i + 3])
            out.append(UInt8(n >> 16)); out.append(UInt8((n >> 8) & 0xff)); out.append(UInt8(n & 0xff))
            i += 4
        }
        let rest = vals.count - i
        if rest == 2 {
            let n = UInt32(vals[i]) << 18 | UInt32(vals[i + 1]) << 12
            out.append(UInt8(n >> 16))
        } else if rest == 3 {
            let n = UInt32(vals[i]) << 18 | UInt32(vals[i + 1]) << 12 | UInt32(vals[i + 2]) << 6
            out.append(UInt8(n >> 16)); out.append(UInt8((n >> 8) & 0xff))
        }
        return out
    }
}

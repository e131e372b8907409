/// Why the agent refused a request: a stable machine-readable cause a controller can act on.
///
/// The raw value is the `cause` of the JSON error body; `status` is the HTTP status the control
/// API answers with. Causes are part of the public contract: add new ones, never rename.
public enum RejectCause: String, Sendable, CaseIterable, Codable {
    // 400: the request is not a well-formed lease.
    case malformedJSON = "malformed_json"
    case malformedJWS = "malformed_jws"
    case leaseIdMismatch = "lease_id_mismatch"
    case badRequest = "bad_request"
    // 401 / 403: who may ask.
    case signatureRequired = "signature_required"
    case badSignature = "bad_signature"
    case unknownKey = "unknown_key"
    case unauthorizedPeer = "unauthorized_peer"
    // 404 / 405 / 413 / 415.
    case leaseNotFound = "lease_not_found"
    case notFound = "not_found"
    case methodNotAllowed = "method_not_allowed"
    case payloadTooLarge = "payload_too_large"
    case unsupportedMediaType = "unsupported_media_type"
    case requestTimeout = "request_timeout"
    // 409: conflicts with existing state.
    case classifierConflict = "classifier_conflict"
    case replay = "replay"
    case immutableField = "immutable_field"
    case relocationConflict = "relocation_conflict"
    case relocationRateExceeded = "relocation_rate_exceeded"
    case leaseNotActive = "lease_not_active"
    // 422: a well-formed lease that is not valid.
    case missingField = "missing_field"
    case unknownField = "unknown_field"
    case invalidField = "invalid_field"
    case invalidLeaseId = "invalid_lease_id"
    case invalidAISI = "invalid_aisi"
    case invalidAIST = "invalid_aist"
    case invalidAddress = "invalid_address"
    case familyMismatch = "family_mismatch"
    case invalidProtocol = "invalid_protocol"
    case invalidPort = "invalid_port"
    case invalidRate = "invalid_rate"
    case rateExceedsCeil = "rate_exceeds_ceil"
    case priorityOutOfRange = "priority_out_of_range"
    case invalidTTL = "invalid_ttl"
    case ttlExceedsPolicy = "ttl_exceeds_policy"
    case alreadyExpired = "already_expired"
    case invalidDrain = "invalid_drain"
    case unknownAnchor = "unknown_anchor"
    case anchorMismatch = "anchor_mismatch"
    case unknownEnforcementPoint = "unknown_enforcement_point"
    case relocationTargetUnknown = "relocation_target_unknown"
    case relocationAISIMismatch = "relocation_aisi_mismatch"
    case noRouteToAnchor = "no_route_to_anchor"
    // 503: the agent cannot serve it now.
    case insufficientCapacity = "insufficient_capacity"
    case qosClassesExhausted = "qos_classes_exhausted"
    case enforcementFailed = "enforcement_failed"
    case shuttingDown = "shutting_down"

    public var status: Int {
        switch self {
        case .malformedJSON, .malformedJWS, .leaseIdMismatch, .badRequest: return 400
        case .signatureRequired, .badSignature, .unknownKey: return 401
        case .unauthorizedPeer: return 403
        case .leaseNotFound, .notFound: return 404
        case .methodNotAllowed: return 405
        case .requestTimeout: return 408
        case .classifierConflict, .replay, .immutableField, .relocationConflict, .relocationRateExceeded,
             .leaseNotActive: return 409
        case .payloadTooLarge: return 413
        case .unsupportedMediaType: return 415
        case .missingField, .unknownField, .invalidField, .invalidLeaseId, .invalidAISI, .invalidAIST,
             .invalidAddress, .familyMismatch, .invalidProtocol, .invalidPort, .invalidRate, .rateExceedsCeil,
             .priorityOutOfRange, .invalidTTL, .ttlExceedsPolicy, .alreadyExpired, .invalidDrain, .unknownAnchor,
             .anchorMismatch, .unknownEnforcementPoint, .relocationTargetUnknown, .relocationAISIMismatch,
             .noRouteToAnchor:
            return 422
        case .insufficientCapacity, .qosClassesExhausted, .enforcementFailed, .shuttingDown: return 503
        }
    }
}

/// A refused request: the cause, a human message saying what was wrong and how to fix it, and
/// (when one field is to blame) the JSON path of that field.
public struct LeaseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var cause: RejectCause
    public var message: String
    public var field: String?

    public init(_ cause: RejectCause, _ message: String, field: String? = nil) {
        self.cause = cause
        self.message = message
        self.field = field
    }

    public var status: Int { cause.status }
    public var description: String { "\(cause.rawValue): \(message)" }

    /// The JSON error body of the control API: `{"error": {"cause": ..., "message": ...}}`.
    public var body: JSON {
        var e = JSON.Object()
        e["cause"] = .string(cause.rawValue)
        e["message"] = .string(message)
        if let field { e["field"] = .string(field) }
        return .object(JSON.Object(["error": .object(e)]))
    }
}

/// Where a lease is in its life. `admitted -> active -> draining -> released`, or it ends early
/// as `expired` or `revoked`. Only live states (admitted, active, draining) may have kernel state.
public enum LeaseState: String, Sendable, Hashable, Codable, CaseIterable {
    /// Admitted by policy and capacity; its kernel state is being installed.
    case admitted
    /// Its kernel state exists and steers the AISI flow to its anchor.
    case active
    /// Replaced by a relocation: still serves flows established on its anchor until the drain ends.
    case draining
    /// Drained and released after a relocation.
    case released
    /// Reached its deadline.
    case expired
    /// Revoked by the controller.
    case revoked

    public var isLive: Bool { self == .admitted || self == .active || self == .draining }
}

/// What happens to a lease.
public enum LeaseEvent: Sendable, Equatable {
    case installed
    case renewed
    case switchedAway
    case drainEnded
    case expired
    case revoked
}

/// The lease state machine: the only legal transitions. Anything else is a bug or a stale request.
public enum LeaseStateMachine {
    public static func next(_ state: LeaseState, on event: LeaseEvent) -> LeaseState? {
        switch (state, event) {
        case (.admitted, .installed): return .active
        case (.active, .renewed): return .active
        case (.active, .switchedAway): return .draining
        case (.draining, .drainEnded): return .released
        case (.active, .expired), (.draining, .expired): return .expired
        case (.admitted, .revoked), (.active, .revoked), (.draining, .revoked): return .revoked
        default: return nil
        }
    }
}

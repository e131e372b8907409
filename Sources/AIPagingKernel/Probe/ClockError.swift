import AIPagingCore
import CAIPagingShim

extension STAMPErrorEstimate {
    /// The error estimate of this host's CLOCK_REALTIME as the kernel knows it (adjtimex:
    /// synchronization state and `esterror`); without an estimate, 1 ms unsynchronized.
    public static func systemClock() -> STAMPErrorEstimate {
        var synced: Int32 = 0
        let ns = aip_clock_error_ns(&synced)
        let seconds = ns > 0 ? Double(ns) / 1e9 : 0.001
        return STAMPErrorEstimate(errorSeconds: seconds, synchronized: synced != 0 && ns >= 0)
    }
}

/// CLOCK_REALTIME in nanoseconds since the epoch (the clock STAMP timestamps use).
@inline(__always)
public func realtimeNanoseconds() -> Int64 { Int64(aip_realtime_ns()) }

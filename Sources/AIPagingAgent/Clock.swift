import AIPagingCore
import CAIPagingShim
import Synchronization

/// Where the lease service reads time. The system clock reads CLOCK_BOOTTIME and CLOCK_REALTIME;
/// tests use `ManualClock`.
public protocol AgentClock: Sendable {
    func now() -> ClockReading
}

public struct SystemClock: AgentClock {
    public init() {}
    public func now() -> ClockReading {
        ClockReading(boot: BootInstant(nanoseconds: aip_boottime_ns()),
                     wall: WallTime(nanosecondsSinceEpoch: Int64(aip_realtime_ns())))
    }
    public static func boot() -> BootInstant { BootInstant(nanoseconds: aip_boottime_ns()) }
}

/// A clock tests move by hand.
public final class ManualClock: AgentClock {
    private let reading: Mutex<ClockReading>
    public init(boot: UInt64 = 1_000_000_000_000, wall: Int64 = 1_795_000_000_000_000_000) {
        reading = Mutex(ClockReading(boot: BootInstant(nanoseconds: boot), wall: WallTime(nanosecondsSinceEpoch: wall)))
    }
    public func now() -> ClockReading { reading.withLock { $0 } }
    public func advance(milliseconds ms: UInt64) {
        reading.withLock {
            $0.boot = $0.boot.adding(milliseconds: ms)
            $0.wall = $0.wall.adding(milliseconds: Int64(ms))
        }
    }
}

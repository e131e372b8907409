import AIPagingCore
import CAIPagingShim
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One kernel timer (timerfd on CLOCK_BOOTTIME) armed at the earliest lease deadline. A
/// dedicated thread blocks in read(2) and calls `onFire` when it expires; arming is a single
/// timerfd_settime and safe from any thread.
public final class ExpiryTimer: Sendable {
    private let fd: Int32
    private let stopping = Atomic<Bool>(false)
    private let onFire: @Sendable () -> Void
    public let fires = Atomic<UInt64>(0)

    public init(onFire: @escaping @Sendable () -> Void) throws {
        let fd = aip_timerfd_create_boottime(0)
        guard fd >= 0 else { throw KernelErrorText("timerfd_create(CLOCK_BOOTTIME)", errno) }
        self.fd = fd
        self.onFire = onFire
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self)
        let rc = pthread_create(&thread, nil, { raw in
            let timer = Unmanaged<ExpiryTimer>.fromOpaque(raw!).takeRetainedValue()
            timer.loop()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            close(fd)
            throw KernelErrorText("pthread_create", rc)
        }
        pthread_detach(thread)
    }

    /// Arms the timer at `deadline` (boot clock); nil disarms it.
    public func arm(at deadline: BootInstant?) {
        guard !stopping.load(ordering: .relaxed) else { return }
        // An absolute deadline of 0 would disarm; anything in the past fires at once.
        let ns = deadline.map { max($0.nanoseconds, 1) } ?? 0
        _ = aip_timerfd_arm_abs_ns(fd, ns)
    }

    /// Stops the thread (fires once more to wake it) and closes the timer.
    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = aip_timerfd_arm_abs_ns(fd, 1)
    }

    private func loop() {
        aip_thread_set_name("aip-expiry")
        ThreadScheduling.enterLatencyCritical(.expiry)   // wakes the lease thread at a deadline
        var expirations: UInt64 = 0
        while true {
            let n = read(fd, &expirations, 8)
            if stopping.load(ordering: .acquiring) { break }
            if n == 8 {
                fires.add(1, ordering: .relaxed)
                onFire()
            } else if n < 0 && errno != EINTR && errno != EAGAIN {
                break
            }
        }
        close(fd)
    }
}

struct KernelErrorText: Error, CustomStringConvertible {
    var description: String
    init(_ op: String, _ err: Int32) { description = "\(op) failed: \(String(cString: strerror(err)))" }
}

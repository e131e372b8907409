/// A log-linear histogram of delays in microseconds, as EVI window records carry it so that tail
/// quantiles over any period can be computed afterwards from signed evidence.
///
/// Values below 64 µs have buckets of 1 µs; above, each power of two is split into 64 buckets, so
/// a bucket is at most 1/64 (1.6 %) of its value wide and its midpoint is within 0.8 % of any
/// value in it. The encoding is sparse: `[[index, count], ...]` for the non-empty buckets.
public struct DelayHistogram: Sendable, Equatable {
    /// Sub-buckets per power of two (2^6).
    public static let subBits = 6
    static let sub: UInt64 = 1 << UInt64(subBits)

    public private(set) var counts: [Int: UInt64] = [:]
    public private(set) var total: UInt64 = 0

    public init() {}

    /// The bucket of a value in microseconds.
    public static func index(microseconds v: UInt64) -> Int {
        if v < sub { return Int(v) }
        let e = 63 - v.leadingZeroBitCount                 // floor(log2 v) >= subBits
        let shift = e - subBits
        let m = v >> UInt64(shift)                         // in [sub, 2 sub)
        return (shift + 1) * Int(sub) + Int(m - sub)
    }

    /// The bucket's bounds in microseconds: [low, high).
    public static func bounds(index i: Int) -> (low: Double, high: Double) {
        let s = Int(sub)
        if i < s { return (Double(i), Double(i + 1)) }
        let shift = i / s - 1
        let m = UInt64(s + i % s)
        return (Double(m << UInt64(shift)), Double((m + 1) << UInt64(shift)))
    }

    /// The value a bucket stands for: its midpoint (µs).
    public static func representative(index i: Int) -> Double {
        let b = bounds(index: i)
        return i < Int(sub) ? b.low : (b.low + b.high) / 2
    }

    public mutating func record(nanoseconds ns: Int64) {
        let us = ns <= 0 ? 0 : UInt64((ns + 500) / 1000)
        counts[Self.index(microseconds: us), default: 0] += 1
        total += 1
    }

    public mutating func merge(_ other: DelayHistogram) {
        for (i, c) in other.counts { counts[i, default: 0] += c }
        total += other.total
    }

    /// `[[index, count], ...]` in index order.
    public var json: JSON {
        .array(counts.keys.sorted().map { JSON.array([.int($0), .int(counts[$0]!)]) })
    }

    /// Parses the sparse encoding; nil if malformed.
    public init?(json: JSON) {
        guard let arr = json.arrayValue else { return nil }
        for item in arr {
            guard let pair = item.arrayValue, pair.count == 2, let i = pair[0].int64Value, let c = pair[1].int64Value,
                  i >= 0, i < 4096, c >= 0 else { return nil }
            counts[Int(i), default: 0] += UInt64(c)
            total += UInt64(c)
        }
    }

    /// (representative value in milliseconds, count) per non-empty bucket, ascending.
    public var weightedMilliseconds: [(value: Double, count: UInt64)] {
        counts.keys.sorted().map { (Self.representative(index: $0) / 1000, counts[$0]!) }
    }
}

/// Order statistics of one window's delays (exact, from the samples).
public struct DelaySummary: Sendable, Equatable {
    public var count: Int
    public var minNs: Int64
    public var maxNs: Int64
    public var meanNs: Double
    public var p50Ns: Int64
    public var p99Ns: Int64
    public var p999Ns: Int64

    /// Nearest-rank quantiles (the smallest sample with at least a fraction q of samples at or
    /// below it). Nil without samples.
    public init?(samples: [Int64]) {
        guard !samples.isEmpty else { return nil }
        let s = samples.sorted()
        func q(_ p: Double) -> Int64 {
            let rank = Int((Double(s.count) * p).rounded(.up))
            return s[min(s.count - 1, max(0, rank - 1))]
        }
        count = s.count
        minNs = s.first!
        maxNs = s.last!
        meanNs = Double(s.reduce(0, +)) / Double(s.count)
        p50Ns = q(0.5)
        p99Ns = q(0.99)
        p999Ns = q(0.999)
    }

    /// `{"min", "p50", "p99", "p999", "max", "mean"}` in milliseconds (µs resolution).
    public var json: JSON {
        func ms(_ ns: Double) -> JSON { .double((ns / 1000).rounded() / 1000) }
        return ["min": ms(Double(minNs)), "p50": ms(Double(p50Ns)), "p99": ms(Double(p99Ns)),
                "p999": ms(Double(p999Ns)), "max": ms(Double(maxNs)), "mean": ms(meanNs)]
    }
}

import Foundation
import Testing
@testable import AIPagingCore

/// The tail audit against distributions with known quantiles: exponential (light tail, GPD shape
/// 0) and Pareto (heavy tail, GPD shape 1/alpha).
@Suite struct TailAuditTests {
    func exponential(_ n: Int, rate: Double = 1, seed: UInt64) -> [Double] {
        var g = SplitMix64(seed: seed)
        return (0..<n).map { _ in -log(g.unit()) / rate }
    }

    func pareto(_ n: Int, alpha: Double, xm: Double = 1, seed: UInt64) -> [Double] {
        var g = SplitMix64(seed: seed)
        return (0..<n).map { _ in xm * pow(g.unit(), -1 / alpha) }
    }

    @Test func normalQuantile() {
        #expect(abs(TailAudit.normalQuantile(0.975) - 1.959964) < 1e-5)
        #expect(abs(TailAudit.normalQuantile(0.5)) < 1e-9)
        #expect(abs(TailAudit.normalQuantile(0.001) + 3.090232) < 1e-5)
    }

    @Test func orderStatisticIntervals() {
        // n = 1000, p = 0.999: P(no sample above Q) = 0.999^1000 = 0.37 > 2.5 %: no upper bound.
        let (l1, u1) = TailAudit.orderStatisticInterval(n: 1000, p: 0.999, confidence: 0.95)
        #expect(u1 == nil && l1 != nil)
        // n = 10 000, p = 0.99: E ~ Bin(10000, 0.01), mean 100, sd 9.95: about +-19.5 ranks.
        let (l2, u2) = TailAudit.orderStatisticInterval(n: 10_000, p: 0.99, confidence: 0.95)
        #expect(l2 != nil && u2 != nil)
        #expect((9880...9882).contains(l2!) && (9919...9921).contains(u2!))
        // Exact branch agrees with the binomial law: n = 5000, p = 0.999 (mean 5 exceedances).
        let (l3, u3) = TailAudit.orderStatisticInterval(n: 5000, p: 0.999, confidence: 0.95)
        #expect(u3 == 5000 && l3 == 4990)
    }

    /// Empirical intervals cover the true quantile at about their confidence level.
    @Test func empiricalIntervalsCoverTheTruth() {
        let truth99 = log(100.0), truth999 = log(1000.0)
        var covered99 = 0, covered999 = 0
        let runs = 60
        for seed in 0..<runs {
            let a = TailAudit(samples: exponential(20_000, seed: UInt64(seed) + 1), target: nil, bootstrap: 0)
            let e99 = a.empirical.first { $0.quantile == 0.99 }!
            let e999 = a.empirical.first { $0.quantile == 0.999 }!
            if e99.low! <= truth99 && truth99 <= e99.high! { covered99 += 1 }
            if e999.low! <= truth999 && truth999 <= e999.high! { covered999 += 1 }
            #expect(a.chosen.map(\.method) == ["empirical", "empirical"])
        }
        // 95 % intervals: with 60 runs, expect about 57; allow sampling noise.
        #expect(covered99 >= 52, "p99 covered in \(covered99)/\(runs)")
        #expect(covered999 >= 52, "p99.9 covered in \(covered999)/\(runs)")
    }

    @Test func gpdFitRecoversShapeAndScale() {
        var g = SplitMix64(seed: 7)
        for (xi, sigma) in [(0.0, 1.0), (0.2, 2.0), (-0.2, 1.0), (0.33, 0.5)] {
            let ys = (0..<20_000).map { _ -> Double in
                let u = g.unit()
                return xi == 0 ? -sigma * log(u) : sigma / xi * (pow(u, -xi) - 1)
            }.sorted()
            let fit = TailAudit.fitGPD(sortedExceedances: ys)!
            #expect(abs(fit.xi - xi) < 0.04, "xi \(fit.xi) vs \(xi)")
            #expect(abs(fit.sigma / sigma - 1) < 0.05, "sigma \(fit.sigma) vs \(sigma)")
        }
    }

    /// Too few samples for an empirical p99.9: peaks over threshold estimate it.
    @Test func potEstimatesAnExponentialP999FromFewSamples() {
        let truth = log(1000.0)   // 6.908
        var inside = 0
        for seed in 1...20 {
            let a = TailAudit(samples: exponential(2000, seed: UInt64(seed) * 7919), target: nil)
            let e = a.chosen.first { $0.quantile == 0.999 }!
            #expect(e.method == "pot")
            #expect(abs(e.value / truth - 1) < 0.3, "seed \(seed): \(e.value)")
            if e.low! <= truth && truth <= e.high! { inside += 1 }
            // p99 has 20 expected exceedances: empirical.
            #expect(a.chosen.first { $0.quantile == 0.99 }?.method == "empirical")
        }
        #expect(inside >= 16, "POT interval covered the truth in \(inside)/20")
    }

    @Test func potEstimatesAParetoP999() {
        // Pareto alpha = 3: Q_p = (1 - p)^(-1/3): p99.9 = 10.0; the GPD shape is 1/3.
        let a = TailAudit(samples: pareto(3000, alpha: 3, seed: 42), target: nil)
        let e = a.chosen.first { $0.quantile == 0.999 }!
        #expect(e.method == "pot")
        #expect(abs(e.value / 10.0 - 1) < 0.3, "\(e.value)")
        #expect(e.low! <= 10.0 && 10.0 <= e.high!)
        #expect(abs(a.pot!.xi - 1.0 / 3) < 0.2)
    }

    /// Delays from a histogram are tied (bucket midpoints): a bucket holding the 98th percentile
    /// and more must not leave the peaks-over-threshold fit with too few exceedances.
    @Test func tiedValuesAtTheThresholdStillGiveATailFit() throws {
        let weighted: [(value: Double, count: UInt64)] = [(17.79, 520), (17.93, 25), (18.05, 5)]
        let a = TailAudit(weighted: weighted, target: 25, bootstrap: 50)
        let fit = try #require(a.pot)
        #expect(fit.threshold == 17.79 && fit.exceedances == 30)
        #expect(a.chosen.count == 2 && a.verdict != .insufficientData)
    }

    @Test func verdicts() {
        let s = exponential(50_000, seed: 3)   // p99.9 = 6.9
        #expect(TailAudit(samples: s, target: 10, bootstrap: 50).verdict == .met)
        #expect(TailAudit(samples: s, target: 5, bootstrap: 50).verdict == .violated)
        #expect(TailAudit(samples: s, target: nil, bootstrap: 50).verdict == .noTarget)
        #expect(TailAudit(samples: Array(s.prefix(10)), target: 10, bootstrap: 50).verdict == .insufficientData)
        let a = TailAudit(samples: s, target: 6.9, bootstrap: 50)
        #expect(a.verdict == .inconclusive || a.verdict == .met || a.verdict == .violated)
        #expect(abs(a.exceedanceEmpirical! - 0.001) < 0.0005)
    }

    /// The audit from a delay histogram agrees with the audit from the raw samples (the buckets'
    /// 0.8 % resolution).
    @Test func histogramResolution() throws {
        let s = exponential(30_000, rate: 0.2, seed: 5)   // ms, mean 5
        var h = DelayHistogram()
        for v in s { h.record(nanoseconds: Int64(v * 1e6)) }
        #expect(h.total == 30_000)
        let back = try #require(DelayHistogram(json: try JSON.parse(h.json.serialized())))
        #expect(back == h)
        let raw = TailAudit(samples: s, target: nil, bootstrap: 0)
        let binned = TailAudit(weighted: h.weightedMilliseconds, target: nil, bootstrap: 0)
        for (a, b) in zip(raw.empirical, binned.empirical) {
            #expect(abs(a.value / b.value - 1) < 0.01, "\(a.value) vs \(b.value)")
        }
        for us: UInt64 in [0, 1, 63, 64, 127, 128, 1000, 12345, 999_999, 123_456_789] {
            let i = DelayHistogram.index(microseconds: us)
            let (lo, hi) = DelayHistogram.bounds(index: i)
            #expect(Double(us) >= lo && Double(us) < hi, "\(us) in [\(lo), \(hi))")
            #expect((hi - lo) / max(1, lo) <= 1.0 / 64 + 1e-12 || hi - lo == 1)
        }
    }

    @Test func delaySummaryNearestRank() throws {
        let s = try #require(DelaySummary(samples: (1...1000).map { Int64($0) }))
        #expect(s.p50Ns == 500 && s.p99Ns == 990 && s.p999Ns == 999 && s.maxNs == 1000 && s.minNs == 1)
        #expect(DelaySummary(samples: []) == nil)
    }
}

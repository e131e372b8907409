import RealModule

/// Tail audit of delays (Tail-Risk Envelopes, §IV-B "Audit closure"): p99 and p99.9 of the
/// two-way delay over a period, with confidence intervals, judged against a latency target.
///
/// * **Empirical** quantile: the nearest-rank order statistic, with a distribution-free
///   confidence interval from the binomial law of the number of samples above the true quantile
///   (exact for small counts, normal approximation otherwise). Used when the sample holds at least
///   10 expected exceedances and its largest values bound the interval from above.
/// * **Peaks over threshold**: exceedances over a high threshold (the empirical p98, or higher so
///   that at most 2 000 exceedances are fitted, and at least 20) are fitted with a generalized
///   Pareto distribution by probability-weighted moments (Hosking & Wallis 1987); the quantile is
///   `u + σ/ξ (((1-p)/ζ)^-ξ - 1)` with ζ the fraction above u. Its interval comes from a
///   parametric bootstrap (binomial exceedance count, GPD exceedances, refit). Used where the
///   empirical quantile has too few samples (typically p99.9 over short periods).
///
/// Input is weighted values (a merged `DelayHistogram`: bucket midpoints with counts, so values
/// carry that histogram's ≤0.8 % resolution) or plain samples.
public struct TailAudit: Sendable {
    public struct Estimate: Sendable, Equatable {
        public var quantile: Double
        public var value: Double
        public var low: Double?
        public var high: Double?
        public var method: String

        public var json: JSON {
            func r(_ v: Double?) -> JSON { v.map { .double(($0 * 1000).rounded() / 1000) } ?? .null }
            return ["quantile": .double(quantile), "value_ms": r(value), "ci_low_ms": r(low), "ci_high_ms": r(high),
                    "method": .string(method)]
        }
    }

    public struct GPDFit: Sendable, Equatable {
        public var threshold: Double
        public var exceedances: Int
        public var n: Int
        public var xi: Double
        public var sigma: Double

        /// The fraction of samples above the threshold.
        public var zeta: Double { Double(exceedances) / Double(n) }

        /// Q_p for p above the threshold's level.
        public func quantile(_ p: Double) -> Double {
            let r = (1 - p) / zeta
            if abs(xi) < 1e-9 { return threshold - sigma * Double.log(r) }
            return threshold + sigma / xi * (Double.pow(r, -xi) - 1)
        }

        /// P(X > x) for x above the threshold.
        public func exceedanceProbability(_ x: Double) -> Double {
            guard x > threshold else { return zeta }
            let y = x - threshold
            if abs(xi) < 1e-9 { return zeta * Double.exp(-y / sigma) }
            let base = 1 + xi * y / sigma
            return base <= 0 ? 0 : zeta * Double.pow(base, -1 / xi)
        }

        public var json: JSON {
            ["threshold_ms": .double((threshold * 1000).rounded() / 1000), "exceedances": .int(exceedances),
             "xi": .double((xi * 10000).rounded() / 10000), "sigma_ms": .double((sigma * 10000).rounded() / 10000)]
        }
    }

    public enum Verdict: String, Sendable {
        /// The upper confidence bound is within the target.
        case met
        /// The lower confidence bound exceeds the target.
        case violated
        /// The target lies inside the confidence interval.
        case inconclusive
        case insufficientData = "insufficient_data"
        case noTarget = "no_target"
    }

    public var n: Int
    public var confidence: Double
    public var empirical: [Estimate]
    public var pot: GPDFit?
    public var potEstimates: [Estimate]
    /// Per audited quantile, the estimate the audit relies on (empirical where it suffices).
    public var chosen: [Estimate]
    public var target: Double?
    public var targetQuantile: Double
    public var verdict: Verdict
    /// P(delay > target): the empirical fraction and, beyond the threshold, the GPD's.
    public var exceedanceEmpirical: Double?
    public var exceedanceGPD: Double?

    /// Audits weighted values (ms) at `quantiles` against `target` (ms) at `targetQuantile`.
    public init(weighted values: [(value: Double, count: UInt64)], quantiles: [Double] = [0.99, 0.999],
                target: Double?, targetQuantile: Double = 0.999, confidence: Double = 0.95,
                bootstrap: Int = 400, seed: UInt64 = 0x5eed) {
        let sorted = values.filter { $0.count > 0 }.sorted { $0.value < $1.value }
        let total = sorted.reduce(0) { $0 + Int($1.count) }
        n = total
        self.confidence = confidence
        self.target = target
        self.targetQuantile = targetQuantile
        let sample = WeightedSample(sorted)
        empirical = quantiles.compactMap { TailAudit.empiricalQuantile(sample, $0, confidence: confidence) }
        pot = TailAudit.fitPOT(sample)
        var rng = SplitMix64(seed: seed)
        potEstimates = []
        if let fit = pot {
            for p in quantiles where p > 1 - fit.zeta {
                potEstimates.append(TailAudit.potQuantile(fit, p, confidence: confidence, bootstrap: bootstrap, rng: &rng))
            }
        }
        let emp = empirical, potE = potEstimates
        let picked: [Estimate] = quantiles.compactMap { p in
            if let e = emp.first(where: { $0.quantile == p }), e.high != nil, Double(total) * (1 - p) >= 10 { return e }
            if let e = potE.first(where: { $0.quantile == p }) { return e }
            return nil
        }
        chosen = picked
        if let target {
            exceedanceEmpirical = total > 0 ? Double(sample.countAbove(target)) / Double(total) : nil
            exceedanceGPD = pot.flatMap { target > $0.threshold ? $0.exceedanceProbability(target) : nil }
            if let e = picked.first(where: { $0.quantile == targetQuantile }) {
                if let hi = e.high, hi <= target {
                    verdict = .met
                } else if let lo = e.low, lo > target {
                    verdict = .violated
                } else {
                    verdict = .inconclusive
                }
            } else {
                verdict = .insufficientData
            }
        } else {
            verdict = .noTarget
        }
    }

    /// Audits plain samples (ms).
    public init(samples: [Double], quantiles: [Double] = [0.99, 0.999], target: Double?, targetQuantile: Double = 0.999,
                confidence: Double = 0.95, bootstrap: Int = 400, seed: UInt64 = 0x5eed) {
        self.init(weighted: samples.map { ($0, 1) }, quantiles: quantiles, target: target, targetQuantile: targetQuantile,
                  confidence: confidence, bootstrap: bootstrap, seed: seed)
    }

    public var json: JSON {
        var o = JSON.Object()
        o["samples"] = .int(n)
        o["confidence"] = .double(confidence)
        o["empirical"] = .array(empirical.map(\.json))
        o["pot"] = pot.map { fit in
            guard case .object(var f) = fit.json else { return JSON.null }
            f["estimates"] = .array(potEstimates.map(\.json))
            return .object(f)
        } ?? .null
        o["estimates"] = .array(chosen.map(\.json))
        o["target_ms"] = target.map { .double($0) } ?? .null
        o["target_quantile"] = .double(targetQuantile)
        o["verdict"] = .string(verdict.rawValue)
        if let e = exceedanceEmpirical { o["exceedance_probability_empirical"] = .double(e) }
        if let e = exceedanceGPD { o["exceedance_probability_gpd"] = .double(e) }
        return .object(o)
    }

    // MARK: empirical

    struct WeightedSample {
        let values: [Double]
        let cumulative: [Int]   // cumulative[i] = count of values[0...i]
        var n: Int { cumulative.last ?? 0 }

        init(_ sorted: [(value: Double, count: UInt64)]) {
            var v: [Double] = []
            var c: [Int] = []
            var acc = 0
            for (x, k) in sorted {
                acc += Int(k)
                v.append(x)
                c.append(acc)
            }
            values = v
            cumulative = c
        }

        /// The k-th smallest value (1-based).
        func orderStatistic(_ k: Int) -> Double {
            var lo = 0, hi = cumulative.count - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if cumulative[mid] >= k { hi = mid } else { lo = mid + 1 }
            }
            return values[lo]
        }

        func countAbove(_ x: Double) -> Int {
            var above = 0
            for (i, v) in values.enumerated().reversed() {
                guard v > x else { break }
                above += cumulative[i] - (i > 0 ? cumulative[i - 1] : 0)
            }
            return above
        }
    }

    static func empiricalQuantile(_ s: WeightedSample, _ p: Double, confidence: Double) -> Estimate? {
        let n = s.n
        guard n > 0 else { return nil }
        let k = min(n, max(1, Int((Double(n) * p).rounded(.up))))
        let value = s.orderStatistic(k)
        let (l, u) = orderStatisticInterval(n: n, p: p, confidence: confidence)
        return Estimate(quantile: p, value: value, low: l.map { s.orderStatistic($0) }, high: u.map { s.orderStatistic($0) },
                        method: "empirical")
    }

    /// 1-based ranks (l, u) with P(X_(l) <= Q_p <= X_(u)) >= confidence, from E ~ Bin(n, 1-p), the
    /// number of samples above Q_p. Nil where the sample cannot bound the quantile on that side.
    public static func orderStatisticInterval(n: Int, p: Double, confidence: Double) -> (Int?, Int?) {
        let alpha = 1 - confidence
        let q = 1 - p
        let mean = Double(n) * q
        let logP0 = Double(n) * Double.log(1 - q)
        var jUpper: Int?   // largest j with CDF_E(j) <= alpha/2
        var iLower: Int?   // smallest i with CDF_E(i) >= 1 - alpha/2
        if mean * (1 - q) >= 20 || logP0 < -600 {
            let sd = (mean * (1 - q)).squareRoot()
            let z = normalQuantile(1 - alpha / 2)
            let j = (mean - z * sd - 0.5).rounded(.down)
            jUpper = j >= 0 ? Int(j) : nil
            iLower = Int((mean + z * sd - 0.5).rounded(.up))
        } else {
            var pmf = Double.exp(logP0)
            var cdf = pmf
            var e = 0
            while true {
                if cdf <= alpha / 2 { jUpper = e }
                if cdf >= 1 - alpha / 2 { iLower = e; break }
                if e >= n { break }
                pmf *= Double(n - e) / Double(e + 1) * q / (1 - q)
                e += 1
                cdf += pmf
            }
        }
        let upper = jUpper.map { n - $0 }.flatMap { $0 >= 1 && $0 <= n ? $0 : nil }
        let lower = iLower.map { n - $0 }.flatMap { $0 >= 1 ? $0 : nil }
        return (lower, upper)
    }

    /// Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9).
    public static func normalQuantile(_ p: Double) -> Double {
        let a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
                 -3.066479806614716e+01, 2.506628277459239e+00]
        let b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
                 -1.328068155288572e+01]
        let c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
                 4.374664141464968e+00, 2.938163982698783e+00]
        let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
        let pl = 0.02425
        if p < pl {
            let q = (-2 * Double.log(p)).squareRoot()
            return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
                ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        }
        if p > 1 - pl { return -normalQuantile(1 - p) }
        let q = p - 0.5
        let r = q * q
        return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    }

    // MARK: peaks over threshold

    static let minExceedances = 20
    static let maxExceedances = 2000

    static func fitPOT(_ s: WeightedSample) -> GPDFit? {
        let n = s.n
        guard n >= 2 * minExceedances else { return nil }
        let target = min(maxExceedances, max(minExceedances, Int((Double(n) * 0.02).rounded(.up))))
        // The threshold is the largest value with at least `target` samples above it: the order
        // statistic X_(n-target) for distinct values, lower where values are tied (histogram
        // buckets), so ties at the threshold do not leave too few exceedances to fit.
        guard let i = s.cumulative.lastIndex(where: { n - $0 >= target }) else { return nil }
        let threshold = s.values[i]
        var ys: [Double] = []
        for (i, v) in s.values.enumerated() where v > threshold {
            let c = s.cumulative[i] - (i > 0 ? s.cumulative[i - 1] : 0)
            for _ in 0..<c { ys.append(v - threshold) }
        }
        guard ys.count >= minExceedances / 2, let (xi, sigma) = fitGPD(sortedExceedances: ys) else { return nil }
        return GPDFit(threshold: threshold, exceedances: ys.count, n: n, xi: xi, sigma: sigma)
    }

    /// Probability-weighted-moment estimates (ξ, σ) of a GPD from ascending exceedances:
    /// a0 = mean, a1 = mean of y_(i) (1 - p_i) with p_i = (i - 0.35)/k;
    /// ξ = (a0 - 4 a1)/(a0 - 2 a1), σ = 2 a0 a1/(a0 - 2 a1).
    public static func fitGPD(sortedExceedances y: [Double]) -> (xi: Double, sigma: Double)? {
        let k = y.count
        guard k >= 3 else { return nil }
        var a0 = 0.0, a1 = 0.0
        for (i, v) in y.enumerated() {
            a0 += v
            a1 += v * (1 - (Double(i + 1) - 0.35) / Double(k))
        }
        a0 /= Double(k)
        a1 /= Double(k)
        let d = a0 - 2 * a1
        guard d > 0, a0 > 0 else { return nil }
        let xi = (a0 - 4 * a1) / d
        let sigma = 2 * a0 * a1 / d
        guard sigma > 0, xi.isFinite else { return nil }
        return (xi, sigma)
    }

    static func potQuantile(_ fit: GPDFit, _ p: Double, confidence: Double, bootstrap: Int, rng: inout SplitMix64) -> Estimate {
        let value = fit.quantile(p)
        var boot: [Double] = []
        boot.reserveCapacity(bootstrap)
        let zeta = fit.zeta
        let sd = (Double(fit.n) * zeta * (1 - zeta)).squareRoot()
        for _ in 0..<bootstrap {
            let k = max(TailAudit.minExceedances / 2, Int((Double(fit.n) * zeta + sd * rng.normal()).rounded()))
            var ys = [Double](repeating: 0, count: k)
            for i in 0..<k {
                let u = rng.unit()
                ys[i] = abs(fit.xi) < 1e-9 ? -fit.sigma * Double.log(u) : fit.sigma / fit.xi * (Double.pow(u, -fit.xi) - 1)
            }
            ys.sort()
            guard let (xi, sigma) = fitGPD(sortedExceedances: ys) else { continue }
            let b = GPDFit(threshold: fit.threshold, exceedances: k, n: fit.n, xi: xi, sigma: sigma)
            let q = b.quantile(p)
            if q.isFinite { boot.append(q) }
        }
        boot.sort()
        guard boot.count >= 20 else { return Estimate(quantile: p, value: value, low: nil, high: nil, method: "pot") }
        let alpha = 1 - confidence
        let lo = boot[max(0, Int((Double(boot.count) * alpha / 2).rounded(.down)))]
        let hi = boot[min(boot.count - 1, Int((Double(boot.count) * (1 - alpha / 2)).rounded(.up)) - 1)]
        return Estimate(quantile: p, value: value, low: min(lo, value), high: max(hi, value), method: "pot")
    }
}

/// A small deterministic PRNG (SplitMix64) so audits and tests are reproducible.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    public mutating func unit() -> Double { (Double(next() >> 11) + 0.5) / Double(1 << 53) }
    /// Standard normal (Box-Muller).
    public mutating func normal() -> Double {
        (-2 * Double.log(unit())).squareRoot() * Double.cos(2 * Double.pi * unit())
    }
}

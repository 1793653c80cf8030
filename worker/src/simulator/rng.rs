//! Deterministic random numbers for the simulator.
//!
//! Everything here is built from ChaCha8 output and IEEE-754 basic arithmetic
//! only (`+ - * /`, `sqrt`, `floor`, `round`), which Rust evaluates identically
//! on every platform (no FMA contraction). Transcendental functions come from
//! the platform's libm, whose last bit may differ between systems, so [`ln`]
//! and [`exp`] are implemented here in plain arithmetic: the same seed then
//! gives bit-identical prices on Linux, macOS and Windows, x86-64 and ARM.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// ChaCha8 stream plus a cached second normal variate (polar Box–Muller).
pub(crate) struct SimRng {
    rng: ChaCha8Rng,
    spare: Option<f64>,
}

/// 2^-53: one unit in the last place of a uniform f64 in [0, 1).
const INV_2_53: f64 = 1.0 / 9_007_199_254_740_992.0;

impl SimRng {
    /// Independent stream `stream` of the generator seeded by `seed`.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self { rng, spare: None }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Uniform in [0, 1).
    #[inline]
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * INV_2_53
    }

    /// Uniform in (0, 1): never 0, so its logarithm is finite.
    #[inline]
    pub(crate) fn open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * INV_2_53
    }

    /// Uniform integer in [0, n) (multiply-shift; the bias is below 2^-50 for
    /// the small `n` used here). `n` must be > 0.
    #[inline]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    #[inline]
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Exponential with mean 1.
    #[inline]
    pub(crate) fn exp1(&mut self) -> f64 {
        -ln(self.open01())
    }

    /// Standard normal, Marsaglia's polar form of Box–Muller (no trigonometry).
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * ln(s) / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }
}

// fdlibm's split of ln 2: LN2_HI has trailing zero bits so k * LN2_HI is exact.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // 6.93147180369123816490e-01
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // 1.90821492927058770002e-10

/// 1 / (2k + 1) for k = 0..12 (computed at compile time, IEEE division).
const ATANH_COEFFS: [f64; 12] = {
    let mut c = [0.0; 12];
    let mut k = 0;
    while k < 12 {
        c[k] = 1.0 / (2 * k + 1) as f64;
        k += 1;
    }
    c
};

/// 1 / n! for n = 0..15.
const EXP_COEFFS: [f64; 15] = {
    let mut c = [1.0; 15];
    let mut n = 1;
    while n < 15 {
        c[n] = c[n - 1] / n as f64;
        n += 1;
    }
    c
};

/// Natural logarithm of a positive, finite, normal `x` (a few ulps accurate).
/// Returns NaN for `x <= 0`, NaN or infinite `x`.
pub(crate) fn ln(x: f64) -> f64 {
    if !(x > 0.0 && x.is_finite()) {
        return f64::NAN;
    }
    let (mut x, mut e) = (x, 0i64);
    if x < f64::MIN_POSITIVE {
        // Subnormal: scale into the normal range first.
        x *= 18_014_398_509_481_984.0; // 2^54
        e -= 54;
    }
    let bits = x.to_bits();
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1),
    // |s| <= 0.1716: terms up to s^23 leave < 1e-18 relative error.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut series = ATANH_COEFFS[ATANH_COEFFS.len() - 1];
    for &c in ATANH_COEFFS.iter().rev().skip(1) {
        series = series * s2 + c;
    }
    let ef = e as f64;
    ef * LN2_HI + (2.0 * s * series + ef * LN2_LO)
}

/// e^x for any finite `x` (a few ulps accurate); overflows to +inf above ~709.8
/// and underflows to 0 below ~-745.
pub(crate) fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    // Beyond these the result is +inf or 0; closer in, scaling over/underflows.
    if x > 709.79 {
        return f64::INFINITY;
    }
    if x < -745.2 {
        return 0.0;
    }
    let k = (x * std::f64::consts::LOG2_E).round();
    let r = (x - k * LN2_HI) - k * LN2_LO; // |r| <= 0.3466
    // Taylor series to r^14 / 14! (< 3e-18 relative error on |r| <= 0.35).
    let mut p = EXP_COEFFS[EXP_COEFFS.len() - 1];
    for &c in EXP_COEFFS.iter().rev().skip(1) {
        p = p * r + c;
    }
    scale_by_pow2(p, k as i64)
}

/// `x * 2^k` in at most two exact power-of-two multiplications.
fn scale_by_pow2(x: f64, k: i64) -> f64 {
    let pow2 = |k: i64| f64::from_bits(((k + 1023) as u64) << 52);
    if k > 1023 {
        x * pow2(1023) * pow2(k - 1023)
    } else if k < -1022 {
        // Two steps: the first is exact, only the last one rounds (subnormal).
        x * pow2(k + 1022) * pow2(-1022)
    } else {
        x * pow2(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_and_exp_match_std_closely() {
        let mut rng = SimRng::new(7, 0);
        for i in 0..20_000 {
            let x = match i % 4 {
                0 => rng.open01(),
                1 => rng.uniform() * 1e6 + 1e-3,
                2 => (rng.uniform() - 0.5) * 40.0,
                _ => 1.0 + (rng.uniform() - 0.5) * 1e-6,
            };
            if i % 4 != 2 {
                let (a, b) = (ln(x), x.ln());
                assert!((a - b).abs() <= 1e-15 * b.abs(), "{x}");
            }
            let y = (x - 0.5).clamp(-700.0, 700.0);
            let (a, b) = (exp(y), y.exp());
            assert!((a - b).abs() <= 1e-15 * b, "exp({y}) = {a} vs {b}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(ln(1.0), 0.0);
        assert!((exp(700.0) / 700f64.exp() - 1.0).abs() < 1e-14);
        assert!((exp(-740.0) - (-740f64).exp()).abs() <= 1e-323);
        assert!((ln(1e-310) - 1e-310f64.ln()).abs() < 1e-12);
        assert!(ln(0.0).is_nan() && ln(-1.0).is_nan());
        assert_eq!(exp(1000.0), f64::INFINITY);
        assert_eq!(exp(-1000.0), 0.0);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut rng = SimRng::new(1, 2);
        let n = 200_000;
        let (mut s1, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let z = rng.normal();
            s1 += z;
            s2 += z * z;
        }
        let mean = s1 / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
    }

    #[test]
    fn streams_are_independent_and_reproducible() {
        let a: Vec<u64> = (0..4).map(|_| SimRng::new(42, 0).next_u64()).collect();
        assert!(a.iter().all(|&x| x == a[0]));
        assert_ne!(SimRng::new(42, 0).next_u64(), SimRng::new(42, 1).next_u64());
        let mut r = SimRng::new(3, 0);
        for _ in 0..1000 {
            assert!(r.below(5) < 5);
            let u = r.open01();
            assert!(u > 0.0 && u < 1.0);
        }
    }
}

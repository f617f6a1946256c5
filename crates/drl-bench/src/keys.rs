//! Which keys a benchmark asks about: uniform over K keys, Zipf-skewed over K keys, one hot key,
//! or the K keys in order; the random ones drawn by each worker from its own seeded generator, so
//! a run is reproducible and the workers share nothing.
//!
//! Key `i` is the pair (`u<i>`, [`ENDPOINT`]); with Zipf, key 0 is the most popular. A run may
//! start its keys at an offset (`first_key`), so that a second run asks about other keys.
//!
//! A [`Roll`] moves the key set with the wall clock (`drl bench --roll`): the K keys in use at
//! time t are `offset(t) .. offset(t) + K`, the offset growing by K every roll period, so keys
//! fall out of use and expire on the server while the load goes on (the soak test's rolling key
//! set). Wall-clock time, not time since the run began, so that consecutive runs continue one
//! another's key set instead of starting over.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The endpoint of every benchmark key: the keys differ by user.
pub const ENDPOINT: &str = "/bench";

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDistribution {
    /// Every one of the K keys equally likely.
    Uniform,
    /// Key of rank k (1-based) with probability ∝ k^-s, for the exponent s > 0.
    Zipf(f64),
    /// Always key 0.
    Hot,
    /// Check `j` of request `i` (of batches of B) asks about key (i·B + j) mod K: the first K
    /// checks of a run touch every key once, whatever the workers' interleaving. For filling a
    /// store with exactly K keys.
    Sequential,
}

impl std::fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uniform => f.write_str("uniform"),
            Self::Zipf(s) => write!(f, "zipf {s}"),
            Self::Hot => f.write_str("hot"),
            Self::Sequential => f.write_str("sequential"),
        }
    }
}

/// The user id of key `index`.
pub fn user_id(index: u64) -> String {
    format!("u{index}")
}

/// A key set that slides by its own size every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roll {
    keys: u64,
    period_ns: u128,
}

impl Roll {
    /// `keys` ≥ 1 keys sliding by `keys` every `period` > 0 (checked by the caller; a zero
    /// period is taken as 1 ns).
    pub fn new(keys: u64, period: Duration) -> Self {
        Self {
            keys,
            period_ns: period.as_nanos().max(1),
        }
    }

    /// The first key index in use at `since_epoch` (wall-clock time since the Unix epoch):
    /// ⌊t · K / period⌋, so it grows by K per period, steadily rather than in jumps.
    pub fn offset_at(&self, since_epoch: Duration) -> u64 {
        let offset = since_epoch.as_nanos().saturating_mul(u128::from(self.keys)) / self.period_ns;
        // Wraps only some 10^19 keys later; wrapping keeps the keys distinct within a run.
        offset as u64
    }

    /// [`Roll::offset_at`] now.
    pub fn offset_now(&self) -> u64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.offset_at(since_epoch)
    }
}

/// SplitMix64: a small, fast generator with good statistical quality, enough to pick keys.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits, scaled: every value is an exact multiple of 2^-53.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) for n ≥ 1 (Lemire's multiply-shift; the bias is below n / 2^64).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Draws ranks 1..=n with P(k) ∝ k^-s in constant time and memory, by rejection-inversion
/// (W. Hörmann and G. Derflinger, "Rejection-inversion to generate variates from monotone
/// discrete distributions", 1996): invert the integral of the continuous x^-s, and reject the
/// rare draws that fall between the continuous and the discrete shape.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    /// Below this distance from the drawn x, k is accepted without evaluating the bound.
    squeeze: f64,
}

impl Zipf {
    /// `n` ≥ 1 elements, exponent `s` > 0 (checked by the caller).
    pub fn new(n: u64, exponent: f64) -> Self {
        let n = n as f64;
        let mut zipf = Self {
            n,
            exponent,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            squeeze: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_n = zipf.h_integral(n + 0.5);
        zipf.squeeze = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        zipf
    }

    /// A rank in 1..=n.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        loop {
            let u = self.h_integral_n + rng.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.squeeze || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// x^-s.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// ∫ h from 1 to x: (x^(1-s) - 1) / (1 - s), or ln x for s = 1, computed without the
    /// cancellation near s = 1.
    fn h_integral(&self, x: f64) -> f64 {
        let ln_x = x.ln();
        expm1_over_x((1.0 - self.exponent) * ln_x) * ln_x
    }

    fn h_integral_inverse(&self, y: f64) -> f64 {
        // Rounding can put t just below -1, where ln(1 + t) is undefined.
        let t = (y * (1.0 - self.exponent)).max(-1.0);
        (ln1p_over_x(t) * y).exp()
    }
}

/// (e^x - 1) / x, continuous at 0.
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// ln(1 + x) / x, continuous at 0.
fn ln1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// One worker's source of key indexes.
#[derive(Debug, Clone)]
pub struct KeyPicker {
    keys: u64,
    zipf: Option<Zipf>,
    hot: bool,
    sequential: bool,
    rng: SplitMix64,
}

impl KeyPicker {
    /// Draws from `keys` ≥ 1 keys as `distribution` says, seeded with `seed`.
    pub fn new(keys: u64, distribution: KeyDistribution, seed: u64) -> Self {
        Self {
            keys,
            zipf: match distribution {
                KeyDistribution::Zipf(s) => Some(Zipf::new(keys, s)),
                _ => None,
            },
            hot: distribution == KeyDistribution::Hot,
            sequential: distribution == KeyDistribution::Sequential,
            rng: SplitMix64::new(seed),
        }
    }

    /// The key indexes of request `ticket`'s `batch` checks, in 0..keys, into `out`.
    pub fn fill(&mut self, ticket: u64, batch: usize, out: &mut Vec<u64>) {
        if self.sequential {
            let first = ticket.wrapping_mul(batch as u64);
            out.extend((0..batch as u64).map(|j| first.wrapping_add(j) % self.keys));
        } else {
            out.extend((0..batch).map(|_| self.next_key()));
        }
    }

    /// The next random key index, in 0..keys.
    pub fn next_key(&mut self) -> u64 {
        if self.hot {
            0
        } else if let Some(zipf) = &self.zipf {
            zipf.sample(&mut self.rng) - 1
        } else {
            self.rng.below(self.keys)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frequencies of `draws` draws over `n` ranks against P(k) ∝ k^-s.
    fn zipf_error(n: u64, s: f64, draws: u32) -> f64 {
        let zipf = Zipf::new(n, s);
        let mut rng = SplitMix64::new(7);
        let mut counts = vec![0u32; n as usize];
        for _ in 0..draws {
            let k = zipf.sample(&mut rng);
            assert!((1..=n).contains(&k), "rank {k} out of 1..={n}");
            counts[(k - 1) as usize] += 1;
        }
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        (1..=n)
            .map(|k| {
                let expected = (k as f64).powf(-s) / norm;
                let seen = f64::from(counts[(k - 1) as usize]) / f64::from(draws);
                (seen - expected).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn zipf_draws_follow_the_power_law() {
        // 200 000 draws: the standard error of a frequency is below 0.0012; the seed is fixed.
        for s in [0.5, 0.99, 1.0, 1.01, 1.2, 2.0] {
            let error = zipf_error(10, s, 200_000);
            assert!(error < 0.006, "s = {s}: largest frequency error {error}");
        }
    }

    #[test]
    fn zipf_over_many_keys_favours_the_first() {
        let zipf = Zipf::new(1_000_000, 1.1);
        let mut rng = SplitMix64::new(1);
        let draws = 100_000;
        let first = (0..draws).filter(|_| zipf.sample(&mut rng) == 1).count();
        // P(1) = 1 / ζ_n(1.1) ≈ 1 / 8.8 for n = 10^6, about 11%.
        assert!((9_000..13_000).contains(&first), "{first} of {draws}");
    }

    #[test]
    fn uniform_and_hot_keys() {
        let mut hot = KeyPicker::new(100, KeyDistribution::Hot, 1);
        assert!((0..1000).all(|_| hot.next_key() == 0));
        let mut uniform = KeyPicker::new(10, KeyDistribution::Uniform, 1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[uniform.next_key() as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        let mut one = KeyPicker::new(1, KeyDistribution::Zipf(1.0), 1);
        assert!((0..100).all(|_| one.next_key() == 0));
    }

    #[test]
    fn a_rolling_key_set_slides_by_its_size_every_period() {
        let roll = Roll::new(1_000, Duration::from_secs(60));
        let at = |s: u64| roll.offset_at(Duration::from_secs(s));
        assert_eq!(at(0), 0);
        assert_eq!(at(60), 1_000);
        assert_eq!(at(90), 1_500);
        // Steady: one key per 60 ms here, never a jump of the whole set.
        assert_eq!(roll.offset_at(Duration::from_millis(60_059)), 1_000);
        assert_eq!(roll.offset_at(Duration::from_millis(60_060)), 1_001);
        // Today's clock (about 1.8 · 10^18 ns) times many keys does not overflow.
        let many = Roll::new(1_000_000_000, Duration::from_secs(1));
        let today = Duration::from_secs(1_800_000_000);
        assert_eq!(many.offset_at(today), 1_800_000_000 * 1_000_000_000);
    }

    #[test]
    fn sequential_keys_take_every_key_once_per_round() {
        // Batches of 3 over 7 keys: request i asks about 3i, 3i + 1, 3i + 2 (mod 7), whichever
        // worker sends it.
        let mut picker = KeyPicker::new(7, KeyDistribution::Sequential, 1);
        let mut keys = Vec::new();
        for ticket in [0, 1, 2, 3] {
            picker.fill(ticket, 3, &mut keys);
        }
        assert_eq!(keys, [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]);
        let mut random = KeyPicker::new(7, KeyDistribution::Uniform, 1);
        keys.clear();
        random.fill(0, 5, &mut keys);
        assert_eq!(keys.len(), 5);
        assert!(keys.iter().all(|&k| k < 7));
    }

    #[test]
    fn random_floats_stay_in_the_unit_interval() {
        let mut rng = SplitMix64::new(0);
        assert!((0..10_000).all(|_| (0.0..1.0).contains(&rng.next_f64())));
        assert!((0..10_000).all(|_| rng.below(3) < 3));
    }
}

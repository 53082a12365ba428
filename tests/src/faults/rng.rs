//! A seeded xorshift64* generator: the proxy's only source of randomness, so a run replays from
//! its seed (as far as request order repeats).

/// xorshift64* (Vigna); plenty for picking faults, not for anything secret.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (0 is mapped to a fixed non-zero state, which xorshift needs).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in `[lo, hi]` (`lo` when the range is empty).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_ranges_hold() {
        let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            let v = a.between(3, 9);
            assert_eq!(v, b.between(3, 9));
            assert!((3..=9).contains(&v));
            assert!((0.0..1.0).contains(&a.unit()));
            b.unit();
        }
        assert_eq!(XorShift::new(0).between(5, 5), 5);
        assert!(!XorShift::new(1).chance(0.0));
        assert!(XorShift::new(1).chance(1.0));
    }
}

//! A small deterministic generator for the randomised tests that compare
//! the fast paths with serde (xorshift64: fixed seeds, so a failure repeats).

/// Returns a function giving pseudo-random numbers below its argument.
pub(crate) fn below(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}
